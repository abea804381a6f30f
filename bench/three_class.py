"""A 3-class, imbalanced, noisily labelled tweet set built from ``../shared/data`` (issue 26): no public 3-class
tweet set is on disk and the internet is closed, so this stands in for the issue's 11.5k/12k-row sets.

    .venv/bin/python bench/three_class.py /tmp/three.csv            # 12,000 rows: id,label,tweet
    .venv/bin/python bench/three_class.py /tmp/three.csv --n 3000   # the same mix, smaller

The mix (of ``n`` = 12,000): a third ``tech`` (the tutorial's train tweets, whatever their label), half
``positive`` and a sixth ``negative`` (sentiment140, labelled by emoticons: noisy), so the negative class is the
minority. Texts are deduplicated (exact text, across both sources, and the 16 texts in both sentiment140
files are dropped: their label is unknown), sampled deterministically by ``seed``, shuffled; ids are
``1..n`` in file order.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHARES = {"tech": 1 / 3, "positive": 1 / 2, "negative": 1 / 6}


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _tech() -> list[str]:
    with open(DATA / "av-twitter-sentiment" / "train_2kmZucJ.csv", newline="", encoding="utf-8") as f:
        return [row["tweet"].strip() for row in csv.DictReader(f) if row["tweet"].strip()]


def counts(n: int) -> dict[str, int]:
    """Rows a class for ``n`` rows: 4,000 / 6,000 / 2,000 at 12,000; the rounding goes to ``positive``."""
    out = {k: int(round(n * s)) for k, s in SHARES.items()}
    out["positive"] += n - sum(out.values())
    return out


def three_class_rows(n: int = 12_000, seed: int = 0) -> list[tuple[str, str, str]]:
    """``(id, label, tweet)`` rows, deterministic for (n, seed)."""
    pools = {
        "tech": _tech(),
        "positive": _lines(DATA / "sentiment140-100k" / "positive.txt"),
        "negative": _lines(DATA / "sentiment140-100k" / "negative.txt"),
    }
    both = set(pools["positive"]) & set(pools["negative"])
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    rows: list[tuple[str, str]] = []
    for label, want in counts(n).items():
        unique = [t for t in dict.fromkeys(pools[label]) if t not in both and t not in seen]
        if want > len(unique):
            raise ValueError(f"{label}: {want} rows asked, {len(unique)} distinct texts available")
        picked = [unique[i] for i in sorted(rng.choice(len(unique), size=want, replace=False).tolist())]
        seen.update(picked)
        rows += [(label, t) for t in picked]
    order = rng.permutation(len(rows))
    return [(str(i + 1), rows[j][0], rows[j][1]) for i, j in enumerate(order.tolist())]


def write_three_class(path: str | Path, n: int = 12_000, seed: int = 0) -> Path:
    """Write the set as a CSV ``id,label,tweet``; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "label", "tweet"])
        w.writerows(three_class_rows(n, seed))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", help="CSV file to write")
    ap.add_argument("--n", type=int, default=12_000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = write_three_class(a.path, a.n, a.seed)
    print(f"{out}: {a.n:,} rows {counts(a.n)}")


if __name__ == "__main__":
    main()
