"""The tiny ELMo and bilm-tf's reference outputs, as shipped inside the allennlp 0.9.0 wheel.

Fetched once with ``pip download`` (allennlp is not installed; only the fixture files are
unzipped) into ``<repo>/.cache/allennlp-0.9.0-elmo/``. A lock file serialises concurrent
pytest processes, and the folder appears by an atomic rename, so a reader never sees half.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from filelock import FileLock

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "allennlp-0.9.0-elmo"
WHEEL_PREFIX = "allennlp/tests/fixtures/elmo/"
FILES = (
    "options.json",
    "lm_weights.hdf5",
    "vocab_test.txt",
    "sentences.json",
    "elmo_token_embeddings.hdf5",
    "lm_embeddings_0.hdf5",
    "lm_embeddings_1.hdf5",
    "lm_embeddings_2.hdf5",
)


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FILES)


def elmo_fixture_dir() -> Path:
    """The folder holding the tiny ELMo fixture files; downloads them on first use."""
    if _complete(CACHE):
        return CACHE
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    # A second pytest process waits here, then finds the files.
    with FileLock(str(CACHE.parent / "allennlp-0.9.0-elmo.lock"), timeout=900):
        if _complete(CACHE):
            return CACHE
        with tempfile.TemporaryDirectory(dir=CACHE.parent) as tmp:
            tmp_path = Path(tmp)
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "allennlp==0.9.0",
                "-d",
                str(tmp_path),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            wheels = list(tmp_path.glob("allennlp-0.9.0-*.whl"))
            if proc.returncode != 0 or not wheels:
                raise RuntimeError(
                    "cannot fetch the tiny ELMo fixture: `pip download --no-deps allennlp==0.9.0` failed "
                    f"(exit {proc.returncode}): {proc.stderr.strip()[-500:]}; it needs PyPI access, or copy "
                    f"allennlp/tests/fixtures/elmo/* from that wheel into {CACHE}"
                )
            staging = tmp_path / "elmo"
            staging.mkdir()
            with zipfile.ZipFile(wheels[0]) as whl:
                for name in FILES:
                    with whl.open(WHEEL_PREFIX + name) as src, open(staging / name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
            if CACHE.exists():
                shutil.rmtree(CACHE)  # an incomplete copy left by an interrupted run
            os.replace(staging, CACHE)
    return CACHE


def tiny_release(folder: Path) -> Path:
    """The tiny ELMo laid out in ``folder`` as users have a release: options.json + one weights file."""
    src = elmo_fixture_dir()
    shutil.copy(src / "options.json", folder / "options.json")
    shutil.copy(src / "lm_weights.hdf5", folder / "weights.hdf5")
    return folder
