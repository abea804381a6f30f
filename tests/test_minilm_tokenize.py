"""MiniLM's own tokenizing (the Rust backend called directly) gives the ids and mask the transformers tokenizer
call gives."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from featurestore.embedders.minilm import MAX_SEQ_LENGTH, MiniLMEmbedder

pytestmark = [pytest.mark.slow, pytest.mark.framework("minilm")]  # loads the real model

DATA = Path(__file__).resolve().parents[1] / "data" / "av-twitter-sentiment" / "train_2kmZucJ.csv"
ODD = [
    "word " * 700,  # far past 256 word pieces: truncated
    "Ünïcödé àccents — “quotes” … and ß",
    "emoji 😀🔥🎉 and CJK 日本語のテキスト and Arabic مرحبا",
    "tabs\tand\nnewlines  and   runs of spaces",
    "x",
    "#hashtag @user http://t.co/abc123 $AAPL 100% <3 :-)",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
]


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def reference(embedder: MiniLMEmbedder, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    enc = embedder._model[0](
        texts, padding=True, truncation="longest_first", max_length=MAX_SEQ_LENGTH, return_tensors="np"
    )
    return enc["input_ids"], enc["attention_mask"]


def test_tokenize_equals_the_transformers_call(embedder: MiniLMEmbedder) -> None:
    with DATA.open(encoding="utf-8") as f:
        tweets = [row["tweet"] for row in csv.DictReader(f)][:400]
    for batch in (tweets[:200], tweets[200:], ODD, ODD[1:] + tweets[:5], [ODD[0]]):
        ids, mask = embedder._tokenize(batch)
        ref_ids, ref_mask = reference(embedder, batch)
        assert ids.dtype == np.int64 and mask.dtype == np.int64
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_array_equal(mask, ref_mask)
    ids, _ = embedder._tokenize([ODD[0]])
    assert ids.shape == (1, MAX_SEQ_LENGTH)  # the long text was cut, not dropped or wrapped


def test_model_batches_do_not_change_vectors(embedder: MiniLMEmbedder) -> None:
    """A text's vector does not depend on how the call cuts the texts into model batches."""
    with DATA.open(encoding="utf-8") as f:
        tweets = [row["tweet"] for row in csv.DictReader(f)][:48]
    whole = embedder.embed_batch(tweets)
    before = embedder.cpu_model_batch
    embedder.cpu_model_batch = 7
    try:
        cut = embedder.embed_batch(tweets)
    finally:
        embedder.cpu_model_batch = before
    np.testing.assert_allclose(cut, whole, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(whole, axis=1), 1.0, atol=1e-5)
