"""Models tuned on a store's labelled rows (``fs tune``): ``tuned:NAME`` and ``tuned-int8:NAME``.

A tuned model lives inside the store that tuned it, ``models/tuned/NAME/``: a sentence-transformers folder
(weights, tokenizer, pooling config) beside ``tuned.json``, which records what made it and the sha256 of every
file, and ``train-ids.jsonl``, the ids of the rows it was trained on (so that ``fs train`` can say when its
validation rows were seen by the tuning). A folder is published whole by one rename, so a reader sees a
complete model or none.

Its vector space is named by what changes its vectors, not by the bytes of one run: the base model's
fingerprint, the tuning's identity (the training rows' ids and labels, the classes, the seed, the recipe, the
method and its parameters, the engine's version, the steps run). Tuning again on the same rows with the same
seed gives the same space id, and the drift canaries check the vectors agree (within 1e-4) when the second
model writes into it. The tuned weights' own sha256 is checked against ``tuned.json`` whenever the model is
loaded and by ``fs check``.

On a CPU a tuned model runs as ``minilm`` does (ONNX Runtime fp32 when installed, the same vectors as torch:
one space); ``tuned-int8:NAME`` is its int8 ONNX export, a space of its own.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featurestore.embedders.base import Embedder, Fingerprint
from featurestore.embedders.checksums import cached_file_sha256, file_sha256
from featurestore.embedders.minilm import MiniLMEmbedder
from featurestore.embedders.onnx_minilm import MiniLMInt8Embedder, MiniLMOnnxEmbedder
from featurestore.errors import ModelError, UsageError

PREFIX = "tuned:"
INT8_PREFIX = "tuned-int8:"
META = "tuned.json"
TRAIN_IDS = "train-ids.jsonl"
FORMAT = 1
#: the base models a tuning may start from (the MiniLM family's float32 weights)
BASES = ("minilm",)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def is_tuned(spec: str) -> bool:
    return spec.startswith((PREFIX, INT8_PREFIX))


def tuned_root(store_path: str | os.PathLike) -> Path:
    """Where a store keeps its tuned models."""
    return Path(store_path) / "models" / "tuned"


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise UsageError(
            f"{{param}} {name!r} cannot name a tuned model: use 1-64 letters, digits, '.', '_' or '-', starting with "
            "a letter or digit (e.g. av-tweets)",
            "name",
        )
    return name


@dataclass(frozen=True)
class TunedModel:
    """A published tuned model: its folder and what ``tuned.json`` records."""

    name: str
    path: Path
    meta: Mapping[str, Any]

    @property
    def identity(self) -> dict[str, Any]:
        """What names its vector space besides the base model (goes into the fingerprint as ``tuning``)."""
        return dict(self.meta["identity"])

    @property
    def base_fingerprint(self) -> dict[str, Any]:
        return dict(self.meta["base_fingerprint"])

    @property
    def files(self) -> dict[str, str]:
        return dict(self.meta["files"])

    def train_ids(self) -> list[str]:
        with open(self.path / TRAIN_IDS, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def fingerprint(self, backend_extra: Mapping[str, Any] | None = None) -> Fingerprint:
        """The base model's fingerprint with the tuning's identity (and a backend's own fields: int8) added."""
        base = self.base_fingerprint
        fp = Fingerprint.from_dict(base)
        return Fingerprint(
            model=fp.model,
            weights_sha256=fp.weights_sha256,
            output=fp.output,
            pooling=fp.pooling,
            extra={**fp.extra, **(backend_extra or {}), "tuning": self.identity},
        )


def _unknown(store_path: Path, name: str) -> ModelError:
    root = tuned_root(store_path)
    have = sorted(p.name for p in root.iterdir() if (p / META).is_file()) if root.is_dir() else []
    listed = ", ".join(have) if have else "none"
    return ModelError(
        f"store {store_path} has no tuned model {name!r} (tuned models there: {listed}); "
        f"fix: run fs tune --dataset DATASET --name {name} --store {store_path} first, or pick one of those"
    )


def open_tuned(store_path: str | os.PathLike, name: str) -> TunedModel:
    """The published tuned model ``name`` of the store at ``store_path`` (its ``tuned.json`` read and checked)."""
    store_path = Path(store_path)
    check_name(name)
    folder = tuned_root(store_path) / name
    meta_path = folder / META
    if not meta_path.is_file():
        raise _unknown(store_path, name)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, this version reads {FORMAT}")
        for key in ("identity", "base_fingerprint", "files", "base_model", "recipe"):
            meta[key]  # noqa: B018 -- present, or the folder is not a model of this version
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(
            f"tuned model {name!r} at {folder} is unreadable ({type(exc).__name__}: {exc}); "
            f"fix: delete the folder {folder} and run fs tune --name {name} again (the same rows and seed give the "
            "same vector space)"
        ) from None
    return TunedModel(name, folder, meta)


def list_tuned(store_path: str | os.PathLike) -> list[TunedModel]:
    """Every published tuned model of a store, by name (unreadable ones left to ``fs check``)."""
    root = tuned_root(store_path)
    out = []
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        if (p / META).is_file() and _NAME.match(p.name):
            try:
                out.append(open_tuned(store_path, p.name))
            except ModelError:
                continue
    return out


def verify_files(model: TunedModel) -> list[str]:
    """Problems with a tuned model's files (missing, changed, unexpected), each in words; empty when sound."""
    problems = []
    recorded = model.files
    for rel, digest in sorted(recorded.items()):
        path = model.path / rel
        if not path.is_file():
            problems.append(f"tuned model {model.name!r}: file {rel} is missing")
        elif file_sha256(path) != digest:
            problems.append(f"tuned model {model.name!r}: file {rel} changed since it was tuned (sha256 differs)")
    for path in sorted(model.path.rglob("*")):
        rel = path.relative_to(model.path).as_posix()
        if path.is_file() and rel not in recorded and rel not in (META, TRAIN_IDS):
            problems.append(f"tuned model {model.name!r}: file {rel} was not written by fs tune")
    return problems


def _weights_checked(model: TunedModel) -> None:
    weights = model.path / "model.safetensors"
    if not weights.is_file() or cached_file_sha256(weights) != model.files.get("model.safetensors"):
        raise ModelError(
            f"tuned model {model.name!r}: {weights} is missing or changed since it was tuned; "
            f"fix: delete the folder {model.path} and run fs tune --name {model.name} again (the same rows and seed "
            "give the same vector space)"
        )


def load_tuned(spec: str, store_path: str | os.PathLike | None) -> Embedder:
    """``tuned:NAME`` (float32: ONNX Runtime on a CPU when installed, else torch, one space) or ``tuned-int8:NAME``
    from the store at ``store_path``."""
    int8 = spec.startswith(INT8_PREFIX)
    name = spec[len(INT8_PREFIX if int8 else PREFIX) :]
    if store_path is None:
        raise ModelError(
            f"model {spec!r} is a tuned model, which lives in a store; fix: name the store (--store, or "
            "FeatureStore(path)) that fs tune wrote it into"
        )
    model = open_tuned(store_path, name)
    _weights_checked(model)
    from featurestore.embedders import onnx_minilm

    embedder: Embedder
    if int8:
        embedder = TunedMiniLMInt8(model)
    elif onnx_minilm.minilm_backend(model.path) == "onnx":
        embedder = TunedMiniLMOnnx(model)
    else:
        embedder = TunedMiniLM(model)
    embedder.name = spec
    return embedder


class _Tuned:
    """What every backend of a tuned model shares: its folder is the model, its identity the fingerprint."""

    def __init__(self, model: TunedModel) -> None:
        super().__init__(model.path)  # type: ignore[call-arg]  # the backend's own (model_dir)
        self.tuned = model

    @property
    def fingerprint(self) -> Fingerprint:
        return self.tuned.fingerprint()


class TunedMiniLM(_Tuned, MiniLMEmbedder):
    """A tuned MiniLM on torch (a GPU, or a CPU without onnxruntime)."""


class TunedMiniLMOnnx(_Tuned, MiniLMOnnxEmbedder):
    """A tuned MiniLM on ONNX Runtime fp32: torch's vectors (within 1e-5), the same space."""


class TunedMiniLMInt8(_Tuned, MiniLMInt8Embedder):
    """A tuned MiniLM exported to int8 ONNX: a space of its own."""

    @property
    def fingerprint(self) -> Fingerprint:
        # the int8 export's own fields (quantisation, opset, ...) beside the tuned model's identity
        own = MiniLMInt8Embedder.fingerprint.fget(self).extra  # type: ignore[attr-defined]
        base = self.tuned.base_fingerprint
        return self.tuned.fingerprint({k: v for k, v in own.items() if k not in base})


__all__ = [
    "BASES",
    "INT8_PREFIX",
    "META",
    "PREFIX",
    "TRAIN_IDS",
    "TunedMiniLM",
    "TunedMiniLMInt8",
    "TunedMiniLMOnnx",
    "TunedModel",
    "check_name",
    "is_tuned",
    "list_tuned",
    "load_tuned",
    "open_tuned",
    "tuned_root",
    "verify_files",
]
