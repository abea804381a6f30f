"""GPU figures in one JSON line on stdout (progress on stderr); run by bench/gpu.sh.

What it measures, each part reported even when another fails:

- the machine: GPU, driver, CUDA, torch, CPU cores;
- MiniLM through sentence-transformers (the plain library call): fp32 at two batch sizes, fp16 over a
  batch-size sweep, peak GPU memory;
- our embedder (``MiniLMEmbedder.embed``, fp32, the ``minilm`` space) at its shipped GPU batch shape and
  at larger ones: the rate ``fs ingest`` should approach;
- the whole cold ``fs ingest`` of the 100k Sentiment140 tweets as a new process (CSV read, cleaning,
  hashing, embedding, HDF5 commits), with the shipped defaults and with a larger GPU batch; then a warm
  re-ingest of the same file (nothing to embed);
- native ELMo words/s (TensorFlow, full-size random weights) when TensorFlow is importable;
- ``minilm-fp16`` against float32 torch MiniLM (``half_vs_fp32``): cosine per tweet on the first 2,000 tweets of
  the bundled tutorial train file, both rates, and bfloat16 beside it (the precision not chosen); on a GPU also
  its rate at the shipped GPU batch shape on the Sentiment140 sample.

``--half [--n N]`` runs only the last comparison, on the GPU when there is one and on the CPU otherwise (a few
needs no Sentiment140. On 2 CPU cores float16 runs ~2 tweets/s (one text per forward pass), so N=300 takes
~4.5 minutes and the default N=2000 ~20:

    .venv/bin/python bench/gpu.py --half --n 300

Environment: FS_GPU_DATA (folder with negative.txt/positive.txt), FS_GPU_N (tweets, default 100000),
FS_GPU_ALLOW_CPU=1 (a dry run on a machine without a GPU: same code, small numbers), FS_GPU_PYSPY=BINARY:OUT
(one more cold ingest, under py-spy, sampling the threads that hold the GIL).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--half", action="store_true", help="only minilm-fp16 (and bfloat16) against float32, on any device")
ap.add_argument("--n", type=int, default=2000, help="tutorial tweets for --half's comparison (default 2000)")
ARGS = ap.parse_args()
TUTORIAL_CSV = Path(__file__).resolve().parent.parent / "data" / "av-twitter-sentiment" / "train_2kmZucJ.csv"
T0 = time.perf_counter()
BUDGET_S = float(os.environ.get("FS_GPU_BUDGET_S", "300"))
res: dict = {}


def log(*a) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s]", *a, file=sys.stderr, flush=True)


def find(*candidates) -> Path | None:
    return next((Path(c) for c in candidates if c and Path(c).exists()), None)


def error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:400]


def done() -> None:
    res["seconds"] = round(time.perf_counter() - T0, 1)
    print(json.dumps(res), flush=True)


# --- the machine -------------------------------------------------------------------------------------
import torch  # noqa: E402

cuda = torch.cuda.is_available()
if not cuda and not ARGS.half and os.environ.get("FS_GPU_ALLOW_CPU") != "1":
    res["error"] = "torch sees no CUDA device"
    done()
    sys.exit(1)
DEV = "cuda" if cuda else "cpu"
res.update(
    device=torch.cuda.get_device_name(0) if cuda else ("cpu" if ARGS.half else "cpu (dry run)"),
    torch=torch.__version__,
    cuda=torch.version.cuda,
    cpu_cores=os.cpu_count(),
    python=platform.python_version(),
)
try:
    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    res["nvidia_smi"] = smi.stdout.strip()
except (OSError, subprocess.SubprocessError):
    pass


def sync() -> None:
    if cuda:
        torch.cuda.synchronize()


def rate(fn, items, units: int | None = None) -> float:
    """Units per second of fn(items), after one untimed call on a slice (kernels, allocator, tracing)."""
    fn(items[:1024])
    sync()
    t = time.perf_counter()
    fn(items)
    sync()
    return (units or len(items)) / (time.perf_counter() - t)


def tutorial_tweets(n: int) -> list[str]:
    """The first ``n`` non-empty tweets of the bundled tutorial train file."""
    with TUTORIAL_CSV.open(newline="", encoding="utf-8") as f:
        return [t for t in (row["tweet"] for row in csv.DictReader(f)) if t.strip()][:n]


def half_vs_fp32(texts: list[str], precisions: tuple[str, ...] = ("float16", "bfloat16")) -> dict:
    """Half-precision MiniLM against float32 torch MiniLM (the `minilm` space) on ``texts``, in one process.

    For each precision: the rate (after an untimed call on 64 texts), the cosine of each text's vector to its
    float32 one (mean, min), the max abs difference, the largest |norm - 1| (pooling and normalisation run in
    float32, so ~1e-7), and how far a text's vector moves when it is embedded in other batches (the first 50
    texts alone vs in the whole call): the drift check holds a float32 space to 1e-4 on its canaries.
    float16 is ``minilm-fp16``; bfloat16 is the same class with another dtype, for the choice between them.
    """
    import numpy as np

    from featurestore.embedders.minilm import MiniLMEmbedder, MiniLMHalfEmbedder

    def run(emb) -> tuple[np.ndarray, float]:
        emb.embed(texts[:64])
        sync()
        t = time.perf_counter()
        vectors = emb.embed(texts)
        sync()
        return vectors, len(texts) / (time.perf_counter() - t)

    ref, r32 = run(MiniLMEmbedder())
    out: dict = {"texts": len(texts), "float32_tweets_per_s": round(r32, 1)}
    log(f"float32: {r32:,.1f} tweets/s on {len(texts):,} tweets")
    for precision in precisions:
        emb = MiniLMHalfEmbedder()
        emb.precision = precision
        try:
            vectors, r = run(emb)
        except Exception as exc:  # e.g. a torch without this dtype's kernels on this device
            out[precision] = {"error": error(exc)}
            log(precision, "failed:", out[precision]["error"])
            continue
        cos = (vectors * ref).sum(axis=1)  # both are unit vectors
        alone = emb.embed(texts[:50])
        out[precision] = {
            "tweets_per_s": round(r, 1),
            "over_float32": round(r / r32, 3),
            "cosine_mean": round(float(cos.mean()), 6),
            "cosine_min": round(float(cos.min()), 6),
            "max_abs_diff": float(f"{np.abs(vectors - ref).max():.3g}"),
            "max_norm_error": float(f"{np.abs(np.linalg.norm(vectors, axis=1) - 1).max():.3g}"),
            "other_batch_max_abs_diff": float(f"{np.abs(alone - vectors[:50]).max():.3g}"),
            "device": emb.device,
        }
        log(precision, out[precision])
        del emb
        if cuda:
            torch.cuda.empty_cache()
    return out


if ARGS.half:  # only the half-precision comparison (no Sentiment140 needed)
    try:
        res["half_vs_fp32"] = half_vs_fp32(tutorial_tweets(ARGS.n))
    except Exception as exc:
        res["half_error"] = error(exc)
    done()
    sys.exit(0 if "half_error" not in res else 1)

data = find(os.environ.get("FS_GPU_DATA"), "shared/data/sentiment140-100k", "../shared/data/sentiment140-100k")
if data is None:
    res["error"] = "Sentiment140 not found (FS_GPU_DATA, shared/data or ../shared/data)"
    done()
    sys.exit(1)
neg = (data / "negative.txt").read_text(encoding="utf-8").splitlines()
pos = (data / "positive.txt").read_text(encoding="utf-8").splitlines()
N = int(os.environ.get("FS_GPU_N", "100000"))
texts = [t for pair in zip(neg, pos) for t in pair][:N]
sample = texts[: min(len(texts), 20_000 if cuda else 600)]
res.update(tweets=len(texts), sample=len(sample), sample_words=sum(len(t.split()) for t in sample))
log(res)

# --- MiniLM: the plain library call ------------------------------------------------------------------
try:
    from sentence_transformers import SentenceTransformer

    from featurestore.embedders.minilm import MiniLMEmbedder

    ours = MiniLMEmbedder()
    st = SentenceTransformer(str(ours.model_dir), device=DEV, local_files_only=True).float()
    res["sentence_transformers"] = __import__("sentence_transformers").__version__
    fp32 = {}
    for bs in (512,) if cuda else (32,):
        fp32[bs] = round(rate(partial(st.encode, batch_size=bs), sample))
        log("st fp32 batch", bs, fp32[bs], "tweets/s")
    res["st_fp32_tweets_per_s"] = fp32
    if cuda:
        st.half()
        torch.cuda.reset_peak_memory_stats()
        sweep = {}
        for bs in (256, 1024):
            sweep[bs] = round(rate(partial(st.encode, batch_size=bs), sample))
            log("st fp16 batch", bs, sweep[bs], "tweets/s")
        res.update(
            st_fp16_tweets_per_s=sweep,
            st_fp16_best=max(sweep.values()),
            st_fp16_best_batch=max(sweep, key=sweep.get),
            st_fp16_peak_gpu_mib=round(torch.cuda.max_memory_allocated() / 2**20),
        )
    del st
    if cuda:
        torch.cuda.empty_cache()
except Exception as exc:  # one JSON line whatever happens
    res["st_error"] = error(exc)
    log("sentence-transformers part failed:", res["st_error"])

# --- our embedder (fp32, the `minilm` space) at its shipped GPU batch shape and others -----------------
# name: (max_batch_tokens, max_batch_size, gpu_model_batch); "one_batch_per_call" is the shape before
# the pipelined GPU path (one model batch of <= 256 texts per call, nothing overlapped).
SHAPES = {
    "shipped": None,
    "one_batch_per_call": (16384, 256, 1 << 30),
    "model_batch_256": (4096 * 64, 4096, 256),
    "model_batch_1024": (4096 * 64, 4096, 1024),
}
try:
    from featurestore.embedders.minilm import MiniLMEmbedder

    ours = MiniLMEmbedder()
    shipped = (ours.max_batch_tokens, ours.max_batch_size, ours.gpu_model_batch)
    res["ours_shipped_shape"] = list(shipped)
    mine = {}
    for name, shape in SHAPES.items() if cuda else [("shipped", None)]:
        ours.max_batch_tokens, ours.max_batch_size, ours.gpu_model_batch = shape or shipped
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        mine[name] = round(rate(ours.embed, sample))
        if cuda:
            mine[name + "_peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        log("ours fp32", name, mine[name], "tweets/s")
    ours.max_batch_tokens, ours.max_batch_size, ours.gpu_model_batch = shipped
    res["ours_fp32_tweets_per_s"] = mine
    res["ours_device"] = ours.device
    if cuda:  # where a model batch's time goes: tokenizing, the forward pass alone, and torch's profile
        tokenizer, model = ours._model
        srt = sorted(sample, key=len, reverse=True)
        chunks = [srt[i : i + 256] for i in range(0, len(srt), 256)]
        t = time.perf_counter()
        for c in chunks:
            tokenizer(c, padding=True, truncation="longest_first", max_length=256, return_tensors="pt")
        res["tokenize_transformers_tweets_per_s"] = round(len(sample) / (time.perf_counter() - t))
        t = time.perf_counter()
        encs = [dict(zip(("input_ids", "attention_mask"), map(torch.from_numpy, ours._tokenize(c)))) for c in chunks]
        res["tokenize_ours_tweets_per_s"] = round(len(sample) / (time.perf_counter() - t))
        on_gpu = [(e["input_ids"].cuda(), e["attention_mask"].cuda()) for e in encs]
        forward = {}
        for dt in ("fp32", "fp16"):
            m = model.to({"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dt])
            with torch.inference_mode():
                for ids, mask in on_gpu[:4]:
                    m(ids, mask)
                sync()
                t = time.perf_counter()
                for ids, mask in on_gpu:
                    m(ids, mask)
                sync()
            forward[dt] = round(len(sample) / (time.perf_counter() - t))
            log("forward only", dt, forward[dt], "tweets/s")
        model.float()
        res["forward_only_batch256_tweets_per_s"] = forward
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            ours.embed(sample[:4096])
            sync()
        log("profile of ours.embed(4096 tweets):\n" + prof.key_averages().table(sort_by="cpu_time_total", row_limit=18))
    del ours
    if cuda:
        torch.cuda.empty_cache()
except Exception as exc:
    res["ours_error"] = error(exc)
    log("embedder part failed:", res["ours_error"])

# --- minilm-fp16: cosine to float32 on the tutorial's tweets, and its rate at the shipped GPU shape ---------
try:
    res["half_vs_fp32"] = half_vs_fp32(tutorial_tweets(2000))
    if cuda:
        from featurestore.embedders.minilm import MiniLMHalfEmbedder

        half = MiniLMHalfEmbedder()
        torch.cuda.reset_peak_memory_stats()
        res["ours_fp16_tweets_per_s"] = round(rate(half.embed, sample))
        res["ours_fp16_peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        log("ours fp16 shipped", res["ours_fp16_tweets_per_s"], "tweets/s")
        del half
        torch.cuda.empty_cache()
except Exception as exc:
    res["half_error"] = error(exc)
    log("half-precision part failed:", res["half_error"])

# --- the whole cold `fs ingest`, as a new process ----------------------------------------------------
SUMMARY = re.compile(r"texts embedded ([\d,]+).*\(([\d,]+) rows/s\).*\[([^\]]*)\]")
PATCH = (
    "import sys; from featurestore.embedders.minilm import MiniLMEmbedder as M; "
    "M.max_batch_tokens, M.max_batch_size, M.gpu_model_batch = {t}, {b}, {m}; from cli.main import main; "
    "sys.argv[0] = 'fs'; main()"
)


def ingest(
    name: str, src: Path, store: Path, shape=None, batch_rows: int | None = None, spy: str | None = None
) -> None:
    args = ["ingest", str(src), "--dataset", "s140", "--store", str(store)]
    if batch_rows:
        args += ["--batch-rows", str(batch_rows)]
    cmd = (
        [sys.executable, "-m", "cli.main", *args]
        if shape is None
        else [sys.executable, "-c", PATCH.format(t=shape[0], b=shape[1], m=shape[2]), *args]
    )
    if spy:  # py-spy's samples of the threads holding the GIL (FS_GPU_PYSPY names the binary and the output)
        binary, out = spy.split(":", 1)
        cmd = [binary, "record", "--gil", "--threads", "-r", "200", "-f", "raw", "-o", out, "--", *cmd]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=max(30, BUDGET_S - (time.perf_counter() - T0)))
    wall = time.perf_counter() - t
    log(name, f"{wall:.1f} s", p.stdout.strip()[-500:], p.stderr.strip()[-800:])
    if p.returncode:
        raise RuntimeError((p.stderr.strip() or p.stdout.strip() or f"exit {p.returncode}").splitlines()[-1])
    row = {"wall_s": round(wall, 1), "tweets_per_s_wall": round(len(texts) / wall)}
    m = SUMMARY.search(p.stdout.replace("\n", " "))
    if m:  # "... texts embedded N ... (R rows/s) ... [clean 0.0 s, load model 9.1 s, embed 4.2 s, commit 1.3 s]"
        row["tweets_per_s_own"] = int(m[2].replace(",", ""))
        for part in m[3].split(", "):
            stage, seconds = part.rsplit(" ", 2)[:2]
            row[stage.replace(" ", "_") + "_s"] = float(seconds)
        if row.get("embed_s"):  # the model's busy rate inside the ingest, its load left out
            row["tweets_per_s_embedding"] = round(int(m[1].replace(",", "")) / row["embed_s"])
    res.setdefault("ingest", {})[name] = row


try:
    tmp = Path(tempfile.mkdtemp(prefix="fs-gpu-"))
    src = tmp / "s140.csv"
    with src.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "label", "text"])
        w.writerows((i + 1, i % 2, t) for i, t in enumerate(texts))
    ingest("cold_shipped", src, tmp / "store-a")
    ingest("warm_reingest", src, tmp / "store-a")
    if cuda:
        ingest("cold_shipped_rows4096", src, tmp / "store-b", batch_rows=4096)
        if os.environ.get("FS_GPU_PYSPY"):
            ingest("cold_shipped_under_pyspy", src, tmp / "store-c", spy=os.environ["FS_GPU_PYSPY"])
    ours_rate = res.get("ours_fp32_tweets_per_s", {})
    for name, row in res.get("ingest", {}).items():
        shape = "one_batch_per_call" if "one_batch" in name else "shipped"
        if name.startswith("cold") and shape in ours_rate:
            row["over_embedder_wall"] = round(row["tweets_per_s_wall"] / ours_rate[shape], 3)
            if "tweets_per_s_own" in row:
                row["over_embedder_own"] = round(row["tweets_per_s_own"] / ours_rate[shape], 3)
            if "tweets_per_s_embedding" in row:
                row["over_embedder_embedding"] = round(row["tweets_per_s_embedding"] / ours_rate[shape], 3)
except Exception as exc:
    res["ingest_error"] = error(exc)
    log("ingest part failed:", res["ingest_error"])

# --- native ELMo (TensorFlow), last, cut off in time so the line is printed ----------------------------


def out_of_time(*_):
    raise TimeoutError("ELMo ran out of the script's time")


signal.signal(signal.SIGALRM, out_of_time)
signal.alarm(max(1, int(BUDGET_S - 10 - (time.perf_counter() - T0))))
try:
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise RuntimeError(f"TensorFlow is not importable here ({exc}); the native ELMo runs on TensorFlow") from exc
    peer = os.environ.get("PEER_DIR") or "/tmp/peer"
    elmo_dir = next(
        (
            Path(d)
            for d in (os.environ.get("ELMO_DIR"), f"{peer}/elmo_full_random")
            if d and (Path(d) / "weights.hdf5").is_file() and (Path(d) / "options.json").is_file()
        ),
        None,
    )
    if elmo_dir is None:
        gen = find(
            "shared/bench/peer_allennlp/gen_random_weights.py", "../shared/bench/peer_allennlp/gen_random_weights.py"
        )
        if gen is None:
            raise FileNotFoundError("no ELMo weights and no gen_random_weights.py in shared/ or ../shared/")
        elmo_dir = Path(f"{peer}/elmo_full_random")
        subprocess.run([sys.executable, str(gen), "--out", str(elmo_dir)], check=True, stdout=sys.stderr, timeout=120)
    for g in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(g, True)  # share the GPU with torch's cache
    from featurestore.embedders.elmo import ElmoEmbedder

    elmo = ElmoEmbedder.from_path(str(elmo_dir))
    few = sample[:5000]
    words = sum(len(t.split()) for t in few)
    elmo.embed(few[:512])
    t = time.perf_counter()
    elmo.embed(few)
    res["elmo_words_per_s"] = round(words / (time.perf_counter() - t))
    res["elmo_device"] = elmo.device
    try:
        res["elmo_peak_gpu_mib"] = round(tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20)
    except Exception:
        pass
except Exception as exc:
    res["elmo_error"] = error(exc)
signal.alarm(0)
done()
