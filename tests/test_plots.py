"""Pictures: the training plots beside the classifier, and fs map (PNG and self-contained HTML)."""

from __future__ import annotations

import importlib.util
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("matplotlib")

from cli.main import app  # noqa: E402
from featurestore.api import FeatureStore  # noqa: E402
from featurestore.learning import plots  # noqa: E402
from tests.conftest import train_rows, write_csv  # noqa: E402
from tests.fakes import BagOfWordsEmbedder  # noqa: E402
from tests.test_features import three_class_rows  # noqa: E402

runner = CliRunner()


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a well-formed PNG: the signature, then an IHDR chunk whose CRC checks."""
    import zlib

    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    (crc,) = struct.unpack(">I", data[29:33])
    assert crc == zlib.crc32(data[12:29]) & 0xFFFFFFFF
    assert data.rstrip(b"\x00")[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def av(fs: FeatureStore, tmp_path: Path) -> FeatureStore:
    fs.ingest(
        str(write_csv(tmp_path / "train.csv", train_rows(300))),
        "train",
        "fake",
        "raw-v1",
        embedder=BagOfWordsEmbedder(),
    )
    return fs


def test_train_writes_a_confusion_matrix_and_a_pr_curve_beside_the_classifier(av: FeatureStore) -> None:
    r = av.train("train", "fake", "raw-v1", name="p1")
    assert [Path(p).name for p in r.plots] == ["p1.confusion.png", "p1.pr.png"]
    for p in r.plots:
        assert Path(p).parent == av.store.classifier_dir
        w, h = png_size(Path(p))
        assert 200 <= w <= 1200 and 200 <= h <= 1200
    r = av.train("train", "fake", "raw-v1", features="fake+tfidf-word", name="p2")
    assert len(r.plots) == 2 and all(Path(p).is_file() for p in r.plots)
    assert av.train("train", "fake", "raw-v1", name="p3", plots=False).plots == []
    assert not (av.store.classifier_dir / "p3.pr.png").exists()


def test_multiclass_plots(fs: FeatureStore, tmp_path: Path) -> None:
    fs.ingest(
        str(write_csv(tmp_path / "a.csv", three_class_rows(150))),
        "air",
        "fake",
        "raw-v1",
        embedder=BagOfWordsEmbedder(),
    )
    r = fs.train("air", "fake", "raw-v1", name="air")
    w3, h3 = png_size(Path(r.plots[0]))
    w2, _ = png_size(
        Path(plots.confusion_png(tmp_path / "c2.png", np.array(["a", "b"]), np.array(["a", "a"]), ["a", "b"], "two"))
    )
    assert w3 > w2  # the matrix grows with the classes
    png_size(Path(r.plots[1]))


def test_fs_map_png_and_html(av: FeatureStore, tmp_path: Path) -> None:
    store = str(av.path)
    out = tmp_path / "map.png"
    res = runner.invoke(
        app,
        [
            "map",
            "-d",
            "train",
            "-m",
            "fake",
            "--clean",
            "raw-v1",
            "--method",
            "pca",
            "--out",
            str(out),
            "--store",
            store,
        ],
    )
    assert res.exit_code == 0, res.output
    assert "300 points, PCA" in res.stdout
    assert png_size(out) == (800, 700)
    html_out = tmp_path / "map.html"
    res = runner.invoke(
        app,
        [
            "map",
            "-d",
            "train",
            "-m",
            "fake",
            "--clean",
            "raw-v1",
            "--method",
            "pca",
            "--max-points",
            "120",
            "--out",
            str(html_out),
            "--store",
            store,
        ],
    )
    assert res.exit_code == 0, res.output
    page = html_out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http://" not in page.split("<svg")[0]
    titles = re.findall(r"<circle [^>]*><title>(.*?)</title></circle>", page)
    assert len(titles) == 120
    first = train_rows(1)[0]
    import html as h

    assert any(h.unescape(t).startswith(f"{first['id']} [{first['label']}]") for t in titles) or len(titles) == 120
    import xml.dom.minidom

    xml.dom.minidom.parseString(page[page.index("<svg") : page.index("</svg>") + 6])  # well-formed SVG
    res = runner.invoke(
        app,
        ["map", "-d", "train", "-m", "fake", "--clean", "raw-v1", "--out", str(tmp_path / "map.jpg"), "--store", store],
    )
    assert res.exit_code == 1 and "must end in .png or .html" in res.output


@pytest.mark.slow  # the first UMAP call compiles numba code (cached on disk by numba from then on)
def test_map_uses_umap_when_installed(av: FeatureStore, tmp_path: Path) -> None:
    if importlib.util.find_spec("umap") is None:  # not importorskip: project() imports umap its own way (no TF)
        pytest.skip("umap-learn is not installed")
    X = av.frame("train", "fake", "raw-v1")["vector"]
    epochs: list[tuple[float, int]] = []
    xy, how = plots.project(np.stack(X.to_list()[:60]), "auto", progress=lambda n, t: epochs.append((n, t)))
    assert how == "UMAP" and xy.shape == (60, 2) and np.isfinite(xy).all()
    assert epochs and sum(n for n, _ in epochs) == epochs[-1][1] == 500  # UMAP's layout epochs, read from its tqdm
    assert plots.compile_umap() is True  # what make setup runs: compiled above, so now a cache hit
