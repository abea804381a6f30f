"""Fine-tuning MiniLM for the tutorial's classifier: base vs each `fs tune` method, side by side in one run.

The tutorial's split exactly as `fs train` makes it: data/av-twitter-sentiment/train_2kmZucJ.csv (id,label,tweet;
7,920 rows), `train_test_split(np.arange(n), random_state=42, test_size=0.2)` over the rows in file order (6,336
train / 1,584 validation). Each method is tuned on the training rows only (`featurestore.learning.tune.fine_tune`);
train and validation are embedded by `MiniLMEmbedder(model_dir=...)`; `LogisticRegression(C=1, max_iter=3000)` is
fitted on the training vectors and scored on validation (F1 of label 1), and again with C chosen by stratified
5-fold cross-validation inside the training split. The base model is scored the same way.

Usage (timed figures under the shared lock):
    flock /tmp/fs-bench.lock nice -n 0 .venv/bin/python bench/tune.py --methods head,contrastive --epochs 1
    .venv/bin/python bench/tune.py --rows 500 --epochs 0.2          # a quick look at the per-step cost
Tuning seconds include loading the base and saving the tuned model. `--json FILE` appends one line a method.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featurestore.embedders.minilm import MiniLMEmbedder, _model_dir  # noqa: E402
from featurestore.learning.tune import METHODS, TuneParams, fine_tune  # noqa: E402

DATA = ROOT / "data" / "av-twitter-sentiment" / "train_2kmZucJ.csv"
C_GRID = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


def split(rows: int | None) -> tuple[list[str], list[str], list[str], list[str]]:
    """(train texts, train labels, validation texts, validation labels); ``rows`` keeps the first N training rows."""
    from sklearn.model_selection import train_test_split

    with DATA.open(encoding="utf-8", newline="") as f:
        records = list(csv.DictReader(f))
    texts = [r["tweet"] for r in records]
    labels = [r["label"] for r in records]
    train, valid = train_test_split(np.arange(len(records)), random_state=42, test_size=0.2)
    if rows:
        train = train[:rows]
    return (
        [texts[i] for i in train],
        [labels[i] for i in train],
        [texts[i] for i in valid],
        [labels[i] for i in valid],
    )


def scores(x_train: np.ndarray, y_train: list[str], x_valid: np.ndarray, y_valid: list[str]) -> dict[str, float]:
    """Validation F1 (label "1") of logistic regression at C=1 and at the C that 5-fold CV on train picks."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score, make_scorer
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    def f1(clf: LogisticRegression) -> float:
        return float(f1_score(y_valid, clf.predict(x_valid), pos_label="1"))

    plain = LogisticRegression(C=1.0, max_iter=3000).fit(x_train, y_train)
    search = GridSearchCV(
        LogisticRegression(max_iter=3000),
        {"C": list(C_GRID)},
        scoring=make_scorer(f1_score, pos_label="1"),  # the labels are the strings "0" and "1"
        cv=StratifiedKFold(5, shuffle=True, random_state=0),
    )
    search.fit(x_train, y_train)
    return {"f1_c1": f1(plain), "c_cv": float(search.best_params_["C"]), "f1_cv": f1(search.best_estimator_)}


def embed(model_dir: Path | None, texts: list[str], threads: int | None) -> np.ndarray:
    if threads:  # the embedder sizes torch's pool by the usable cores; a busy shared CPU runs 1 thread faster
        import featurestore.embedders.minilm as minilm

        minilm.usable_cores = lambda: threads  # type: ignore[assignment]
    return MiniLMEmbedder(model_dir=model_dir).embed(texts)


def base_scores(
    cache: Path | None,
    x_texts: list[str],
    y_train: list[str],
    v_texts: list[str],
    y_valid: list[str],
    threads: int | None,
) -> dict[str, float]:
    """The base model's row; its vectors kept in ``cache`` (an .npz) between runs of the same rows."""
    if cache and cache.exists():
        got = np.load(cache)
        x, v = got["x"], got["v"]
    else:
        x, v = embed(None, x_texts, threads), embed(None, v_texts, threads)
        if cache:
            np.savez(cache, x=x, v=v)
    return scores(x, y_train, v, y_valid)


def machine() -> str:
    name = next(
        (
            line.split(":", 1)[1].strip()
            for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if line.startswith("Model name")
        ),
        platform.processor(),
    )
    return f"{name}, {len(os.sched_getaffinity(0))} usable cores"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def epochs_of(spec: str, method: str) -> float:
    """``--epochs``: one number for every method, or ``method=number`` pairs."""
    if "=" not in spec:
        return float(spec)
    pairs = dict(part.split("=", 1) for part in spec.split(","))
    return float(pairs[method])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="head,contrastive", help="comma-separated, of " + ", ".join(METHODS))
    ap.add_argument(
        "--epochs", default=str(TuneParams.epochs), help="a number, or per method: head=2.5,contrastive=1.2"
    )
    ap.add_argument("--batch-size", type=int, default=TuneParams.batch_size)
    ap.add_argument("--lr", type=float, default=TuneParams.learning_rate)
    ap.add_argument("--head-lr", type=float, default=TuneParams.head_learning_rate)
    ap.add_argument("--max-seq-length", type=int, default=TuneParams.max_seq_length)
    ap.add_argument("--train-word-embeddings", action="store_true")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--rows", type=int, default=None, help="tune on the first N training rows only (development)")
    ap.add_argument("--time-limit", type=float, default=None)
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads while tuning and embedding (default: the usable cores)"
    )
    ap.add_argument("--base-cache", type=Path, default=None, help="an .npz keeping the base model's vectors")
    ap.add_argument("--no-base", action="store_true", help="skip the base model's row")
    ap.add_argument("--keep", type=Path, default=None, help="save tuned models under this folder")
    ap.add_argument("--json", type=Path, default=None, help="append one JSON line a row")
    args = ap.parse_args()

    x_texts, y_train, v_texts, y_valid = split(args.rows)
    rows: list[dict] = []
    load_start = load()
    if not args.no_base:
        t0 = time.perf_counter()
        base = base_scores(args.base_cache, x_texts, y_train, v_texts, y_valid, args.threads)
        rows.append({"model": "base", "tune_s": 0.0, "embed_s": time.perf_counter() - t0, **base})
    for method in args.methods.split(","):
        params = TuneParams(
            method=method,
            epochs=epochs_of(args.epochs, method),
            batch_size=args.batch_size,
            learning_rate=args.lr,
            head_learning_rate=args.head_lr,
            max_seq_length=args.max_seq_length,
            seed=args.seed,
            freeze_word_embeddings=not args.train_word_embeddings,
        )
        with tempfile.TemporaryDirectory(prefix="fs-tune-bench-") as tmp:
            out = args.keep / method if args.keep else Path(tmp)
            out.mkdir(parents=True, exist_ok=True)
            report = fine_tune(
                _model_dir(), x_texts, y_train, out, params, time_limit=args.time_limit, threads=args.threads
            )
            t0 = time.perf_counter()
            got = scores(embed(out, x_texts, args.threads), y_train, embed(out, v_texts, args.threads), y_valid)
            rows.append(
                {
                    "model": method,
                    "tune_s": report.seconds,
                    "embed_s": time.perf_counter() - t0,
                    **got,
                    "steps": f"{report.steps}/{report.steps_planned}",
                    "stopped": report.stopped_early,
                    "loss": f"{report.loss_first:.3f}->{report.loss_last:.3f}",
                    "params": params.as_dict(),
                }
            )

    print(f"machine: {machine()}; torch threads {args.threads or 'default'}; load before {load_start}, after {load()}")
    print(f"train rows {len(x_texts)}, validation rows {len(v_texts)}; {sys.argv[1:]}")
    print(
        f"{'model':<12}{'tune s':>8}{'steps':>10}{'stopped':>8}{'loss':>14}{'F1 C=1':>8}{'C(cv)':>7}{'F1 cv':>7}"
        f"{'embed s':>8}"
    )
    for r in rows:
        print(
            f"{r['model']:<12}{r['tune_s']:>8.0f}{r.get('steps', '-'):>10}{str(r.get('stopped', '-')):>8}"
            f"{r.get('loss', '-'):>14}{r['f1_c1']:>8.3f}{r['c_cv']:>7g}{r['f1_cv']:>7.3f}{r['embed_s']:>8.0f}"
        )
    if args.json:
        with args.json.open("a") as f:
            for r in rows:
                f.write(json.dumps({**r, "argv": sys.argv[1:], "load": load(), "machine": machine()}) + "\n")


if __name__ == "__main__":
    main()
