"""A fake embedder that Ray worker processes can be told what to do, for tests/test_distributed.py.

``py:tests.ray_fakes:ScriptedEmbedder`` gives exactly CountingEmbedder's vectors and space (same
fingerprint), so a Ray ingest with it compares to a local ingest with ``py:tests.fakes:CountingEmbedder``.
Worker processes cannot share memory with the test, so each batch reads a small JSON script
named by ``FS_TEST_SCRIPT`` (set before the cluster starts; workers inherit it):

- ``log``: a file to append one line per batch to: ``pid count`` (texts embedded, across processes);
- ``delay``: seconds to sleep per batch (gives a test time to kill a driver mid-run);
- ``kill_once``: a marker path; the first batch that creates it SIGKILLs its own process, unless that
  process is ``spare_pid`` (the test's own: a driver embeds canaries for its drift check).
"""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np

from tests.fakes import CountingEmbedder


def _script() -> dict:
    path = os.environ.get("FS_TEST_SCRIPT")
    if not path or not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class ScriptedEmbedder(CountingEmbedder):
    def embed_batch(self, texts: list[str]) -> np.ndarray:
        script = _script()
        if (marker := script.get("kill_once")) and os.getpid() != script.get("spare_pid"):
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(float(script.get("delay", 0)))
        vectors = super().embed_batch(texts)
        if log := script.get("log"):
            with open(log, "a", encoding="utf-8") as f:
                f.write(f"{os.getpid()} {len(texts)}\n")
        return vectors


def embedded_count(log: str) -> int:
    """Texts embedded by every process, as logged."""
    if not os.path.exists(log):
        return 0
    with open(log, encoding="utf-8") as f:
        return sum(int(line.split()[1]) for line in f if line.strip())
