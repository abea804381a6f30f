"""Text keys and vector-space ids: equal inputs hash equal, any changed field changes the hash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from featurestore.ingestion.ingest import ingest
from featurestore.inputs.clean import get_recipe
from featurestore.inputs.sources import read_table
from featurestore.spaces import make_space
from featurestore.storage.keys import canonical_json, fingerprint_hash, raw_digest, space_id, text_key
from featurestore.storage.store import Store
from tests.fakes import CountingEmbedder, fake_vector


def test_text_key_golden() -> None:
    assert text_key("tweet-v1", "some text") == b"d27190084fcbb71f34b933d70de75b89"
    assert text_key("raw-v1", "some text") == b"18735e79a228ffc4612b527b13aa2dd1"


def test_equal_inputs_hash_equal() -> None:
    assert text_key("tweet-v1", "a b") == text_key("tweet-v1", "a b")
    assert fingerprint_hash({"a": 1, "b": [1, 2]}) == fingerprint_hash({"b": [1, 2], "a": 1})
    assert canonical_json({"b": 1, "a": 2}) == '{"a":2,"b":1}'


def test_recipe_name_and_text_change_the_key() -> None:
    assert text_key("tweet-v1", "some text") != text_key("tweet-v2", "some text")
    assert text_key("tweet-v1", "some text") != text_key("tweet-v1", "some text ")
    # the separator keeps (name, text) pairs apart
    assert text_key("a", "bc") != text_key("ab", "c")


def test_keys_are_32_hex_bytes_and_survive_nul() -> None:
    k = text_key("raw-v1", "a\x00b")
    assert len(k) == 32 and all(c in b"0123456789abcdef" for c in k)
    assert k != text_key("raw-v1", "a")
    assert raw_digest("a\x00b") != raw_digest("a")


BASE_FP = {"model": "counting-fake", "weights_sha256": "0" * 64, "output": "default", "pooling": "mean"}


@pytest.mark.parametrize(
    "change",
    [
        {"weights_sha256": "f" * 64},
        {"output": "top"},
        {"pooling": "max"},
        {"model": "another"},
        {"recipe": "basic-v1"},
        {"dtype": "float16"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_space_id_changes_with_every_field(change: dict[str, str]) -> None:
    base = make_space(CountingEmbedder(), "fake", get_recipe("raw-v1"), "float32")
    fp = {k: v for k, v in change.items() if k not in ("recipe", "dtype")}
    other = make_space(
        CountingEmbedder(**fp), "fake", get_recipe(change.get("recipe", "raw-v1")), change.get("dtype", "float32")
    )
    assert other.id != base.id
    assert len(base.id) == 16


def test_space_id_is_stable_for_equal_inputs() -> None:
    a = make_space(CountingEmbedder(), "fake", get_recipe("raw-v1"))
    b = make_space(CountingEmbedder(), "renamed", get_recipe("raw-v1"))
    # the registry name is not part of the fingerprint: the weights and settings are
    assert a.id == b.id == space_id(a.fields)


def test_unknown_dtype_is_refused() -> None:
    from featurestore.errors import FeatureStoreError

    with pytest.raises(FeatureStoreError, match="float64"):
        make_space(CountingEmbedder(), "fake", get_recipe("raw-v1"), "float64")


def _csv(tmp_path: Path, texts: list[str]) -> Path:
    p = tmp_path / "in.csv"
    p.write_text("id,text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(texts, 1)), encoding="utf-8")
    return p


def test_two_models_never_share_vectors(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    texts = ["one tweet", "two tweets", "three tweets"]
    table = read_table(str(_csv(tmp_path, texts)))
    a = CountingEmbedder()
    b = CountingEmbedder(weights_sha256="1" * 64, dim=8)
    sa = ingest(store, table, "d", a, "a", get_recipe("raw-v1"))
    sb = ingest(store, table, "d", b, "b", get_recipe("raw-v1"))
    assert sa.space != sb.space
    assert (a.calls, b.calls) == (1, 1)
    assert sorted(a.inputs) == sorted(b.inputs) == sorted(texts)
    assert sb.embedded == 3 and sb.cache_hits == 0
    snap = store.snapshot()
    assert set(snap.spaces) == {sa.space, sb.space}
    va = np.concatenate([v for _, v in store.iter_vectors(snap.spaces[sa.space])])
    vb = np.concatenate([v for _, v in store.iter_vectors(snap.spaces[sb.space])])
    assert va.shape == (3, 16) and vb.shape == (3, 8)
    keys = store.space_keys(snap.spaces[sa.space]).tolist()
    for k, v in zip(keys, va):
        t = next(t for t in texts if text_key("raw-v1", t) == k)
        np.testing.assert_array_equal(v, fake_vector(t))


def test_two_recipes_never_share_vectors(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    table = read_table(str(_csv(tmp_path, ["Hello World", "hello world"])))
    emb = CountingEmbedder()
    s1 = ingest(store, table, "d", emb, "fake", get_recipe("raw-v1"))
    s2 = ingest(store, table, "d", emb, "fake", get_recipe("basic-v1"))
    assert s1.space != s2.space
    assert (s1.embedded, s2.embedded) == (2, 1)  # basic-v1 folds case: one cleaned text
    assert emb.batches == [["Hello World", "hello world"], ["hello world"]]
    snap = store.snapshot()
    assert snap.spaces[s1.space].rows == 2 and snap.spaces[s2.space].rows == 1
    assert snap.datasets["d"].count == 2  # the second recipe adds keys, not rows
