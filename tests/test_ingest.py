"""Ingest with the counting fake: embed only what is missing, in planned batches, atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from featurestore.api import FeatureStore
from featurestore.embedders.base import plan_batches
from featurestore.errors import DatasetError, DriftError, IngestInterrupted, InputFileError, UsageError
from tests.conftest import train_rows, write_csv
from tests.fakes import CountingEmbedder, fake_vector


def _csv(path: Path, rows: list[tuple[int, int, str]]) -> Path:
    return write_csv(path, [{"id": i, "label": lab, "tweet": t} for i, lab, t in rows])


def test_reingest_embeds_nothing(fs: FeatureStore, tweets_csv: Path) -> None:
    first = CountingEmbedder()
    s1 = fs.ingest(str(tweets_csv), "train", "fake", "basic-v1", embedder=first)
    assert s1.new_ids == 200 and first.calls > 0
    gen = fs.store.snapshot().generation
    again = CountingEmbedder()
    s2 = fs.ingest(str(tweets_csv), "train", "fake", "basic-v1", embedder=again)
    assert again.calls == 0
    assert (s2.rows_read, s2.new_ids, s2.duplicates, s2.embedded, s2.batches_committed) == (200, 0, 200, 0, 0)
    assert fs.store.snapshot().generation == gen


def test_hundred_new_rows_embed_at_most_hundred_texts(fs: FeatureStore, tmp_path: Path) -> None:
    rows = train_rows(400)
    fs.ingest(str(write_csv(tmp_path / "a.csv", rows[:300])), "train", "fake", "raw-v1", embedder=CountingEmbedder())
    emb = CountingEmbedder()
    s = fs.ingest(str(write_csv(tmp_path / "b.csv", rows)), "train", "fake", "raw-v1", embedder=emb)
    assert s.new_ids == 100 and s.duplicates == 300
    # The first call re-embeds the space's 3 canary texts (the drift check); the rest are new texts only.
    canaries = fs.space("fake", "raw-v1").canaries
    assert len(canaries) == 3 and sorted(emb.batches[0]) == sorted(canaries)
    new_inputs = [t for b in emb.batches[1:] for t in b]
    assert 0 < len(new_inputs) == s.embedded <= 100
    assert set(new_inputs) <= {r["tweet"] for r in rows[300:]}
    assert fs.store.snapshot().datasets["train"].count == 400


def test_batches_follow_the_token_budget(fs: FeatureStore, tmp_path: Path) -> None:
    # 100 distinct three-word texts: 3 + 2 = 5 tokens each; 40 tokens a batch -> 8 texts a batch -> 13 calls
    rows = [(i, i % 2, f"word{i} other{i} third{i}") for i in range(100)]
    emb = CountingEmbedder(max_batch_tokens=40)
    s = fs.ingest(str(_csv(tmp_path / "in.csv", rows)), "d", "fake", "raw-v1", embedder=emb)
    assert emb.calls == 13
    assert [len(b) for b in emb.batches] == [8] * 12 + [4]
    assert s.embedded == 100


def test_commit_rows_split_the_commits(fs: FeatureStore, tmp_path: Path) -> None:
    rows = [(i, 0, f"text {i}") for i in range(100)]
    emb = CountingEmbedder(max_batch_size=16)
    s = fs.ingest(str(_csv(tmp_path / "in.csv", rows)), "d", "fake", "raw-v1", embedder=emb, commit_rows=30)
    assert s.batches_committed == 4
    assert [len(b) for b in emb.batches] == [16, 14, 16, 14, 16, 14, 10]
    assert fs.store.snapshot().generation == 4


def test_plan_batches() -> None:
    assert [b.tolist() for b in plan_batches([5, 5, 5, 5, 5], 10, 100)] == [[0, 1], [2, 3], [4]]
    # sorted by length, stable; a text longer than the budget gets its own batch
    assert [b.tolist() for b in plan_batches([9, 1, 50, 1, 2], 10, 100)] == [[1, 3, 4], [0], [2]]
    assert [b.tolist() for b in plan_batches([1] * 5, 1000, 2)] == [[0, 1], [2, 3], [4]]
    assert plan_batches([], 10, 10) == []


def test_summary_fields(fs: FeatureStore, tmp_path: Path) -> None:
    rows = [
        (1, 0, "Hello World"),
        (2, 1, "hello world!"),  # same cleaned text as row 1: a cache hit
        (3, 0, "http://x.com !!!"),  # empty after cleaning
        (4, 1, "another tweet"),
        (4, 1, "another tweet"),  # repeated in the input: kept once
    ]
    emb = CountingEmbedder()
    s = fs.ingest(str(_csv(tmp_path / "in.csv", rows)), "d", "fake", "basic-v1", embedder=emb)
    assert (s.rows_read, s.new_ids, s.duplicates) == (5, 4, 1)
    assert (s.rows_keyed, s.cache_hits, s.embedded, s.empty_after_cleaning) == (4, 1, 3, 1)
    assert s.batches_committed == 1 and s.recipe == "basic-v1" and s.model == "fake" and s.dataset == "d"
    assert sorted(emb.inputs) == ["another tweet", "hello world"]  # the empty text never reaches the model
    rows2 = [(5, 0, "another tweet"), (1, 0, "Hello World")]
    s2 = fs.ingest(str(_csv(tmp_path / "in2.csv", rows2)), "d", "fake", "basic-v1", embedder=emb)
    assert (s2.new_ids, s2.duplicates, s2.cache_hits, s2.embedded) == (1, 1, 1, 0)


def test_text_empty_after_cleaning_gets_a_zero_vector(fs: FeatureStore, tmp_path: Path) -> None:
    rows = [(1, 0, "http://x.com !!!"), (2, 1, "a real tweet")]
    s = fs.ingest(str(_csv(tmp_path / "in.csv", rows)), "d", "fake", "tweet-v1", embedder=CountingEmbedder())
    assert s.empty_after_cleaning == 1
    X, y, ids = fs.xy("d", "fake", "tweet-v1")
    assert ids.tolist() == ["1", "2"] and y.tolist() == ["0", "1"]
    assert np.isfinite(X).all()
    np.testing.assert_array_equal(X[0], np.zeros(16, np.float32))
    np.testing.assert_array_equal(X[1], fake_vector("a real tweet"))
    assert fs.rows("d")["texts"].tolist() == ["http://x.com !!!", "a real tweet"]


def test_conflicting_text_for_a_stored_id_changes_nothing(fs: FeatureStore, tmp_path: Path) -> None:
    fs.ingest(
        str(_csv(tmp_path / "a.csv", [(1, 0, "first"), (2, 0, "second")])),
        "d",
        "fake",
        "raw-v1",
        embedder=CountingEmbedder(),
    )
    before = fs.store.snapshot()
    emb = CountingEmbedder()
    with pytest.raises(DatasetError, match="id '2' is already in dataset 'd' with a different text"):
        fs.ingest(
            str(_csv(tmp_path / "b.csv", [(3, 0, "third"), (2, 0, "changed")])), "d", "fake", "raw-v1", embedder=emb
        )
    assert emb.calls == 0
    assert fs.store.snapshot() == before


def test_duplicate_ids_in_the_input(fs: FeatureStore, tmp_path: Path) -> None:
    same = _csv(tmp_path / "same.csv", [(7, 1, "dup"), (8, 0, "x"), (7, 1, "dup")])
    s = fs.ingest(str(same), "d", "fake", "raw-v1", embedder=CountingEmbedder())
    assert (s.new_ids, s.duplicates) == (2, 1)
    assert fs.rows("d")["ids"].tolist() == ["7", "8"]
    different = _csv(tmp_path / "diff.csv", [(9, 1, "dup"), (8, 0, "x"), (9, 1, "not the same")])
    with pytest.raises(InputFileError, match=r"rows 1 and 3 share id '9' with different texts"):
        fs.ingest(str(different), "e", "fake", "raw-v1", embedder=CountingEmbedder())
    assert "e" not in fs.store.snapshot().datasets


def test_second_recipe_keys_old_rows_without_adding_rows(fs: FeatureStore, tweets_csv: Path) -> None:
    fs.ingest(str(tweets_csv), "train", "fake", "raw-v1", embedder=CountingEmbedder())
    emb = CountingEmbedder()
    s = fs.ingest(str(tweets_csv), "train", "fake", "basic-v1", embedder=emb)
    assert s.new_ids == 0 and s.rows_keyed == 200 and s.embedded == len(set(emb.inputs)) > 0
    ds = fs.store.snapshot().datasets["train"]
    assert ds.count == 200 and ds.keyed("raw-v1") == 200 and ds.keyed("basic-v1") == 200
    X, _, ids = fs.xy("train", "fake", "basic-v1")
    assert X.shape == (200, 16) and len(set(ids.tolist())) == 200
    # A third run under either recipe has nothing to do.
    again = CountingEmbedder()
    fs.ingest(str(tweets_csv), "train", "fake", "basic-v1", embedder=again)
    fs.ingest(str(tweets_csv), "train", "fake", "raw-v1", embedder=again)
    assert again.calls == 0


def test_second_dtype_of_the_same_model_gets_its_own_vectors(fs: FeatureStore, tweets_csv: Path) -> None:
    """Regression: rows already keyed under the recipe used to be skipped for a new space."""
    fs.ingest(str(tweets_csv), "train", "fake", "raw-v1", embedder=CountingEmbedder())
    emb = CountingEmbedder()
    s = fs.ingest(str(tweets_csv), "train", "fake", "raw-v1", dtype="float16", embedder=emb)
    assert s.new_ids == 0 and s.embedded == 200 == len(emb.inputs)
    snap = fs.store.snapshot()
    assert sorted(sp.dtype for sp in snap.spaces.values()) == ["float16", "float32"]
    assert snap.datasets["train"].keyed("raw-v1") == 200  # keys are not written twice
    with pytest.raises(UsageError, match=r"2 stored spaces fit .* fix: choose one with dtype \(float16 or float32\)"):
        fs.xy("train", "fake", "raw-v1")  # both cover the dataset: never a silent pick
    X16, _, _ = fs.xy("train", "fake", "raw-v1", dtype="float16")
    X32, _, _ = fs.xy("train", "fake", "raw-v1", dtype="float32")
    assert X16.dtype == X32.dtype == np.float32 and X16.shape == X32.shape == (200, 16)
    assert 0 < np.abs(X16 - X32).max() < 1e-2


def test_progress_reaches_the_total(fs: FeatureStore, tweets_csv: Path) -> None:
    seen: list[tuple[float, int]] = []
    fs.ingest(
        str(tweets_csv),
        "train",
        "fake",
        "raw-v1",
        embedder=CountingEmbedder(),
        commit_rows=64,
        progress=lambda n, total: seen.append((n, total)),
    )
    assert {t for _, t in seen} == {200}
    assert sum(n for n, _ in seen) == pytest.approx(200)


class _StopAfter(CountingEmbedder):
    def __init__(self, batches: int) -> None:
        super().__init__(max_batch_size=50)
        self.left = batches

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        return super().embed_batch(texts)


def test_interrupted_ingest_resumes_where_it_stopped(fs: FeatureStore, tweets_csv: Path) -> None:
    with pytest.raises(IngestInterrupted) as err:
        fs.ingest(str(tweets_csv), "train", "fake", "raw-v1", embedder=_StopAfter(2), commit_rows=50)
    assert err.value.summary.batches_committed == 2 and err.value.exit_code == 130
    assert fs.store.snapshot().datasets["train"].count == 100
    emb = CountingEmbedder()
    s = fs.ingest(str(tweets_csv), "train", "fake", "raw-v1", embedder=emb, commit_rows=50)
    assert s.new_ids == 100 and s.duplicates == 100
    assert s.embedded <= 100 and len(emb.inputs) == s.embedded + 3  # + the 3 drift-check canaries
    assert fs.store.snapshot().datasets["train"].count == 200


class _Drifted(CountingEmbedder):
    def embed_batch(self, texts: list[str]) -> np.ndarray:
        return super().embed_batch(texts) + 0.5


def test_drifted_model_is_refused(fs: FeatureStore, tmp_path: Path) -> None:
    fs.ingest(
        str(_csv(tmp_path / "a.csv", [(1, 0, "one"), (2, 0, "two")])),
        "d",
        "fake",
        "raw-v1",
        embedder=CountingEmbedder(),
    )
    before = fs.store.snapshot()
    with pytest.raises(DriftError, match="no longer reproduces"):
        fs.ingest(str(_csv(tmp_path / "b.csv", [(3, 0, "three")])), "d", "fake", "raw-v1", embedder=_Drifted())
    assert fs.store.snapshot() == before


def _table(ids: list[str], labels: list[str], texts: list[str]):
    from featurestore.inputs.sources import Table
    from featurestore.storage.keys import raw_digest

    return Table(
        "t.csv",
        np.array(ids, dtype=object),
        texts,
        np.array(labels, dtype=object),
        np.array([raw_digest(t) for t in texts], dtype="S32"),
        len(ids),
        0,
        "id",
        "label",
        "tweet",
    )


def test_plan_is_pure_bookkeeping_without_a_model(fs: FeatureStore, tmp_path: Path) -> None:
    """plan() decides new rows, label changes and rows lacking a key from one snapshot; no embedder is involved."""
    from featurestore.ingestion.ingest import plan
    from featurestore.inputs.clean import get_recipe
    from featurestore.storage.manifest import Space

    fs.ingest(
        str(_csv(tmp_path / "a.csv", [(1, 0, "one"), (2, 1, "two")])),
        "d",
        "fake",
        "raw-v1",
        embedder=CountingEmbedder(),
    )
    snap = fs.store.snapshot()
    stored = fs.space("fake", "raw-v1")
    table = _table(["2", "3", "02", "1"], ["0", "1", "", ""], ["two", "three", "zero two", "one"])
    work = plan(fs.store, snap, table, "d", stored)
    assert work.ids.tolist() == ["3", "02"] and work.texts == ["three", "zero two"]
    assert work.new_rows.ids.tolist() == ["3", "02"] and work.new_rows.labels.tolist() == ["1", ""]
    assert work.label_updates.ids.tolist() == ["2"] and work.label_updates.labels.tolist() == ["0"]
    assert (work.labels_added, work.labels_changed, work.duplicates) == (0, 1, 2)
    held = fs.store.space_keys(stored)
    assert len(work.have) == len(held) and work.have.contains(held).all()
    # Another recipe: every stored row still needs a key, none of them is new.
    other = Space("o" * 16, {"x": 1}, "fake", get_recipe("basic-v1").name, stored.dim, "float32")
    work = plan(fs.store, snap, _table(["1"], [""], ["one"]), "d", other)
    assert work.ids.tolist() == ["1", "2"] and len(work.new_rows) == 0 and work.needs_key.all() and not len(work.have)
    with pytest.raises(DatasetError, match="id '1' is already in dataset 'd' with a different text"):
        plan(fs.store, snap, _table(["1"], [""], ["not one"]), "d", stored)


def test_ctrl_c_during_a_commit_is_held_until_the_summary_counts_it() -> None:
    """A SIGINT landing between a commit and its bookkeeping used to report one batch too few."""
    import os
    import signal

    from featurestore.ingestion.ingest import _interrupt_after

    done = []
    with pytest.raises(KeyboardInterrupt):
        with _interrupt_after():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("committed")  # still runs: the interrupt waits for the block to end
            done.append("counted")
    assert done == ["committed", "counted"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
