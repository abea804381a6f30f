"""ELMo releases: the catalogue of published models, the local models folder, pull and verify.

Owns what ``fs models`` lists, downloads and checks (``featurestore.embedders.releases``; it was
``featurestore.models``); the native embedder that reads these files is ``embedders.elmo``.

A release is an AllenNLP/bilm ``options.json`` + ``weights.hdf5`` pair. ``pull`` downloads
both into ``<models_dir>/<name>/`` (temp file, checksum, atomic rename) and records their
sha256 in ``sha256.json`` so ``verify`` can later detect a corrupted or swapped file.
AllenNLP publishes no checksums for these files, so the recorded ones are the reference.

One release ships inside the package instead: ``elmo-tiny``, bilm-tf's test model from the
allennlp 0.9.0 wheel (``data/elmo-tiny/``, its README says where from and under which licence),
so that the ELMo commands can be tried offline. Nothing is downloaded for it, and ``verify``
checks its files against the checksums pinned here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from featurestore.embedders.checksums import file_sha256
from featurestore.embedders.network import unreachable_reason
from featurestore.errors import ModelError
from featurestore.storage.atomic import atomic_path, atomic_write_bytes

log = logging.getLogger(__name__)

#: files of a release, under these names, in ``<models_dir>/<name>/``
OPTIONS_FILE = "options.json"
WEIGHTS_FILE = "weights.hdf5"
RECORD_FILE = "sha256.json"
#: seconds a download may stall between two reads
READ_TIMEOUT_S = 60.0

#: ``(file name, bytes done, total bytes or None)``, called as a download advances
PullProgress = Callable[[str, int, "int | None"], None]

_S3 = "https://s3-us-west-2.amazonaws.com/allennlp/models/elmo"


@dataclass(frozen=True)
class Release:
    """One published ELMo model: its shape and where its two files are published."""

    name: str
    description: str
    #: length of an ELMo vector (2 x the LSTM projection size)
    dim: int
    #: parameters, in millions, as published
    params_m: float
    #: LSTM hidden size / projection size
    lstm: str
    highway_layers: int
    #: download addresses; None for a release that ships with the package
    options_url: str | None
    weights_url: str | None
    #: published (or, for a shipped release, pinned) sha256 of each file; None where AllenNLP publishes none
    options_sha256: str | None = None
    weights_sha256: str | None = None
    #: the folder inside this package holding both files, for a release that ships with it (nothing to download)
    shipped: Path | None = None

    def files(self) -> dict[str, tuple[str | None, str | None]]:
        """Local file name -> (download address or None, published sha256 or None)."""
        return {
            OPTIONS_FILE: (self.options_url, self.options_sha256),
            WEIGHTS_FILE: (self.weights_url, self.weights_sha256),
        }


def _release(name: str, stem: str, dim: int, params_m: float, lstm: str, highway: int, description: str) -> Release:
    base = f"{_S3}/{stem}/elmo_{stem}"
    return Release(name, description, dim, params_m, lstm, highway, f"{base}_options.json", f"{base}_weights.hdf5")


#: the package's own model files (package data, see pyproject.toml)
SHIPPED_DIR = Path(__file__).resolve().parent / "data"

#: for trying the commands offline, not for quality: the allennlp 0.9.0 wheel's copy of bilm-tf's test model
#: (random-ish weights; data/elmo-tiny/README.md). Its checksums are pinned: the files are ours to ship.
ELMO_TINY = Release(
    name="elmo-tiny",
    description="bilm-tf's test model, shipped for trying the commands offline (not for quality)",
    dim=32,
    params_m=0.105,
    lstm="64/16",
    highway_layers=2,
    options_url=None,
    weights_url=None,
    options_sha256="117cb6d2fb87b8485aa750ef299fa88cc4881f4bead731ea56aec8e944da580d",
    weights_sha256="dfdfd3001b5965b4b6ef857ac772b6624984f8248eaae08fb9be6d1b51ad8755",
    shipped=SHIPPED_DIR / "elmo-tiny",
)

# From the "Pre-trained ELMo Models" table of https://allennlp.org/elmo and the
# PRETRAINED addresses used by allennlp.modules.elmo; no sha256 is published for them.
RELEASES: dict[str, Release] = {
    r.name: r
    for r in (
        ELMO_TINY,
        _release("elmo-small", "2x1024_128_2048cnn_1xhighway", 256, 13.6, "1024/128", 1, "Small, 1B Word Benchmark"),
        _release("elmo-medium", "2x2048_256_2048cnn_1xhighway", 512, 28.0, "2048/256", 1, "Medium, 1B Word Benchmark"),
        _release(
            "elmo-original",
            "2x4096_512_2048cnn_2xhighway",
            1024,
            93.6,
            "4096/512",
            2,
            "Original, 1B Word Benchmark (as TF Hub google/elmo)",
        ),
        _release(
            "elmo-original-5.5b",
            "2x4096_512_2048cnn_2xhighway_5.5B",
            1024,
            93.6,
            "4096/512",
            2,
            "Original, 5.5B tokens of Wikipedia + WMT news",
        ),
    )
}


@dataclass(frozen=True)
class FileCheck:
    """The outcome of checking one file of a release."""

    file: str
    sha256: str
    #: the checksum compared against; None when neither published nor recorded
    expected: str | None
    #: "published", "recorded", "shipped" (pinned for a file shipped with the package) or None
    source: str | None

    @property
    def ok(self) -> bool | None:
        """True on match, False on mismatch, None when there is nothing to compare with."""
        return None if self.expected is None else self.sha256 == self.expected


@dataclass(frozen=True)
class VerifyReport:
    """All files of one release, checked."""

    name: str
    path: Path
    files: list[FileCheck]

    @property
    def ok(self) -> bool:
        """False if any file mismatches its reference checksum."""
        return all(f.ok is not False for f in self.files)


def models_dir() -> Path:
    """The models folder: ``$FS_MODELS_DIR``, else ``~/.cache/featurestore/models``."""
    return Path(os.environ.get("FS_MODELS_DIR") or "~/.cache/featurestore/models").expanduser()


def get_release(name: str) -> Release:
    """The catalogue entry for ``name``; ModelError listing the known names otherwise."""
    try:
        return RELEASES[name]
    except KeyError:
        raise ModelError(f"unknown model release {name!r}; known releases: {', '.join(RELEASES)}") from None


def _local_copy_hint(name: str) -> str:
    return (
        f"copy {OPTIONS_FILE} and {WEIGHTS_FILE} into {models_dir() / name}/ "
        f"or use --model elmo:PATH for a local options+weights pair"
    )


def _folder(release: Release) -> Path:
    return release.shipped or models_dir() / release.name


def is_downloaded(name: str) -> bool:
    """Whether both files of release ``name`` are in the models folder (or, shipped, in the package)."""
    folder = _folder(get_release(name))
    return all((folder / f).is_file() for f in (OPTIONS_FILE, WEIGHTS_FILE))


def release_path(name: str) -> Path:
    """The folder holding ``options.json`` + ``weights.hdf5`` of release ``name``."""
    release = get_release(name)
    if release.shipped is not None:
        if not is_downloaded(name):  # an install that left out the package data
            raise ModelError(
                f"model {name} should ship with featurestore but {release.shipped} lacks {OPTIONS_FILE} or "
                f"{WEIGHTS_FILE}; fix: reinstall featurestore (pip install --force-reinstall featurestore)"
            )
        return release.shipped
    if not is_downloaded(name):
        raise ModelError(
            f"model {name} is not downloaded; run: fs models pull {name} "
            f"(or --model elmo:PATH for a local options+weights pair)"
        )
    return models_dir() / name


def _read_record(folder: Path) -> dict[str, dict]:
    try:
        return json.loads((folder / RECORD_FILE).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {folder / RECORD_FILE}: {exc}; delete it and run fs models pull again") from None


def _download(url: str, dest: Path, expected: str | None, progress: PullProgress | None) -> str:
    """Stream ``url`` into a temp file beside ``dest``, check it, rename it; return its sha256."""
    import urllib.error  # here, not at the top: every fs command imports this module (fs models), few download
    import urllib.request

    digest = hashlib.sha256()
    try:
        # atomic_path renames only if the block ends cleanly: a short or corrupt download leaves nothing
        with (
            atomic_path(dest, suffix=".part") as tmp,
            open(tmp, "wb") as out,
            urllib.request.urlopen(url, timeout=READ_TIMEOUT_S) as resp,
        ):
            total = resp.headers.get("Content-Length")
            total_n = int(total) if total and total.isdigit() else None
            done = 0
            while block := resp.read(1 << 20):
                out.write(block)
                digest.update(block)
                done += len(block)
                if progress:
                    progress(dest.name, done, total_n)
            if total_n is not None and done != total_n:
                raise ModelError(f"download of {url} stopped at {done} of {total_n} bytes; run the pull again")
            sha = digest.hexdigest()
            if expected and sha != expected:
                raise ModelError(
                    f"{url} has sha256 {sha}, expected {expected}; the download is corrupt or was replaced"
                )
        return sha
    except (urllib.error.URLError, OSError) as exc:
        raise ModelError(f"cannot download {url}: {exc}; run the pull again or copy the file by hand") from None


def pull(name: str, progress: PullProgress | None = None, force: bool = False) -> Path:
    """Download release ``name`` into the models folder; return its folder.

    Skips a release already present unless ``force``. Offline, fails within seconds.
    """
    release = get_release(name)
    if release.shipped is not None:
        return release_path(name)  # nothing to download, with or without force
    folder = models_dir() / name
    if not force and is_downloaded(name):
        log.info("%s is already in %s", name, folder)
        return folder
    for url in {release.options_url, release.weights_url}:
        assert url is not None, name  # only a shipped release has none
        reason = unreachable_reason(url)
        if reason:
            raise ModelError(f"cannot download {name}: {reason}; {_local_copy_hint(name)}")
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    record: dict[str, dict] = {}
    try:
        for fname, (url, published) in release.files().items():
            assert url is not None, name
            log.info("downloading %s", url)
            sha = _download(url, folder / fname, published, progress)
            record[fname] = {"sha256": sha, "url": url, "bytes": (folder / fname).stat().st_size}
    except BaseException:
        if created and not any(folder.iterdir()):
            folder.rmdir()
        raise
    atomic_write_bytes(folder / RECORD_FILE, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    return folder


def downloaded() -> list[str]:
    """Names of the releases present in the models folder, and the shipped one."""
    return [name for name in RELEASES if is_downloaded(name)]


def verify(name: str) -> VerifyReport:
    """Recompute the sha256 of each file of ``name`` and compare with the published or recorded one."""
    folder = release_path(name)
    release = get_release(name)
    record = _read_record(folder)
    checks = []
    for fname, (_, published) in release.files().items():
        sha = file_sha256(folder / fname)
        recorded = record.get(fname, {}).get("sha256")
        if published:
            checks.append(FileCheck(fname, sha, published, "shipped" if release.shipped else "published"))
        elif recorded:
            checks.append(FileCheck(fname, sha, recorded, "recorded"))
        else:
            checks.append(FileCheck(fname, sha, None, None))
    return VerifyReport(name, folder, checks)


__all__ = [
    "ELMO_TINY",
    "RELEASES",
    "SHIPPED_DIR",
    "FileCheck",
    "PullProgress",
    "Release",
    "VerifyReport",
    "downloaded",
    "get_release",
    "is_downloaded",
    "models_dir",
    "pull",
    "release_path",
    "verify",
]
