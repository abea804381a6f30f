"""The ELMo release catalogue (``embedders.releases``), ``fs models``, the registry's ``py:`` plugins
and the typed embedder fingerprint, with the golden space ids that users' stores are keyed by.

Downloads are served by a local HTTP server on 127.0.0.1; the real hosts are unreachable here,
which is exactly what the offline tests rely on.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import json
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cli.models import app
from featurestore.embedders import Embedder, Fingerprint, known_models, load_embedder, releases
from featurestore.embedders.hub import HubEmbedder
from featurestore.errors import ModelError
from featurestore.storage.keys import space_fields, space_id
from tests.conftest import run_python
from tests.fakes import BagOfWordsEmbedder, CountingEmbedder, other_embedder
from tests.integrity_fakes import LinearEmbedder, SlowHashEmbedder

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


def local_release(monkeypatch: pytest.MonkeyPatch, base: str, **published: str | None) -> releases.Release:
    release = dataclasses.replace(
        releases.RELEASES["elmo-small"],
        name="elmo-test",
        options_url=f"{base}/options.json",
        weights_url=f"{base}/weights.hdf5",
        **published,
    )
    monkeypatch.setitem(releases.RELEASES, "elmo-test", release)
    return release


def fake_pulled(folder: Path, name: str = "elmo-small") -> Path:
    """Simulate a pulled release: the two files and the sha256 record pull writes."""
    d = folder / name
    d.mkdir(parents=True)
    (d / "options.json").write_bytes(OPTIONS)
    (d / "weights.hdf5").write_bytes(WEIGHTS)
    (d / "sha256.json").write_text(
        json.dumps({"options.json": {"sha256": sha(OPTIONS)}, "weights.hdf5": {"sha256": sha(WEIGHTS)}})
    )
    return d


def test_catalogue_matches_allennlp_table() -> None:
    names = ["elmo-tiny", "elmo-small", "elmo-medium", "elmo-original", "elmo-original-5.5b"]
    assert list(releases.RELEASES) == names
    assert [r.dim for r in releases.RELEASES.values()] == [32, 256, 512, 1024, 1024]
    published = [r for r in releases.RELEASES.values() if not r.shipped]
    assert [r.name for r in published] == names[1:]
    original = releases.RELEASES["elmo-original"]
    assert original.weights_url == (
        "https://s3-us-west-2.amazonaws.com/allennlp/models/elmo/2x4096_512_2048cnn_2xhighway/"
        "elmo_2x4096_512_2048cnn_2xhighway_weights.hdf5"
    )
    assert releases.RELEASES["elmo-original-5.5b"].options_url.endswith(
        "2x4096_512_2048cnn_2xhighway_5.5B/elmo_2x4096_512_2048cnn_2xhighway_5.5B_options.json"
    )
    assert all(r.weights_sha256 is None for r in published)  # AllenNLP publishes none
    assert set(releases.RELEASES) <= set(known_models())


def test_models_dir_default_and_env(monkeypatch: pytest.MonkeyPatch, models_dir: Path) -> None:
    assert releases.models_dir() == models_dir
    monkeypatch.delenv("FS_MODELS_DIR")
    assert releases.models_dir() == Path.home() / ".cache" / "featurestore" / "models"


def test_release_path(models_dir: Path) -> None:
    with pytest.raises(ModelError) as err:
        releases.release_path("elmo-small")
    assert str(err.value) == (
        "model elmo-small is not downloaded; run: fs models pull elmo-small "
        "(or --model elmo:PATH for a local options+weights pair)"
    )
    with pytest.raises(ModelError, match="unknown model release 'elmo-huge'; known releases: elmo-tiny, elmo-small"):
        releases.release_path("elmo-huge")
    folder = fake_pulled(models_dir)
    assert releases.release_path("elmo-small") == folder


def test_pull_records_and_verify_detects_corruption(
    monkeypatch: pytest.MonkeyPatch, server: str, models_dir: Path
) -> None:
    local_release(monkeypatch, server)
    calls: list[tuple[str, int, int | None]] = []
    folder = releases.pull("elmo-test", progress=lambda *a: calls.append(a))
    assert folder == models_dir / "elmo-test" == releases.release_path("elmo-test")
    assert (folder / "weights.hdf5").read_bytes() == WEIGHTS
    assert calls[-1] == ("weights.hdf5", len(WEIGHTS), len(WEIGHTS))
    record = json.loads((folder / "sha256.json").read_text())
    assert record["weights.hdf5"]["sha256"] == sha(WEIGHTS)
    assert sorted(p.name for p in folder.iterdir()) == ["options.json", "sha256.json", "weights.hdf5"]
    report = releases.verify("elmo-test")
    assert report.ok and [c.source for c in report.files] == ["recorded", "recorded"]
    assert releases.pull("elmo-test") == folder  # present: nothing downloaded again


def test_pull_rejects_wrong_published_checksum(monkeypatch: pytest.MonkeyPatch, server: str, models_dir: Path) -> None:
    local_release(monkeypatch, server, options_sha256=sha(OPTIONS), weights_sha256="0" * 64)
    with pytest.raises(ModelError, match="weights.hdf5 has sha256 .* expected 0000"):
        releases.pull("elmo-test")
    left = sorted(p.name for p in (models_dir / "elmo-test").iterdir())
    assert left == ["options.json"]  # no partial or unverified weights file


def test_pull_offline_fails_fast(models_dir: Path) -> None:
    start = time.monotonic()
    with pytest.raises(ModelError) as err:
        releases.pull("elmo-small")
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
    assert lines[1].split() == ["elmo-tiny", "32", "0.105M", "shipped", str(TINY)]
    assert lines[2].split() == ["elmo-small", "256", "13.6M", "no", "-"]
    assert lines[3].split() == ["elmo-medium", "512", "28M", "yes", str(models_dir / "elmo-medium")]
    assert len(lines) == 1 + len(releases.RELEASES)


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
    assert result.output.strip() == (
        "Error: unknown model release 'elmo-huge'; known releases: "
        "elmo-tiny, elmo-small, elmo-medium, elmo-original, elmo-original-5.5b"
    )


def test_cli_pull_local_server(
    runner: CliRunner, fs: typer.Typer, monkeypatch: pytest.MonkeyPatch, server: str, models_dir: Path
) -> None:
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
    result = runner.invoke(fs, ["models", "verify"])  # nothing pulled: the shipped model is checked
    assert result.exit_code == 0 and result.output.count("OK (shipped)") == 2, result.output
    assert result.output.startswith(f"elmo-tiny/options.json  {releases.ELMO_TINY.options_sha256}  OK (shipped)")
    result = runner.invoke(fs, ["models", "verify", "elmo-small"])
    assert result.exit_code == 1 and "Error: model elmo-small is not downloaded" in result.output
    (fake_pulled(models_dir) / "sha256.json").unlink()  # copied by hand: nothing to compare with
    result = runner.invoke(fs, ["models", "verify", "elmo-small"])
    assert result.exit_code == 0 and "UNKNOWN" in result.output


# -- elmo-tiny: the model that ships with the package (its TensorFlow run: tests/test_elmo_store.py) ---------------

TINY = Path(releases.__file__).resolve().parent / "data" / "elmo-tiny"


def test_elmo_tiny_ships_with_the_package(models_dir: Path) -> None:
    tiny = releases.RELEASES["elmo-tiny"]
    assert releases.is_downloaded("elmo-tiny") and releases.release_path("elmo-tiny") == TINY == tiny.shipped
    assert sorted(p.name for p in TINY.iterdir()) == ["LICENSE", "README.md", "options.json", "weights.hdf5"]
    assert "elmo-tiny" in known_models() and "elmo-tiny" in releases.downloaded()
    # the pinned checksums are the files' (and the allennlp 0.9.0 wheel's fixture's, tests/elmo_fixture.py)
    report = releases.verify("elmo-tiny")
    assert report.ok and [(c.file, c.source) for c in report.files] == [
        ("options.json", "shipped"),
        ("weights.hdf5", "shipped"),
    ]
    assert releases.pull("elmo-tiny") == releases.pull("elmo-tiny", force=True) == TINY  # nothing to download
    assert not models_dir.exists()  # and nothing written to the models folder
    readme = (TINY / "README.md").read_text()
    for fact in ("not for quality", "allennlp 0.9.0", "bilm-tf", "Apache License, Version 2.0", "NOTICE"):
        assert fact.lower() in readme.lower(), fact
    assert tiny.options_sha256 in readme and tiny.weights_sha256 in readme
    assert (TINY / "LICENSE").read_text().split()[:3] == ["Apache", "License", "Version"]


def test_elmo_tiny_is_package_data() -> None:
    """A non-editable install carries the folder: every file in it matches the package-data globs."""
    import fnmatch

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["featurestore.embedders"]
    package = TINY.parents[1]
    for f in TINY.iterdir():
        assert any(fnmatch.fnmatch(f.relative_to(package).as_posix(), g) for g in globs), f


def test_shipped_release_without_its_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(
        releases.RELEASES, "elmo-tiny", dataclasses.replace(releases.ELMO_TINY, shipped=tmp_path / "gone")
    )
    assert not releases.is_downloaded("elmo-tiny") and "elmo-tiny" not in releases.downloaded()
    with pytest.raises(ModelError, match=r"should ship with featurestore but .*gone lacks options.json.*reinstall"):
        releases.release_path("elmo-tiny")


def test_cli_pull_and_list_elmo_tiny(runner: CliRunner, fs: typer.Typer, models_dir: Path) -> None:
    result = runner.invoke(fs, ["models", "pull", "elmo-tiny"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"elmo-tiny is in {TINY} (it ships with featurestore: nothing to download)"
    listed = runner.invoke(fs, ["models", "list"]).output.splitlines()
    assert listed[1].split() == ["elmo-tiny", "32", "0.105M", "shipped", str(TINY)]


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


# -- py: plugins --------------------------------------------------------------------------------

PLUGIN = """
import numpy as np
from featurestore.embedders import Embedder, Fingerprint


class Good(Embedder):
    dim = 4

    @property
    def fingerprint(self):
        return Fingerprint(model="plug", weights_sha256="a" * 64, output="default", pooling="none")

    def embed_batch(self, texts):
        return np.ones((len(texts), 4), np.float32)


class DictFingerprint(Good):
    @property
    def fingerprint(self):
        return {"model": "plug", "output": "default", "pooling": "none"}


def needs_an_argument(x):
    return Good()


def raises():
    raise RuntimeError("no GPU\\nsecond line")


def returns_text():
    return "not an embedder"


NOT_CALLABLE = 3
"""


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], str]:
    """Writes PLUGIN as a fresh module in the current directory; returns ``py:MODULE:ATTR`` specs."""
    name = f"fs_plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(PLUGIN)
    (tmp_path / f"{name}_broken.py").write_text("raise ValueError('broken at import')\n")
    (tmp_path / f"{name}_syntax.py").write_text("def (:\n")
    monkeypatch.chdir(tmp_path)
    for mod in (name, f"{name}_broken", f"{name}_syntax"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    yield lambda attr, module="": f"py:{name}{module}:{attr}"
    for mod in (name, f"{name}_broken", f"{name}_syntax"):
        sys.modules.pop(mod, None)


def test_plugin_loads_from_the_current_directory_and_leaves_sys_path_alone(plugin: Callable[..., str]) -> None:
    before = list(sys.path)
    assert str(Path.cwd()) not in before
    emb = load_embedder(plugin("Good"))
    assert isinstance(emb, Embedder) and emb.embed(["a b"]).shape == (1, 4)
    assert sys.path == before


@pytest.mark.parametrize(
    "attr, module, expected",
    [
        ("needs_an_argument", "", "calling fs_plugin_*.needs_an_argument() raised TypeError"),
        ("raises", "", "calling fs_plugin_*.raises() raised RuntimeError: no GPU second line"),
        ("returns_text", "", "returned str, not a featurestore Embedder"),
        ("NOT_CALLABLE", "", "NOT_CALLABLE is not callable (type int)"),
        ("Missing", "", "has no attribute 'Missing'"),
        ("X", "_broken", "importing 'fs_plugin_*_broken' failed (ValueError: broken at import)"),
        ("X", "_syntax", "importing 'fs_plugin_*_syntax' failed (SyntaxError"),
        ("DictFingerprint", "", "fingerprint as a plain dict that lacks 'weights_sha256'"),
    ],
)
def test_every_plugin_failure_is_one_model_error_line(
    plugin: Callable[..., str], attr: str, module: str, expected: str
) -> None:
    before = list(sys.path)
    with pytest.raises(ModelError) as err:
        load_embedder(plugin(attr, module))
    msg = str(err.value)
    assert "\n" not in msg and "fix:" in msg and msg.startswith("cannot load embedder 'py:fs_plugin_")
    head, tail = expected.split("*", 1) if "*" in expected else (expected, "")
    assert head in msg and tail in msg[msg.index(head) :]
    assert sys.path == before


def test_os_path_as_a_plugin_is_a_model_error() -> None:
    with pytest.raises(ModelError, match=r"os\.path is not callable \(type module\); fix:"):
        load_embedder("py:os:path")


def test_cli_reports_a_bad_plugin_in_one_line(runner: CliRunner, fs: typer.Typer, tmp_path: Path) -> None:
    pytest.importorskip("featurestore.embedders.elmo_export")
    result = runner.invoke(fs, ["models", "export", "--model", "py:os:path", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot load embedder 'py:os:path'")
    assert len(result.output.strip().splitlines()) == 1


# -- the typed fingerprint ----------------------------------------------------------------------

FP = dict(model="m", weights_sha256="ab" * 32, output="default", pooling="mean")


def test_fingerprint_reads_as_the_dict_it_hashes() -> None:
    fp = Fingerprint(**FP, extra={"dtype": "float32", "layers": [1, 2]})
    assert dict(fp) == fp.as_dict() == {**FP, "dtype": "float32", "layers": [1, 2]}
    assert len(fp) == 6 and fp["pooling"] == "mean" and "dtype" in fp and fp.get("nope") is None
    assert fp == {**FP, "dtype": "float32", "layers": [1, 2]} == Fingerprint.from_dict(dict(fp))
    assert fp != Fingerprint(**{**FP, "output": "top"}, extra={"dtype": "float32", "layers": [1, 2]})
    renamed = Fingerprint(**FP, key_names={"model": "handle", "weights_sha256": "module_sha256"})
    assert dict(renamed) == {"handle": "m", "module_sha256": "ab" * 32, "output": "default", "pooling": "mean"}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model": ""}, "field 'model' is missing or empty"),
        ({"output": "  "}, "field 'output' is missing or empty"),
        ({"pooling": None}, "field 'pooling' is missing or empty"),
        ({"weights_sha256": "unknown"}, "'weights_sha256' must be 64 lowercase hex"),
        ({"weights_sha256": "AB" * 32}, "'weights_sha256' must be 64 lowercase hex"),
        ({"extra": {"model": "again"}}, "key 'model' is given twice"),
        ({"extra": {"when": object()}}, "not JSON-able"),
        ({"extra": {"x": float("nan")}}, "not JSON-able"),
        ({"key_names": {"dtype": "d"}}, "renames dtype"),
        ({"key_names": {"model": "output"}}, "key 'output' is given twice"),
    ],
)
def test_fingerprint_refuses_missing_and_malformed_fields(change: dict, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        Fingerprint(**{**FP, **change})


def test_fingerprint_lacking_a_required_field_names_it() -> None:
    with pytest.raises(ModelError, match="field 'weights_sha256' is missing"):
        Fingerprint(model="m", output="o", pooling="p")
    with pytest.raises(ModelError, match="lacks 'weights_sha256'"):
        Fingerprint.from_dict({"model": "m", "output": "o", "pooling": "p"})


def test_an_embedder_handing_out_a_dict_is_refused() -> None:
    class Free(CountingEmbedder):
        @property
        def fingerprint(self):  # what every embedder returned before Fingerprint existed
            return {"model": "free", "output": "default", "pooling": "mean"}

    with pytest.raises(ModelError, match="plain dict that lacks 'weights_sha256'.*fix:"):
        _ = Free().fingerprint


# Space ids of the first release, computed before Fingerprint existed: users' stores are keyed by
# them, so a change here orphans every stored vector. MiniLM's and the tiny ELMo's are checked in
# test_minilm.py and test_elmo.py, where those models load.
GOLDEN_SPACE_IDS = {
    "counting": "818f08fdb2dfae4b",
    "other": "f700928b477cf2a3",
    "bag-of-words": "16e75c16038b3796",
    "slow-hash": "d94097ddd61751c5",
    "linear": "093b6f95fe1f23c8",
}


def raw_space_id(embedder: Embedder) -> str:
    return space_id(space_fields(dict(embedder.fingerprint), {"name": "raw-v1"}, "float32"))


@pytest.mark.parametrize(
    "name, make",
    [
        ("counting", CountingEmbedder),
        ("other", other_embedder),
        ("bag-of-words", BagOfWordsEmbedder),
        ("slow-hash", SlowHashEmbedder),
        ("linear", LinearEmbedder),
    ],
)
def test_fake_embedders_keep_their_space_ids(name: str, make: Callable[[], Embedder]) -> None:
    assert isinstance(make().fingerprint, Fingerprint)
    assert raw_space_id(make()) == GOLDEN_SPACE_IDS[name]


def _hub_without_tf(mode: str, output: str, keys: tuple[str, ...]) -> HubEmbedder:
    """A HubEmbedder's state, set by hand: its fingerprint reads only these attributes."""
    emb = object.__new__(HubEmbedder)
    emb.handle, emb.module_path, emb._sha256 = "https://tfhub.dev/google/elmo/3", "/models/elmo3", "ab" * 32
    emb.signature, emb._mode, emb.output, emb._keys = "default", mode, output, keys
    return emb


@pytest.mark.parametrize(
    "mode, output, keys, golden",
    [
        ("tokens", "elmo", ("elmo",), "de28da9b2fa29833"),
        ("tokens", "all", ("word_emb", "lstm_outputs1", "lstm_outputs2"), "4605a3b848826264"),
        ("vector", "elmo", ("default",), "69e9f2ba9fdd92b5"),
    ],
)
def test_hub_embedder_keeps_its_space_ids(mode: str, output: str, keys: tuple[str, ...], golden: str) -> None:
    emb = _hub_without_tf(mode, output, keys)
    assert dict(emb.fingerprint) == {
        "embedder": "tfhub",
        "handle": "https://tfhub.dev/google/elmo/3",
        "module_path": "/models/elmo3",
        "module_sha256": "ab" * 32,
        "signature": "default",
        "outputs": list(keys),
        "output": output if mode == "tokens" else "module",
        "pooling": "mean" if mode == "tokens" else "module",
        "dtype": "float32",
    }
    assert raw_space_id(emb) == golden


# -- the import graph ---------------------------------------------------------------------------


def test_registry_and_release_catalogue_import_without_heavy_frameworks() -> None:
    code = textwrap.dedent("""
        import sys
        import featurestore.embedders, featurestore.embedders.releases, featurestore.embedders.hub
        import featurestore.embedders.elmo, featurestore.embedders.elmo_export, cli.models
        heavy = sorted(m for m in ("tensorflow", "tensorflow_hub", "torch", "transformers", "h5py") if m in sys.modules)
        assert not heavy, heavy
    """)
    run_python(code, timeout=120)
