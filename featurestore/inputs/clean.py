"""Versioned text-cleaning recipes.

A recipe turns raw tweets into the text that gets embedded. Its name and version
are part of every key, so changing what a recipe does means bumping its version,
which gives new keys and a new vector space rather than silently mixed vectors.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import metadata
from types import ModuleType
from typing import TYPE_CHECKING

from featurestore.errors import FeatureStoreError

if TYPE_CHECKING:  # spaCy is imported on first use
    from spacy.language import Language

# The tutorial's punctuation set: note that the apostrophe and '?' are kept.
TUTORIAL_PUNCTUATION = '!"#$%&()*+,-./:;<=>@[\\]^_`{|}~'
_URL = re.compile(r"http\S+")
_DIGIT = re.compile(r"[0-9]")
_PUNCT_TABLE = str.maketrans("", "", TUTORIAL_PUNCTUATION)


def _tutorial_steps(text: str) -> str:
    """URLs out, tutorial punctuation out, lowercase, digits to spaces, whitespace collapsed."""
    text = _URL.sub("", text)
    text = text.translate(_PUNCT_TABLE)
    text = text.lower()
    text = _DIGIT.sub(" ", text)
    return " ".join(text.split())


_SPACY_LOCK = threading.RLock()  # one load (seconds) for all threads, one pipe at a time (a server's requests)


VOCAB_LIMIT = 300_000  # words the lemmatizer may hold (~100 MB) before it is loaded afresh (``_lemmas``)

#: Set by the ``fs`` command: its spaCy is imported without torch (``_import_spacy``).
SPACY_WITHOUT_TORCH = False


def _import_spacy() -> ModuleType:
    """spaCy, imported in the ``fs`` process without torch: thinc imports torch (1.3 s of CPU here, most of
    a ``tweet-v1`` ingest's or query's start-up) only to offer torch layers, which the lookup lemmatizer
    never uses. Elsewhere (a library user's process) spaCy is imported as usual: the user's own pipelines
    may want thinc's torch support. Once spaCy is imported, ``import torch`` works as before."""
    import sys

    from featurestore.machine import hidden_module

    with hidden_module("torch", hide=SPACY_WITHOUT_TORCH and "thinc" not in sys.modules):  # thinc.compat's check
        import spacy
    return spacy


@lru_cache(maxsize=1)
def _load_lemmatizer() -> Language:
    """spaCy's English tokenizer plus the offline lookup lemmatizer (spacy-lookups-data)."""
    spacy = _import_spacy()

    nlp = spacy.blank("en")
    nlp.add_pipe("lemmatizer", config={"mode": "lookup"})
    try:
        nlp.initialize()
    except (OSError, ValueError) as exc:  # lookup tables missing
        raise FeatureStoreError(
            f"spaCy's lookup lemmatizer could not load its tables ({exc}); fix: pip install spacy-lookups-data"
        ) from exc
    return nlp


def _lemmatizer() -> Language:
    with _SPACY_LOCK:
        return _load_lemmatizer()


def _lemmas(texts: Sequence[str]) -> list[str]:
    out = []
    with _SPACY_LOCK:  # spaCy does not promise that one pipeline is safe to run from several threads
        nlp = _lemmatizer()
        for doc in nlp.pipe(texts, batch_size=1000):
            # Lemmas can contain spaces or be empty for odd tokens: normalise again.
            out.append(" ".join(" ".join(tok.lemma_ or tok.text for tok in doc).split()))
        if len(nlp.vocab) > VOCAB_LIMIT:
            # The pipeline keeps every word it has seen (~0.3 KB each: 3 GB over a 10M-tweet ingest of new
            # words); a fresh one costs 0.3 s. spaCy's memory zones free them too, but made cleaning 2.6x slower.
            _load_lemmatizer.cache_clear()
    return out


@cache
def _package_version(name: str) -> str:
    """The installed version (once a process: ``metadata.version`` scans site-packages, and a server's every
    embedded query checks its space's fingerprint)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


@dataclass(frozen=True)
class Recipe:
    """A named, versioned cleaning function applied to batches of texts."""

    id: str
    version: int
    description: str
    steps: Callable[[str], str] | None
    lemmatize: bool = False

    @property
    def name(self) -> str:
        return f"{self.id}-v{self.version}"

    def fingerprint(self) -> dict[str, str]:
        """Everything that changes the cleaned text, for the space fingerprint."""
        fp = {"recipe": self.name}
        if self.lemmatize:
            # Lemma tables ship with spacy-lookups-data; a new table can change lemmas.
            fp["spacy"] = _package_version("spacy")
            fp["spacy_lookups_data"] = _package_version("spacy-lookups-data")
        return fp

    def clean(self, texts: Iterable[str]) -> list[str]:
        texts = list(texts)
        if self.steps is not None:
            texts = [self.steps(t) for t in texts]
        if self.lemmatize:
            texts = _lemmas(texts)
        return texts


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("raw", 1, "the text exactly as given", None),
        Recipe(
            "basic",
            1,
            "the tutorial's steps without lemmas: URLs, punctuation, lowercase, digits, whitespace",
            _tutorial_steps,
        ),
        Recipe(
            "tweet",
            1,
            "the tutorial's recipe: URLs, punctuation, lowercase, digits, whitespace, spaCy lemmas",
            _tutorial_steps,
            lemmatize=True,
        ),
    )
}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        known = ", ".join(RECIPES)
        raise FeatureStoreError(f"unknown cleaning recipe {name!r}; use one of: {known}") from None
