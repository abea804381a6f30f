"""TensorFlow's import in ``embedders.tf_runtime``: its C++ log lines hidden unless FS_DEBUG=1 or the user set
TF_CPP_MIN_LOG_LEVEL, everything else written back. A stand-in ``tensorflow`` module records the environment its
import sees and writes what TensorFlow 2.21 writes to file descriptor 2; the real TensorFlow is in
tests/test_elmo.py (a fresh process, so slow)."""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from collections.abc import Iterator

import pytest

from featurestore.embedders import tf_runtime
from featurestore.embedders.tf_runtime import TF_IMPORT_ENV, tensorflow, without_cpp_logs

#: what TensorFlow 2.21 (tensorflow and tensorflow-cpu wheels, no GPU) wrote to stderr on an ELMo embed, shortened
TF_LINES = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    b"I0000 00:00:1796674913.025749    9022 port.cc:153] oneDNN custom operations are on. You may see ...\n",
    b"I0000 00:00:1796674913.026968    9022 cudart_stub.cc:31] Could not find cuda drivers on your machine.\n",
    b"I0000 00:00:1796674922.886686    9951 cpu_feature_guard.cc:227] This TensorFlow binary is optimized ...\n",
    b"To enable the following instructions: AVX2 AVX512F AVX512_VNNI FMA, in other operations, rebuild TensorFlow "
    b"with the appropriate compiler flags.\n",
    b"E0000 00:00:1796674931.476163    9951 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n",
    b"W0000 00:00:1796674931.476163    9951 some_file.cc:7] a warning\n",
    b"2020-03-18 08:16:55.455184: E tensorflow/stream_executor/cuda/cuda_driver.cc:351] failed call to cuInit\n",
]
#: lines of any other form are written back, as they were
OTHER_LINES = [
    b"/site-packages/tf_keras/__init__.py:3: DeprecationWarning: a Python warning\n",
    b"  import imp\n",
    b"WARNING:tensorflow:a Python log record\n",
    b"E0000 is not a log line without its source file\n",
    b"a last line without a newline",
]


def test_without_cpp_logs_keeps_every_other_line() -> None:
    mixed = [TF_LINES[0], OTHER_LINES[0], *TF_LINES[1:5], OTHER_LINES[1], OTHER_LINES[2], *TF_LINES[5:]]
    assert without_cpp_logs(b"".join([*mixed, *OTHER_LINES[3:]])) == b"".join(OTHER_LINES)
    assert without_cpp_logs(b"".join(TF_LINES)) == b""


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str | None]]:
    """``import tensorflow`` runs a stand-in: it records the environment and writes TF_LINES + OTHER_LINES to fd 2."""
    seen: dict[str, str | None] = {}

    class StandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path, target=None):  # noqa: ANN001 - the finder protocol
            return importlib.util.spec_from_loader(name, self) if name == "tensorflow" else None

        def create_module(self, spec):  # noqa: ANN001
            return None

        def exec_module(self, module) -> None:  # noqa: ANN001
            seen.update({k: os.environ.get(k) for k in TF_IMPORT_ENV})
            for line in [*TF_LINES[:3], OTHER_LINES[0], *TF_LINES[3:], *OTHER_LINES[1:]]:
                os.write(2, line)  # as C++ writes: below Python's sys.stderr

    real = sys.modules.pop("tensorflow", None)  # the real TensorFlow, if an earlier test imported it
    monkeypatch.setattr(sys, "meta_path", [StandIn(), *sys.meta_path])
    for k in (*TF_IMPORT_ENV, "FS_DEBUG"):
        monkeypatch.delenv(k, raising=False)
    try:
        yield seen
    finally:
        sys.modules.pop("tensorflow", None)
        if real is not None:
            sys.modules["tensorflow"] = real


def test_cpp_logs_are_hidden_on_import(stand_in: dict[str, str | None], capfd: pytest.CaptureFixture[str]) -> None:
    sys.stderr.write("before\n")  # Python's own stderr, buffered before the import: it comes out first
    tensorflow()
    assert stand_in == {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    assert not set(TF_IMPORT_ENV) & set(os.environ)  # for the import only
    out, err = capfd.readouterr()
    assert out == "" and err == "before\n" + b"".join(OTHER_LINES).decode()
    os.write(2, b"after\n")  # fd 2 is stderr again
    assert capfd.readouterr().err == "after\n"


@pytest.mark.parametrize("setting", [{"FS_DEBUG": "1"}, {"TF_CPP_MIN_LOG_LEVEL": "0"}, {"TF_CPP_MIN_LOG_LEVEL": "3"}])
def test_fs_debug_or_the_users_level_shows_what_tensorflow_prints(
    setting: dict[str, str],
    stand_in: dict[str, str | None],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    for k, v in setting.items():
        monkeypatch.setenv(k, v)
    tensorflow()
    assert stand_in == {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": setting.get("TF_CPP_MIN_LOG_LEVEL")}
    err = capfd.readouterr().err.encode()
    assert err == b"".join([*TF_LINES[:3], OTHER_LINES[0], *TF_LINES[3:], *OTHER_LINES[1:]])
    assert os.environ.get("TF_CPP_MIN_LOG_LEVEL") == setting.get("TF_CPP_MIN_LOG_LEVEL")


def test_a_failed_import_still_writes_back_and_restores_stderr(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    class Broken(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path, target=None):  # noqa: ANN001
            return importlib.util.spec_from_loader(name, self) if name == "tensorflow" else None

        def create_module(self, spec):  # noqa: ANN001
            return None

        def exec_module(self, module) -> None:  # noqa: ANN001
            os.write(2, TF_LINES[1] + b"libtensorflow_framework.so.2: cannot open shared object file\n")
            raise ImportError("libtensorflow_framework.so.2: cannot open shared object file")

    real = sys.modules.pop("tensorflow", None)
    monkeypatch.setattr(sys, "meta_path", [Broken(), *sys.meta_path])
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.delenv("FS_DEBUG", raising=False)
    try:
        with pytest.raises(ImportError, match="cannot open shared object file"):
            tensorflow()
    finally:
        sys.modules.pop("tensorflow", None)
        if real is not None:
            sys.modules["tensorflow"] = real
    assert capfd.readouterr().err == "libtensorflow_framework.so.2: cannot open shared object file\n"
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


def test_debug_is_fs_debug_1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FS_DEBUG", "1")
    assert tf_runtime.debug()
    monkeypatch.setenv("FS_DEBUG", "0")
    assert not tf_runtime.debug()
