"""The fine-tuning engine (featurestore/learning/tune.py) on a tiny model and ~40 tweets.

The base is all-MiniLM-L6-v2 cut to its first layer (its real tokenizer, embeddings and first block: the same
code paths, a sixth of the arithmetic), so that each run takes a second or two on a CPU.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from featurestore.embedders.minilm import MiniLMEmbedder
from featurestore.errors import UsageError
from featurestore.learning.tune import METHODS, TUNE_VERSION, TuneParams, fine_tune

TEXTS = [
    *(f"love my new phone {i}, the camera is great #happy" for i in range(10)),
    *(f"this phone is broken again {i}, thanks for nothing #fail" for i in range(10)),
    *(f"battery life on day {i} is amazing, best buy ever" for i in range(10)),
    *(f"support kept me waiting {i} hours, never buying again" for i in range(10)),
]
LABELS = ["1"] * 10 + ["0"] * 10 + ["1"] * 10 + ["0"] * 10
PROBES = ["great camera on this phone", "worst support ever", "just a tweet about nothing", "#iphone"]
MODEL_FILES = {
    "1_Pooling",
    "2_Normalize",
    "config.json",
    "config_sentence_transformers.json",
    "model.safetensors",
    "modules.json",
    "sentence_bert_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
}


def tiny(method: str = "head", **changes: object) -> TuneParams:
    fields: dict = {"method": method, "epochs": 1.0, "batch_size": 16, "max_seq_length": 32, "seed": 7, **changes}
    return TuneParams(**fields)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2 with one transformer layer, saved as a sentence-transformers folder."""
    from sentence_transformers import SentenceTransformer

    from featurestore.embedders.minilm import _model_dir

    model = SentenceTransformer(str(_model_dir()), device="cpu", local_files_only=True)
    bert = model[0].auto_model
    bert.encoder.layer = bert.encoder.layer[:1]
    bert.config.num_hidden_layers = 1
    path = tmp_path_factory.mktemp("base")
    model.save(str(path), create_model_card=False)
    return path


def run(base: Path, tmp_path: Path, name: str, params: TuneParams, labels: list[str] = LABELS, **kw: object) -> Path:
    out = tmp_path / name
    out.mkdir()
    fine_tune(base, TEXTS, labels, out, params, threads=1, **kw)  # type: ignore[arg-type]
    return out


def weights(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path / "model.safetensors"))


def vectors(path: Path) -> np.ndarray:
    return MiniLMEmbedder(model_dir=path).embed(PROBES)


@pytest.fixture(scope="module")
def head_run(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run(base, tmp_path_factory.mktemp("head"), "a", tiny())


def test_same_seed_and_rows_give_the_same_vectors(base: Path, head_run: Path, tmp_path: Path) -> None:
    again = run(base, tmp_path, "b", tiny())
    np.testing.assert_allclose(vectors(again), vectors(head_run), atol=1e-4)
    # ... and the tuning moved them: the tuned model is not the base
    assert np.abs(vectors(head_run) - vectors(base)).max() > 1e-3


def test_contrastive_is_reproducible_and_tunes(base: Path, tmp_path: Path) -> None:
    first = run(base, tmp_path, "a", tiny("contrastive"))
    second = run(base, tmp_path, "b", tiny("contrastive"))
    np.testing.assert_allclose(vectors(second), vectors(first), atol=1e-4)
    assert np.abs(vectors(first) - vectors(base)).max() > 1e-3


@pytest.mark.parametrize("change", ["seed", "label"])
def test_a_changed_seed_or_label_changes_the_weights(base: Path, head_run: Path, tmp_path: Path, change: str) -> None:
    if change == "seed":
        other = run(base, tmp_path, "b", tiny(seed=8))
    else:
        flipped = list(LABELS)
        flipped[0] = "0"
        other = run(base, tmp_path, "b", tiny(), labels=flipped)
    a, b = weights(head_run), weights(other)
    assert a.keys() == b.keys()
    moved = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert moved > 1e-6


def test_saved_folder_matches_sentence_transformers(head_run: Path) -> None:
    from sentence_transformers import SentenceTransformer

    assert {p.name for p in head_run.iterdir()} == MODEL_FILES  # no head, no checkpoint, no README
    assert all(w.dtype == np.float32 for w in weights(head_run).values())
    st = SentenceTransformer(str(head_run), device="cpu", local_files_only=True)
    assert st.max_seq_length == 256  # the base's: the training cut (32) is not saved
    expected = st.encode(PROBES, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(vectors(head_run), expected, atol=1e-5)


def test_onnx_export_of_a_tuned_model_gives_its_vectors(
    head_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from featurestore.embedders.onnx_minilm import MiniLMOnnxEmbedder

    monkeypatch.setenv("FS_CACHE_DIR", str(tmp_path))  # the export is keyed by the tuned weights' sha256
    onnx = MiniLMOnnxEmbedder(model_dir=head_run, threads=1)
    np.testing.assert_allclose(onnx.embed(PROBES), vectors(head_run), atol=1e-5)
    assert onnx.exports == 1


def test_time_limit_stops_early_and_saves_a_loadable_model(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the trainer's output folder goes
    calls: list[tuple[float, int]] = []
    out = tmp_path / "out"
    out.mkdir()
    report = fine_tune(
        base,
        TEXTS,
        LABELS,
        out,
        tiny(epochs=3.0),
        time_limit=1e-6,
        progress=lambda a, t: calls.append((a, t)),
        threads=1,
    )
    assert report.stopped_early
    assert report.steps == 1 < report.steps_planned == 9  # 40 rows at 16 a batch: 3 steps an epoch
    assert calls == [(1, 9)]
    assert np.isfinite(report.loss_first)
    assert {p.name for p in out.iterdir()} == MODEL_FILES
    assert vectors(out).shape == (len(PROBES), 384)
    assert list(scratch.iterdir()) == []  # the trainer's folder is gone


def test_a_full_run_reports_every_step(base: Path, tmp_path: Path) -> None:
    calls: list[tuple[float, int]] = []
    out = tmp_path / "out"
    out.mkdir()
    report = fine_tune(
        base, TEXTS, LABELS, out, tiny(epochs=0.5), progress=lambda a, t: calls.append((a, t)), threads=1
    )
    assert (report.steps, report.steps_planned, report.stopped_early) == (2, 2, False)
    assert calls == [(1, 2), (1, 2)]
    assert report.classes == ["0", "1"]


@pytest.mark.parametrize(
    ("params", "labels", "words"),
    [
        (tiny("setfit"), LABELS, ["'setfit'", "contrastive, head"]),
        (tiny(batch_size=1), LABELS, ["batch_size", "1"]),
        (tiny(epochs=0), LABELS, ["epochs", "0"]),
        (tiny(), ["1"] * 40, ["2 classes", "'1'"]),
        (tiny("contrastive"), ["0"] * 39 + ["1"], ["'1'", "one row", "method='head'"]),
        (tiny(), LABELS[:-1], ["40 texts but 39 labels"]),
    ],
)
def test_bad_params_are_refused_with_a_fix(
    base: Path, tmp_path: Path, params: TuneParams, labels: list[str], words: list[str]
) -> None:
    with pytest.raises(UsageError) as err:
        fine_tune(base, TEXTS, labels, tmp_path, params)
    message = str(err.value)
    assert "fix" in message
    for word in words:
        assert word in message
    assert list(tmp_path.iterdir()) == []


def test_out_dir_must_be_empty(base: Path, tmp_path: Path) -> None:
    (tmp_path / "x").write_text("")
    with pytest.raises(UsageError, match="empty"):
        fine_tune(base, TEXTS, LABELS, tmp_path, tiny())


def test_params_are_json_for_the_fingerprint() -> None:
    import json

    assert set(METHODS) == {"contrastive", "head"}
    assert TUNE_VERSION
    fields = TuneParams().as_dict()
    assert json.loads(json.dumps(fields)) == fields
    assert TuneParams(seed=1).as_dict() != fields
