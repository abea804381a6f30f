"""The ELMo release catalogue, the models folder and ``fs models``.

Downloads are served by a local HTTP server on 127.0.0.1; the real hosts are unreachable here,
which is exactly what the offline tests rely on.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import json
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import typer
from typer.testing import CliRunner

from cli.models import app
from featurestore import models
from featurestore.embedders import known_models
from featurestore.errors import ModelError

OPTIONS = b'{"lstm": {"dim": 16, "projection_dim": 4}}\n'
WEIGHTS = b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 8


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "models"
    monkeypatch.setenv("FS_MODELS_DIR", str(folder))
    return folder


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def fs() -> typer.Typer:
    root = typer.Typer()
    root.add_typer(app, name="models")

    @root.callback()
    def main() -> None:
        """Root used to mount ``fs models`` as the lead will."""

    return root


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """Serve ``tmp_path/www`` on 127.0.0.1; yields the base URL."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "options.json").write_bytes(OPTIONS)
    (www / "weights.hdf5").write_bytes(WEIGHTS)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def local_release(monkeypatch: pytest.MonkeyPatch, base: str, **published: str | None) -> models.Release:
    release = dataclasses.replace(models.RELEASES["elmo-small"], name="elmo-test",
                                  options_url=f"{base}/options.json", weights_url=f"{base}/weights.hdf5",
                                  **published)
    monkeypatch.setitem(models.RELEASES, "elmo-test", release)
    return release


def fake_pulled(folder: Path, name: str = "elmo-small") -> Path:
    """Simulate a pulled release: the two files and the sha256 record pull writes."""
    d = folder / name
    d.mkdir(parents=True)
    (d / "options.json").write_bytes(OPTIONS)
    (d / "weights.hdf5").write_bytes(WEIGHTS)
    (d / "sha256.json").write_text(json.dumps({"options.json": {"sha256": sha(OPTIONS)},
                                               "weights.hdf5": {"sha256": sha(WEIGHTS)}}))
    return d


def test_catalogue_matches_allennlp_table() -> None:
    assert list(models.RELEASES) == ["elmo-small", "elmo-medium", "elmo-original", "elmo-original-5.5b"]
    assert [r.dim for r in models.RELEASES.values()] == [256, 512, 1024, 1024]
    original = models.RELEASES["elmo-original"]
    assert original.weights_url == (
        "https://s3-us-west-2.amazonaws.com/allennlp/models/elmo/2x4096_512_2048cnn_2xhighway/"
        "elmo_2x4096_512_2048cnn_2xhighway_weights.hdf5"
    )
    assert models.RELEASES["elmo-original-5.5b"].options_url.endswith(
        "2x4096_512_2048cnn_2xhighway_5.5B/elmo_2x4096_512_2048cnn_2xhighway_5.5B_options.json")
    assert all(r.weights_sha256 is None for r in models.RELEASES.values())  # AllenNLP publishes none
    assert set(models.RELEASES) <= set(known_models())


def test_models_dir_default_and_env(monkeypatch: pytest.MonkeyPatch, models_dir: Path) -> None:
    assert models.models_dir() == models_dir
    monkeypatch.delenv("FS_MODELS_DIR")
    assert models.models_dir() == Path.home() / ".cache" / "featurestore" / "models"


def test_release_path(models_dir: Path) -> None:
    with pytest.raises(ModelError) as err:
        models.release_path("elmo-small")
    assert str(err.value) == ("model elmo-small is not downloaded; run: fs models pull elmo-small "
                              "(or --model elmo:PATH for a local options+weights pair)")
    with pytest.raises(ModelError, match="unknown model release 'elmo-huge'; known releases: elmo-small"):
        models.release_path("elmo-huge")
    folder = fake_pulled(models_dir)
    assert models.release_path("elmo-small") == folder


def test_pull_records_and_verify_detects_corruption(
    monkeypatch: pytest.MonkeyPatch, server: str, models_dir: Path
) -> None:
    local_release(monkeypatch, server)
    calls: list[tuple[str, int, int | None]] = []
    folder = models.pull("elmo-test", progress=lambda *a: calls.append(a))
    assert folder == models_dir / "elmo-test" == models.release_path("elmo-test")
    assert (folder / "weights.hdf5").read_bytes() == WEIGHTS
    assert calls[-1] == ("weights.hdf5", len(WEIGHTS), len(WEIGHTS))
    record = json.loads((folder / "sha256.json").read_text())
    assert record["weights.hdf5"]["sha256"] == sha(WEIGHTS)
    assert sorted(p.name for p in folder.iterdir()) == ["options.json", "sha256.json", "weights.hdf5"]
    report = models.verify("elmo-test")
    assert report.ok and [c.source for c in report.files] == ["recorded", "recorded"]
    assert models.pull("elmo-test") == folder  # present: nothing downloaded again


def test_pull_rejects_wrong_published_checksum(monkeypatch: pytest.MonkeyPatch, server: str, models_dir: Path) -> None:
    local_release(monkeypatch, server, options_sha256=sha(OPTIONS), weights_sha256="0" * 64)
    with pytest.raises(ModelError, match="weights.hdf5 has sha256 .* expected 0000"):
        models.pull("elmo-test")
    left = sorted(p.name for p in (models_dir / "elmo-test").iterdir())
    assert left == ["options.json"]  # no partial or unverified weights file


def test_pull_offline_fails_fast(models_dir: Path) -> None:
    start = time.monotonic()
    with pytest.raises(ModelError) as err:
        models.pull("elmo-small")
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert "\n" not in msg and "s3-us-west-2.amazonaws.com" in msg and "could not be resolved" in msg
    assert f"{models_dir / 'elmo-small'}/" in msg and "--model elmo:PATH" in msg
    assert not models_dir.exists() or not any(models_dir.rglob("*"))


def test_cli_list(runner: CliRunner, fs: typer.Typer, models_dir: Path) -> None:
    fake_pulled(models_dir, "elmo-medium")
    result = runner.invoke(fs, ["models", "list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["NAME", "DIMS", "PARAMS", "DOWNLOADED", "PATH"]
    assert lines[1].split() == ["elmo-small", "256", "13.6M", "no", "-"]
    assert lines[2].split() == ["elmo-medium", "512", "28M", "yes", str(models_dir / "elmo-medium")]
    assert len(lines) == 1 + len(models.RELEASES)


def test_cli_pull_offline(runner: CliRunner, fs: typer.Typer, models_dir: Path) -> None:
    start = time.monotonic()
    result = runner.invoke(fs, ["models", "pull", "elmo-original"])
    assert time.monotonic() - start < 10
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot download elmo-original: host s3-us-west-2.amazonaws.com")
    assert len(result.output.strip().splitlines()) == 1
    assert not models_dir.exists() or not any(models_dir.rglob("*"))


def test_cli_pull_unknown_name(runner: CliRunner, fs: typer.Typer) -> None:
    result = runner.invoke(fs, ["models", "pull", "elmo-huge"])
    assert result.exit_code == 1
    assert result.output.strip() == ("Error: unknown model release 'elmo-huge'; known releases: "
                                     "elmo-small, elmo-medium, elmo-original, elmo-original-5.5b")


def test_cli_pull_local_server(runner: CliRunner, fs: typer.Typer, monkeypatch: pytest.MonkeyPatch,
                               server: str, models_dir: Path) -> None:
    local_release(monkeypatch, server)
    result = runner.invoke(fs, ["models", "pull", "elmo-test"])
    assert result.exit_code == 0, result.output
    assert f"elmo-test is in {models_dir / 'elmo-test'}" in result.output


def test_cli_verify_ok_then_corrupt(runner: CliRunner, fs: typer.Typer, models_dir: Path) -> None:
    folder = fake_pulled(models_dir)
    result = runner.invoke(fs, ["models", "verify", "elmo-small"])
    assert result.exit_code == 0, result.output
    assert f"elmo-small/weights.hdf5  {sha(WEIGHTS)}  OK (recorded)" in result.output

    data = bytearray(WEIGHTS)
    data[100] ^= 0xFF  # one flipped byte
    (folder / "weights.hdf5").write_bytes(bytes(data))
    result = runner.invoke(fs, ["models", "verify"])  # no name: every downloaded release
    assert result.exit_code == 1
    assert "elmo-small/options.json" in result.output and "OK (recorded)" in result.output
    assert f"elmo-small/weights.hdf5  {sha(bytes(data))}  MISMATCH: expected {sha(WEIGHTS)}" in result.output
    assert "Error: checksum mismatch in elmo-small" in result.output


def test_cli_verify_unrecorded_and_missing(runner: CliRunner, fs: typer.Typer, models_dir: Path) -> None:
    result = runner.invoke(fs, ["models", "verify"])
    assert result.exit_code == 0 and "No releases downloaded" in result.output
    result = runner.invoke(fs, ["models", "verify", "elmo-small"])
    assert result.exit_code == 1 and "Error: model elmo-small is not downloaded" in result.output
    (fake_pulled(models_dir) / "sha256.json").unlink()  # copied by hand: nothing to compare with
    result = runner.invoke(fs, ["models", "verify", "elmo-small"])
    assert result.exit_code == 0 and "UNKNOWN" in result.output


def test_cli_export_unknown_model(runner: CliRunner, fs: typer.Typer, tmp_path: Path) -> None:
    pytest.importorskip("featurestore.embedders.elmo_export")
    result = runner.invoke(fs, ["models", "export", "--model", "nope", str(tmp_path / "out")])
    assert result.exit_code == 1 and result.output.startswith("Error: unknown model 'nope'")


def test_every_command_and_option_has_help() -> None:
    import typer.main

    group = typer.main.get_command(app)
    assert group.help
    for name, command in group.commands.items():
        assert command.help, name
        for param in command.params:
            assert getattr(param, "help", None), f"{name} {param.name}"
