"""No silent steps, and say what was used (issue 22): progress from the library drawn by the CLI, a search's time
limit honoured between candidates and its results in words, the classifier and the space a command used named,
a warning when a classifier is scored on the rows it was fitted on, and search knobs the index does not take
refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from featurestore.api import FeatureStore
from featurestore.errors import ClassifierError, SpaceError
from tests.conftest import FAKE, train_rows, write_csv

OTHER = "py:tests.fakes:other_embedder"
runner = CliRunner()


def fs_cli(*args: object, terminal: bool = False):
    """``fs ARGS`` in-process; ``terminal``: stderr taken for a terminal, so that rich draws its bars there."""
    env = {"TTY_COMPATIBLE": "1", "NO_COLOR": "1", "COLUMNS": "200"} if terminal else None
    return runner.invoke(app, [str(a) for a in args], env=env)


def error_line(result) -> str:
    assert result.exit_code != 0, result.output
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("Error: ")]
    return line


@pytest.fixture
def st(tmp_path: Path) -> Path:
    """120 labelled tweets in 'train', 40 more in 'other', one space (the counting fake)."""
    rows = train_rows(160)
    for path, name, part in (("train.csv", "train", rows[:120]), ("other.csv", "other", rows[120:])):
        r = fs_cli("ingest", write_csv(tmp_path / path, part), "-d", name, "-m", FAKE, "--store", tmp_path / "store")
        assert r.exit_code == 0, r.output
    return tmp_path / "store"


# ---------------------------------------------------------------- a search: progress, time limit, words


def test_the_time_limit_stops_new_candidates_of_one_setting_and_says_which(st: Path) -> None:
    """Regression: a quick search has one feature setting and 16 classifier settings (8 fits, each also scored
    with class offsets); the limit was looked at only between feature settings, so all ran whatever the limit."""
    calls: list[tuple[float, int]] = []
    r = FeatureStore(st).train(
        "train", FAKE, search="quick", folds=2, time_limit=1e-9, plots=False, progress=lambda n, t: calls.append((n, t))
    )
    assert r.cv["tried"] == 2 and r.cv["skipped"] == 14 and r.cv["time_limit"] == 1e-9  # C=1 and its twin
    assert len(r.cv["untried"]) == 14 and all("vectors, C=" in w for w in r.cv["untried"])
    (note,) = [n for n in r.notes if "time limit" in n]
    assert "left 14 of 16 candidate settings untried" in note and "C=3 balanced" in note and "Params(" not in note
    assert calls == [(0, 16), (0.5, 16), (0.5, 16), (1, 16)]  # the total, one fit's two folds, its twin with offsets


def test_a_search_reports_every_candidate_to_progress(st: Path) -> None:
    calls: list[tuple[float, int]] = []
    r = FeatureStore(st).train(
        "train", FAKE, search="quick", folds=2, plots=False, progress=lambda n, t: calls.append((n, t))
    )
    assert r.cv["tried"] == 16 and r.cv["skipped"] == 0 and r.cv["untried"] == []
    assert {t for _, t in calls} == {16} and sum(n for n, _ in calls) == pytest.approx(16)
    assert r.cv["chosen"]["words"].startswith(f"{FAKE} vectors, C=")


def test_fs_train_search_prints_what_ran_and_what_was_skipped_in_words(st: Path) -> None:
    quick = ("--search", "quick", "--folds", "2", "--time-limit", "1e-9")
    r = fs_cli("train", "-m", FAKE, *quick, "--no-plots", "--store", st)
    assert r.exit_code == 0, r.output
    assert "(quick search, 2 of 16 settings scored in 0 s; the 1e-09 s time limit left 14 untried)" in r.stdout
    assert f"): {FAKE} vectors, C=1" in r.stdout  # the chosen setting, in words (with class offsets or not)
    assert "note: the 1e-09 s time limit left 14 of 16 candidate settings untried" in r.stderr
    assert f"({FAKE} vectors: C=1 balanced, C=1 balanced with class offsets, C=3, C=3 with class offsets" in r.stderr
    assert "Params(" not in r.output and "class_weight" not in r.output


def test_the_cli_draws_bars_for_search_map_export_index_and_check(st: Path, tmp_path: Path) -> None:
    r = fs_cli("train", "-m", FAKE, "--search", "quick", "--folds", "2", "--no-plots", "--store", st, terminal=True)
    assert r.exit_code == 0, r.output
    assert "16/16 settings" in r.stderr and "100%" in r.stderr
    assert "  2. " in r.stdout  # the runner-up setting, in words
    r = fs_cli("map", "-m", FAKE, "--method", "pca", "--out", tmp_path / "m.png", "--store", st, terminal=True)
    assert r.exit_code == 0, r.output
    assert "3/3 steps" in r.stderr
    r = fs_cli("export", "-d", "train", "-m", FAKE, "--out", tmp_path / "t.parquet", "--store", st, terminal=True)
    assert r.exit_code == 0, r.output
    assert "120/120 rows" in r.stderr
    r = fs_cli("index", "build", "-m", FAKE, "--kind", "hnsw", "--store", st, terminal=True)
    assert r.exit_code == 0, r.output
    assert "160/160 vectors" in r.stderr
    r = fs_cli("check", "--store", st, terminal=True)
    assert r.exit_code == 0, r.output
    assert "check: reading " in r.stderr and " MB" in r.stderr and "100%" in r.stderr  # bytes read (issue 24)


def test_map_export_index_and_check_report_progress(st: Path, tmp_path: Path) -> None:
    fs = FeatureStore(st)
    seen: dict[str, list[tuple[float, int]]] = {}

    def recorder(name: str):
        seen[name] = []
        return lambda n, t: seen[name].append((n, t))

    fs.map("train", tmp_path / "m.png", FAKE, method="pca", progress=recorder("map"))
    assert seen["map"] == [(1, 3), (1, 3), (1, 3)]  # read, project, draw
    fs.export("train", tmp_path / "t.parquet", model=FAKE, progress=recorder("export"))
    assert seen["export"][0] == (0, 120) and sum(n for n, _ in seen["export"]) == 120
    fs.index_build("ivf", nlist=2, progress=recorder("index"))
    assert seen["index"][0] == (0, 160) and sum(n for n, _ in seen["index"]) == 160
    assert fs.check(progress=recorder("check")).ok
    # the bytes of segment and index files read (issue 24): every one of them, once
    files = [p for p in (st / "segments").iterdir()] + list((st / "index").glob("*.faiss"))
    total = seen["check"][0][1]
    assert seen["check"][0] == (0, total) and sum(n for n, _ in seen["check"]) == total > 0
    assert total <= sum(p.stat().st_size for p in files)


# ---------------------------------------------------------------- which classifier


def test_predict_and_eval_use_the_most_recently_trained_classifier_and_say_so(st: Path, tmp_path: Path) -> None:
    """Regression: with no --classifier-name, predict used 'train-minilm-logreg' (an error here, where no
    such classifier exists) even right after 'fs train --name av-char'."""
    for name in ("clf-a", "av-char"):
        assert fs_cli("train", "-m", FAKE, "--name", name, "--no-plots", "--store", st).exit_code == 0
    r = fs_cli("predict", "-d", "other", "--out", tmp_path / "p.csv", "--store", st)
    assert r.exit_code == 0, r.output
    assert f"wrote 40 predictions of classifier 'av-char' to {tmp_path / 'p.csv'}" in r.stdout
    assert "note: using classifier 'av-char', the most recently trained in this store, trained " in r.stderr
    assert "others: clf-a; pick another with --classifier-name NAME" in r.stderr
    r = fs_cli("eval", "-d", "other", "--store", st)
    assert r.exit_code == 0, r.output
    assert "classifier 'av-char' on other: 40 labelled rows" in r.stdout and "'av-char'" in r.stderr
    r = fs_cli("eval", "-d", "other", "--classifier-name", "clf-a", "--json", "--store", st)
    assert r.exit_code == 0 and json.loads(r.stdout)["classifier"] == "clf-a" and json.loads(r.stdout)["note"] is None


def test_the_only_classifier_is_used_without_a_name(st: Path, tmp_path: Path) -> None:
    """Regression: with only 'ids-...' trained, predict failed looking for 'train-minilm-logreg'."""
    assert fs_cli("train", "-m", FAKE, "--name", "ids-fake", "--no-plots", "--store", st).exit_code == 0
    r = fs_cli("predict", "-d", "other", "--out", tmp_path / "p.csv", "--store", st)
    assert r.exit_code == 0, r.output
    assert "of classifier 'ids-fake'" in r.stdout
    assert (
        "note: using classifier 'ids-fake', the only one in this store" in r.stderr and "pick another" not in r.stderr
    )


def test_no_classifier_or_two_equally_recent_ones_are_refused(st: Path, tmp_path: Path) -> None:
    assert "no trained classifier in" in error_line(fs_cli("predict", "-d", "other", "--store", st))
    fs = FeatureStore(st)
    for name in ("a", "b"):
        fs.train("train", FAKE, name=name, plots=False)
    for name in ("a", "b"):  # the same recorded time and file time: neither is more recent
        meta = fs.store.classifier_dir / f"{name}.json"
        manifest = json.loads(meta.read_text())
        meta.write_text(json.dumps({**manifest, "trained_at": "2026-01-02T03:04:05.000000Z"}))
        os.utime(meta, ns=(1_700_000_000_000_000_000,) * 2)
    with pytest.raises(ClassifierError, match="'a', 'b' .* were trained at the same time"):
        fs.predict("other")
    line = error_line(fs_cli("eval", "-d", "other", "--store", st))
    assert "trained at the same time" in line and "fix: pass --classifier-name (trained: a, b)" in line
    assert fs.predict("other", "b")[0].shape == (40,)  # a name still chooses


# ---------------------------------------------------------------- scoring the rows a classifier was fitted on


def test_eval_warns_when_the_rows_scored_include_the_ones_fitted(st: Path, tmp_path: Path) -> None:
    assert fs_cli("train", "-m", FAKE, "--name", "clf", "--no-plots", "--store", st).exit_code == 0
    r = fs_cli("eval", "-d", "train", "--store", st)
    assert r.exit_code == 0, r.output
    assert (
        "warning: 96 of the 120 rows scored were used to fit classifier 'clf' (the training split of dataset "
        "'train'): these scores are optimistic" in r.stderr
    )
    r = fs_cli("eval", "-d", "other", "--store", st)  # rows the classifier never saw: no warning
    assert r.exit_code == 0 and "were used to fit" not in r.output and "optimistic" not in r.output
    fs = FeatureStore(st)
    # rows appended later: the fitted rows are still known (the first 120 labelled rows hash as recorded)
    fs.ingest(str(write_csv(tmp_path / "more.csv", train_rows(170)[160:])), "train", FAKE)
    (w,) = fs.eval("train")["warnings"]
    assert w.startswith("96 of the 130 rows scored were used to fit classifier 'clf'")
    # a label changed: the same ids, so the same rows were fitted
    first = train_rows(1)[0]
    changed = {**first, "label": "1" if first["label"] == "0" else "0"}
    fs.ingest(str(write_csv(tmp_path / "relabel.csv", [changed])), "train", FAKE)
    (w,) = fs.eval("train")["warnings"]
    assert w.startswith("96 of the 130 rows scored were used to fit classifier 'clf'")
    # a row labelled after training, before others: which rows were fitted cannot be told, and the warning says so
    rows = train_rows(60)
    unlabelled = [{**r, "label": "" if i == 2 else r["label"]} for i, r in enumerate(rows)]
    fs.ingest(str(write_csv(tmp_path / "mix.csv", unlabelled)), "mix", FAKE)
    fs.train("mix", FAKE, name="mix", plots=False)
    (w,) = fs.eval("mix", "mix")["warnings"]
    assert w.startswith("47 of the 59 rows scored were used to fit classifier 'mix'")
    fs.ingest(str(write_csv(tmp_path / "mix2.csv", rows[2:3])), "mix", FAKE)
    (w,) = fs.eval("mix", "mix")["warnings"]
    assert "'mix' was fitted on 47 rows of dataset 'mix', which has changed since" in w and "of the 60 rows" in w


# ---------------------------------------------------------------- which space


def test_similar_without_a_model_uses_the_stores_only_space_and_says_so(st: Path) -> None:
    """Regression: a store whose only space is a py: plugin answered "no vectors for model 'minilm'"."""
    r = fs_cli("similar", train_rows(5)[4]["tweet"], "-k", "2", "--store", st)
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0].split()[:3] == ["1", "1.0000", "train:5"]
    assert "note: no model given: used the store's only space, " in r.stderr and f"({FAKE}, tweet-v1" in r.stderr
    fs = FeatureStore(st)  # the library (and so the server) the same way
    res = fs.similar("hello", k=1)
    assert res.model == FAKE and res.note is not None and "only space" in res.note
    assert fs.vector("train", "5")[0].model == FAKE and fs.space().model == FAKE
    fs.warm()


def test_several_spaces_without_a_model_keep_the_default_and_list_the_spaces(st: Path, tmp_path: Path) -> None:
    r = fs_cli("ingest", write_csv(tmp_path / "o.csv", train_rows(10)), "-d", "x", "-m", OTHER, "--store", st)
    assert r.exit_code == 0, r.output
    line = error_line(fs_cli("similar", "hello", "--store", st))
    assert "no --model given, and store" in line and "has 2 spaces, none of them the default model 'minilm'" in line
    assert f"({FAKE}, tweet-v1, float32, 160 vectors)" in line and f"({OTHER}, tweet-v1" in line
    assert "fix: pick one with --model" in line
    with pytest.raises(SpaceError, match="no model given"):
        FeatureStore(st).similar("hello")
    r = fs_cli("similar", "hello", "-k", "1", "-m", OTHER, "--store", st)
    assert r.exit_code == 0 and "note:" not in r.output  # a named model needs no note


# ---------------------------------------------------------------- search knobs


def test_a_knob_the_index_does_not_take_is_refused_naming_the_one_it_takes(st: Path) -> None:
    line = error_line(fs_cli("similar", "hello", "-m", FAKE, "--ef", "10", "--store", st))
    assert "--ef tunes an HNSW index, but the index of this space is flat (exact)" in line
    assert "'fs index build --kind hnsw'" in line
    assert fs_cli("index", "build", "-m", FAKE, "--kind", "ivf", "--nlist", "2", "--store", st).exit_code == 0
    line = error_line(fs_cli("similar", "hello", "-m", FAKE, "--ef", "10", "--store", st))
    assert "the index of this space is IVF" in line and "fix: tune it with --nprobe" in line
    assert fs_cli("similar", "hello", "-m", FAKE, "--nprobe", "2", "--store", st).exit_code == 0
    line = error_line(fs_cli("similar", "hello", "-m", FAKE, "--nprobe", "2", "--exact", "--store", st))
    assert "--exact scans every vector: --nprobe would be ignored" in line
    assert fs_cli("index", "build", "-m", FAKE, "--kind", "hnsw", "--store", st).exit_code == 0
    line = error_line(fs_cli("similar", "hello", "-m", FAKE, "--nprobe", "2", "--store", st))
    assert "--nprobe tunes an IVF or IVF-PQ index, but the index of this space is HNSW" in line
    assert "fix: tune it with --ef" in line
    assert fs_cli("similar", "hello", "-m", FAKE, "--ef", "20", "--store", st).exit_code == 0
