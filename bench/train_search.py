"""`fs train --search quick`, the previous search against this one, in one run (issue 26).

Builds once, under --dir (default /tmp/fs-train-search): the 3-class set of ``bench/three_class.py`` (12,000 tweets:
tech / positive / negative, negative the minority) and a MiniLM store holding it as dataset ``three`` (and the
tutorial's train CSV as dataset ``tutorial``). Then, for each dataset and feature spec, runs `fs train --search`
as a new process twice: the code of ``--base`` (a ``git worktree`` of that revision, made under --dir) and this
checkout, and prints one table: rows/classes, seconds, candidates scored, the chosen setting, its CV score, the
held-out score and the minority class's recall, the best candidate *without* offsets (the previous search's kind)
and the ratio of seconds old/new.

    .venv/bin/python bench/train_search.py                                   # three + tutorial, both specs
    .venv/bin/python bench/train_search.py --datasets three --specs minilm+tfidf-char
    flock /tmp/fs-bench.lock nice -n 0 .venv/bin/python bench/train_search.py   # a timed run beside others

``--time-limit 0`` (the default) lets both searches score their whole grid, so the choices can be compared; give
``--time-limit 90`` to see what each does under the quick search's own default.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.three_class import write_three_class  # noqa: E402

BASE = "74c10d1d4f1dfcdd312aeb07cc904ac7f4e3c42e"  # HEAD when issue 26 (parts 1 and 3) was started
TUTORIAL = ROOT / "data" / "av-twitter-sentiment" / "train_2kmZucJ.csv"


def fs(code: Path, args: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall seconds and result of `fs ARGS` run by the code in ``code`` (a checkout) as a new process."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=code, env=env, capture_output=True, text=True)
    return time.perf_counter() - t, r


def build(folder: Path) -> Path:
    store = folder / "store"
    if not (store / "manifest").is_dir():
        csv = write_three_class(folder / "three.csv")
        for path, name in ((csv, "three"), (TUTORIAL, "tutorial")):
            secs, r = fs(ROOT, ["ingest", str(path), "--dataset", name, "--store", str(store)])
            if r.returncode:
                raise SystemExit(r.stderr)
            print(f"ingested {name} with MiniLM in {secs:.0f} s")
    return store


def worktree(folder: Path, base: str) -> Path:
    tree = folder / f"base-{base[:12]}"
    if not tree.is_dir():
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), base], cwd=ROOT, check=True, capture_output=True
        )
    return tree


def train(code: Path, store: Path, dataset: str, spec: str, name: str, time_limit: float) -> dict[str, Any]:
    args = ["train", "--dataset", dataset, "--search", "quick", "--store", str(store), "--no-plots", "--json"]
    args += ["--name", name, "--time-limit", f"{time_limit:g}"] + (["--features", spec] if spec else [])
    secs, r = fs(code, args)
    if r.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    out = json.loads(r.stdout)
    out["wall"] = secs
    return out


def minority(r: dict[str, Any]) -> tuple[str, float]:
    """The class with the fewest validation rows, and its recall."""
    c = min(r["per_class"], key=lambda k: r["per_class"][k]["support"])
    return c, r["per_class"][c]["recall"]


def row(dataset: str, n: str, which: str, r: dict[str, Any]) -> str:
    cv = r["cv"]
    plain = next((c for c in cv["top"] if not c.get("offsets")), None)
    cls, rec = minority(r)
    plain_words = f"{plain['words']} ({plain['cv_mean']:.4f})" if plain else "(not in the top 10)"
    return (
        f"| {dataset} | {n} | {which} | {r['wall']:.0f} | {cv['tried']} of {cv['tried'] + cv['skipped']} | "
        f"{cv['chosen']['words']} | {cv['mean']:.4f} ± {cv['sd']:.4f} | {r['f1']:.4f} | {cls} {rec:.3f} | "
        f"{plain_words} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/fs-train-search")
    ap.add_argument("--base", default=BASE, help="revision of the previous search (default: %(default)s)")
    ap.add_argument("--datasets", default="three,tutorial")
    ap.add_argument("--specs", default="minilm+tfidf-char,", help="feature specs, ',' between; '' = --search alone")
    ap.add_argument("--time-limit", type=float, default=0.0, help="--time-limit of both runs (0: the whole grid)")
    ap.add_argument("--only-new", action="store_true", help="skip the previous search")
    a = ap.parse_args()
    folder = Path(a.dir)
    folder.mkdir(parents=True, exist_ok=True)
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"machine: {model}, {len(os.sched_getaffinity(0))} usable cores; load {os.getloadavg()}")
    store = build(folder)
    old = None if a.only_new else worktree(folder, a.base)
    head = "| dataset | rows / classes | search | s | candidates scored | chosen | CV | held-out | minority recall |"
    lines = [
        head + " best without offsets (CV) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ratios = []
    specs = a.specs.split(",") if "," in a.specs else [a.specs]
    for dataset in a.datasets.split(","):
        for spec in specs:
            tag = f"{dataset}-{spec or 'search'}".replace("+", "_")
            new = train(ROOT, store, dataset, spec, f"new-{tag}", a.time_limit)
            n = f"{new['n_train'] + new['n_valid']:,} / {len(new['classes'])}"
            label = spec or "(--search alone)"
            if old is not None:
                before = train(old, store, dataset, spec, f"old-{tag}", a.time_limit)
                lines.append(row(dataset, n, f"old {label}", before))
                ratios.append(f"{dataset} {label}: old/new {before['wall'] / new['wall']:.1f}x")
            lines.append(row(dataset, n, f"new {label}", new))
            print(lines[-1], flush=True)
    print(f"load after: {os.getloadavg()}")
    print("\n".join(lines))
    print("\n".join(ratios))


if __name__ == "__main__":
    main()
