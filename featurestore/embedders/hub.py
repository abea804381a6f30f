"""TF Hub embedder: ``--model elmo`` (google/elmo/3) and ``--model hub:HANDLE``.

Two kinds of module are understood:

- ELMo-like: a signature taking sentences (``default``: string[B]) or tokens (``tokens``:
  ``tokens`` string[B,T] + ``sequence_len`` int32[B]) and returning token vectors
  (``elmo``, ``word_emb``, ``lstm_outputs1``, ``lstm_outputs2``, each [B,T,D]). The chosen
  output is mean-pooled over real tokens; padded positions are masked out.
- Sentence encoders: strings in, one rank-2 float output (``default`` or the only one) out.

A URL handle is read from ``TFHUB_CACHE_DIR/<sha1(handle)>`` when present; otherwise its
host is probed with a short timeout before ``tensorflow_hub`` is asked, because offline
the library would retry for minutes. TensorFlow is imported only here and only on use.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from featurestore.embedders.base import Embedder, Fingerprint
from featurestore.embedders.checksums import module_sha256
from featurestore.embedders.elmo_spec import (
    DEFAULT_ELMO_OUTPUT,
    ELMO_HUB_HANDLE,
    ELMO_OUTPUTS,
    OUTPUT_ALL,
    OUTPUT_ELMO,
    OUTPUT_TOP,
)
from featurestore.embedders.network import unreachable_reason
from featurestore.embedders.tf_runtime import tensorflow, tensorflow_hub
from featurestore.errors import ModelError

log = logging.getLogger(__name__)

#: the module's token-level outputs concatenated (per token, before pooling) for each ELMo ``output``
TOKEN_OUTPUTS: dict[str, tuple[str, ...]] = {
    OUTPUT_ELMO: ("elmo",),
    OUTPUT_TOP: ("lstm_outputs2",),
    OUTPUT_ALL: ("word_emb", "lstm_outputs1", "lstm_outputs2"),
}
assert tuple(TOKEN_OUTPUTS) == ELMO_OUTPUTS  # every mix named in elmo_spec has its module outputs


def _local_copy_hint(handle: str) -> str:
    cache = hub_module_cache_path(handle) if _is_url(handle) else None
    where = f"TFHUB_CACHE_DIR with the module unpacked at {cache}" if cache else "TFHUB_CACHE_DIR"
    return (
        "point at a local copy: a module directory (--model hub:/path/to/elmo3), "
        f"{where}, or native ELMo weights (--model elmo:PATH, or fs models pull elmo-original)"
    )


def _is_url(handle: str) -> bool:
    return handle.startswith(("http://", "https://"))


def hub_cache_dir() -> Path:
    """Where tensorflow_hub caches modules: ``$TFHUB_CACHE_DIR`` or ``<tmp>/tfhub_modules``."""
    # Mirrors tensorflow_hub.resolver.tfhub_cache_dir(use_temp=True) without importing TF,
    # so an offline failure is reported before the slow TensorFlow import.
    return Path(os.environ.get("TFHUB_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "tfhub_modules"))


def hub_module_cache_path(handle: str) -> Path:
    """The folder tensorflow_hub reads a URL handle from: ``<cache>/<sha1(handle)>``."""
    return hub_cache_dir() / hashlib.sha1(handle.encode("utf8")).hexdigest()


def resolve_module(handle: str) -> Path:
    """The local folder of ``handle``: a directory as given, or the cached/downloaded URL module."""
    if _is_url(handle):
        cached = hub_module_cache_path(handle)
        if not (cached.is_dir() and any(cached.iterdir())):
            reason = unreachable_reason(handle)
            if reason:
                raise ModelError(f"cannot fetch TF Hub module {handle}: {reason}; {_local_copy_hint(handle)}")
        try:
            # Reads the same cache folder when it is seeded, so no network then.
            return Path(tensorflow_hub().resolve(handle))
        except Exception as exc:  # tensorflow_hub raises anything from URLError to tf.errors
            raise ModelError(f"cannot fetch TF Hub module {handle}: {exc}; {_local_copy_hint(handle)}") from None
    if handle.startswith("gs://"):
        try:
            return Path(tensorflow_hub().resolve(handle))
        except Exception as exc:
            raise ModelError(f"cannot fetch TF Hub module {handle}: {exc}; {_local_copy_hint(handle)}") from None
    path = Path(handle).expanduser()
    if not path.is_dir():
        raise ModelError(f"TF Hub module {handle} is not a directory or an http(s) URL; {_local_copy_hint(handle)}")
    if not any((path / n).is_file() for n in ("saved_model.pb", "saved_model.pbtxt")):
        raise ModelError(f"{handle} holds no saved_model.pb; a TF Hub module directory is a SavedModel")
    return path


def _spec_rank(spec: Any) -> int | None:
    return getattr(getattr(spec, "shape", None), "rank", None)


def _is_float(spec: Any) -> bool:
    dtype = getattr(spec, "dtype", None)
    return bool(dtype is not None and dtype.is_floating)


def _specs_text(specs: dict[str, Any]) -> str:
    return ", ".join(f"{k}:{v.dtype.name}{v.shape}" for k, v in sorted(specs.items()))


def _describe(signatures: dict[str, Any]) -> str:
    """``name(inputs) -> outputs`` for every signature, for error messages."""
    parts = []
    for name, fn in signatures.items():
        ins = _specs_text(fn.structured_input_signature[1])
        outs = fn.structured_outputs
        outs_txt = _specs_text(outs) if isinstance(outs, dict) else repr(outs)
        parts.append(f"{name}({ins}) -> {{{outs_txt}}}")
    return "; ".join(parts) or "no signatures"


class HubEmbedder(Embedder):
    """Embeds with a TF Hub module (URL, local directory or TFHUB_CACHE_DIR copy) loaded by ``hub.load``."""

    def __init__(self, handle: str, output: str = DEFAULT_ELMO_OUTPUT) -> None:
        if output not in TOKEN_OUTPUTS:
            raise ModelError(f"unknown output {output!r}; use one of: {', '.join(TOKEN_OUTPUTS)}")
        self.handle = handle
        self.output = output
        self.name = "elmo" if handle == ELMO_HUB_HANDLE else f"hub:{handle}"
        self.module_path = resolve_module(handle)
        hub = tensorflow_hub()
        log.info("loading TF Hub module %s from %s", handle, self.module_path)
        try:
            self._module = hub.load(str(self.module_path))
        except Exception as exc:  # a corrupt or non-SavedModel folder surfaces as many error types
            raise ModelError(f"cannot load TF Hub module {handle} from {self.module_path}: {exc}") from None
        self._sha256: str | None = None
        self._dim: int | None = None
        self._out_specs: dict[str, Any] | None = None  # the chosen signature's output specs, by name
        self._choose_signature()

    # -- signature selection -------------------------------------------------------------

    def _choose_signature(self) -> None:
        """Pick the signature and outputs to use, or raise ModelError saying what the module offers."""
        sigs = dict(getattr(self._module, "signatures", {}) or {})
        order = [n for n in ("default", "tokens") if n in sigs] + [n for n in sigs if n not in ("default", "tokens")]
        for name in order:
            fn = sigs[name]
            ins = fn.structured_input_signature[1]
            outs = fn.structured_outputs
            if not isinstance(outs, dict):
                continue
            if len(ins) == 1:
                ((key, spec),) = ins.items()
                if spec.dtype.name != "string" or _spec_rank(spec) != 1:
                    continue
                kind, input_key = "sentences", key
            elif set(ins) == {"tokens", "sequence_len"} and ins["tokens"].dtype.name == "string":
                kind, input_key = "tokens", "tokens"
            else:
                continue
            picked = self._pick_outputs(outs)
            if picked is not None:
                self.signature, self._fn, self._kind, self._input_key = name, fn, kind, input_key
                self._mode, self._keys = picked
                self._out_specs = outs
                return
        if not sigs and callable(self._module) and self.output == DEFAULT_ELMO_OUTPUT:
            # A TF2 SavedModel with no signatures but a __call__: try it on a string batch.
            self.signature, self._fn, self._kind, self._input_key = "__call__", self._module, "sentences", None
            self._out_specs = None
            self._mode, self._keys = "vector", ("default",)
            try:
                self._dim = int(self._probe().shape[1])
                return
            except Exception as exc:
                raise ModelError(
                    f"TF Hub module {self.handle} has no signatures and calling it on strings failed ({exc}); "
                    "it needs a module mapping strings to vectors"
                ) from None
        default_fits = any(
            self._pick_outputs(f.structured_outputs, DEFAULT_ELMO_OUTPUT)
            for f in sigs.values()
            if isinstance(f.structured_outputs, dict)
        )
        if self.output != DEFAULT_ELMO_OUTPUT and default_fits:
            raise ModelError(
                f"--output {self.output} needs token outputs {', '.join(TOKEN_OUTPUTS[self.output])}, "
                f"which TF Hub module {self.handle} lacks ({_describe(sigs)}); use --output elmo"
            )
        raise ModelError(
            f"TF Hub module {self.handle} has no signature mapping strings to vectors ({_describe(sigs)}); "
            "it needs a module mapping strings to vectors: string[B] in, a float [B,D] or token [B,T,D] output out"
        )

    def _pick_outputs(self, outs: Any, output: str | None = None) -> tuple[str, tuple[str, ...]] | None:
        """("tokens", keys) for ELMo-like outputs, ("vector", (key,)) for a sentence vector, else None."""
        if not isinstance(outs, dict):
            return None
        output = output or self.output
        keys = TOKEN_OUTPUTS[output]
        if all(k in outs and _spec_rank(outs[k]) == 3 and _is_float(outs[k]) for k in keys):
            return "tokens", keys
        if output != DEFAULT_ELMO_OUTPUT:  # a sentence vector stands only for the default mix
            return None
        if "default" in outs and _spec_rank(outs["default"]) == 2 and _is_float(outs["default"]):
            return "vector", ("default",)
        rank2 = [k for k, v in outs.items() if _spec_rank(v) == 2 and _is_float(v)]
        if len(rank2) == 1:
            return "vector", (rank2[0],)
        return None

    # -- Embedder interface ----------------------------------------------------------------

    @property
    def dim(self) -> int:
        if self._dim is None:
            sizes = [self._out_specs[k].shape[-1] for k in self._keys] if self._out_specs else [None]
            widths = [s for s in sizes if isinstance(s, int)]
            if len(widths) == len(sizes):
                self._dim = sum(widths)
            else:
                self._dim = int(self._probe().shape[1])
        return self._dim

    @property
    def fingerprint(self) -> Fingerprint:
        if self._sha256 is None:
            self._sha256 = module_sha256(self.module_path)
        return Fingerprint(
            model=self.handle,
            weights_sha256=self._sha256,
            output=self.output if self._mode == "tokens" else "module",
            # a sentence encoder pools inside the module; ELMo-like outputs are pooled here
            pooling="mean" if self._mode == "tokens" else "module",
            extra={
                "embedder": "tfhub",
                "module_path": str(self.module_path),
                "signature": self.signature,
                "outputs": list(self._keys),
                "dtype": "float32",
            },
            # the names of the first release's dict: stores are keyed by its hash
            key_names={"model": "handle", "weights_sha256": "module_sha256"},
        )

    def count_tokens(self, text: str) -> int:
        return len(_split(text)) + 2

    def _probe(self) -> np.ndarray:
        return self._run(["probe sentence"])

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        return self._run(texts)

    def _run(self, texts: list[str]) -> np.ndarray:
        tf = tensorflow()

        tokens = [_split(t) for t in texts]
        if self._kind == "tokens":
            width = max(1, max(len(t) for t in tokens))
            padded = [t + [""] * (width - len(t)) for t in tokens]
            result = self._fn(
                tokens=tf.constant(padded, tf.string), sequence_len=tf.constant([len(t) for t in tokens], tf.int32)
            )
        elif self._input_key is None:
            result = self._fn(tf.constant(texts, tf.string))
        else:
            result = self._fn(**{self._input_key: tf.constant(texts, tf.string)})
        if not isinstance(result, dict):
            result = {"default": result}
        if self._mode == "vector":
            out = result.get(self._keys[0])
            if out is None or len(out.shape) != 2:
                raise ModelError(
                    f"TF Hub module {self.handle} returned {type(out).__name__} {getattr(out, 'shape', '')} "
                    "instead of [batch, dim] floats; it needs a module mapping strings to vectors"
                )
            return np.asarray(out.numpy(), dtype=np.float32)
        layers = np.concatenate([np.asarray(result[k].numpy(), dtype=np.float64) for k in self._keys], axis=-1)
        width = layers.shape[1]
        if "sequence_len" in result:
            lengths = np.asarray(result["sequence_len"].numpy(), dtype=np.int64)
        else:
            # The module splits on single spaces, as _split does; the mask must match its padding.
            lengths = np.array([len(t) for t in tokens], dtype=np.int64)
        lengths = np.clip(lengths, 0, width)
        mask = np.arange(width)[None, :] < lengths[:, None]
        summed = (layers * mask[:, :, None]).sum(axis=1)
        return (summed / np.maximum(lengths, 1)[:, None]).astype(np.float32)


def _split(text: str) -> list[str]:
    """Tokens as google/elmo/3's ``default`` signature makes them: split on spaces, empties dropped."""
    return [t for t in text.split(" ") if t]


__all__ = ["HubEmbedder", "TOKEN_OUTPUTS", "hub_cache_dir", "hub_module_cache_path", "resolve_module"]
