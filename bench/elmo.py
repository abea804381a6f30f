"""Native ELMo speed against its peer, AllenNLP 0.9.0's ELMo, in one run on the same tweets and weights.

Run: ``.venv/bin/python bench/elmo.py [--n 2000] [--rounds 2] [--json out.json]``
or ``.venv/bin/python bench/elmo.py --ceiling-only`` (about 30 s: the ceiling section only),
or ``.venv/bin/python bench/elmo.py --backends --n 200 --rounds 2`` (TensorFlow against torch, ours only).

- Tweets: the first N rows of the av-twitter-sentiment train file, cleaned as the tutorial (and
  the peer) does; words are whitespace tokens, markers not counted.
- Model: the full-size ``elmo_2x4096_512_2048cnn_2xhighway`` with random weights. When the peer's
  folder exists (``$PEER_DIR``, default ``${TMPDIR:-/tmp}/peer``) both sides load the same
  ``elmo_full_random/{options.json,weights.hdf5}``; otherwise ours gets weights of the same shapes.
- The peer: ``$PEER_DIR/venv/bin/python ../shared/bench/peer_allennlp/bench_allennlp.py --n N
  --orders sorted`` as a subprocess (its length-sorted batches of 64, its last stdout line is JSON),
  then ours (cold word cache, graph already traced) right after it; ``--rounds 2`` repeats the pair,
  so each ratio compares two runs back to back. Without the peer's venv this prints how to build
  it and only our figures.
- Also: the machine, sgemm GFLOP/s -> our share of the GEMM ceiling (0.204 GFLOP a word), and our
  vectors against the reference path (``ElmoBiLM.sentence_layers``: markers computed, no word
  cache, no marker-state shortcut) on the first 64 tweets.
- Ceiling section: multiply-adds a word counted from the options (:func:`macs_per_word`), fp32
  GEMM GFLOP/s measured with TensorFlow as the embedder runs it (same import, so oneDNN as the
  embedder has it; TF's default threads) at the LSTM's per-step shapes (:func:`lstm_gemm_rates`),
  and ceiling words/s = GFLOP/s / (2 x MACs a word): how fast any exact fp32 ELMo could be here,
  against AllenNLP's words/s from the same run (``--ceiling-only``: from ``--peer-words-per-s``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featurestore.embedders.base import plan_batches  # noqa: E402
from featurestore.embedders.elmo import ElmoEmbedder, ElmoOptions, NativeElmoEmbedder  # noqa: E402
from featurestore.embedders.tf_runtime import tensorflow  # noqa: E402

SHARED = ROOT.parent / "shared"
DATA = SHARED / "data" / "av-twitter-sentiment" / "train_2kmZucJ.csv"
PEER_SCRIPT = SHARED / "bench" / "peer_allennlp" / "bench_allennlp.py"
PEER_README = SHARED / "bench" / "peer_allennlp" / "README.md"
GFLOP_PER_WORD = 0.204  # character CNN + highway + projection + 2 biLSTM layers, per position
ORIGINAL_OPTIONS = {
    "lstm": {
        "use_skip_connections": True,
        "projection_dim": 512,
        "cell_clip": 3,
        "proj_clip": 3,
        "dim": 4096,
        "n_layers": 2,
    },
    "char_cnn": {
        "activation": "relu",
        "filters": [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]],
        "n_highway": 2,
        "embedding": {"dim": 16},
        "n_characters": 262,
        "max_characters_per_token": 50,
    },
}
PUNCT = set('!"#$%&()*+,-./:;<=>@[\\]^_`{|}~')  # the tutorial's list (keeps ' and ?), as the peer


def peer_dir() -> Path:
    return Path(os.environ.get("PEER_DIR") or Path(os.environ.get("TMPDIR") or "/tmp") / "peer")


def clean(text: str) -> str:
    """The tutorial's cleaning, as ``bench_allennlp.clean`` does it (words joined by one space)."""
    text = re.sub(r"http\S+", "", text)
    text = "".join(ch for ch in text if ch not in PUNCT).lower()
    return " ".join(re.sub(r"[0-9]", " ", text).split())


def load_tweets(n: int) -> list[str]:
    with open(DATA, newline="", encoding="utf-8") as f:
        return [clean(row["tweet"]) for _, row in zip(range(n), csv.DictReader(f))]


def write_random_model(folder: Path, seed: int = 0) -> int:
    """options.json + weights.hdf5 with the original's shapes and random weights; returns the parameter count."""
    import h5py

    from featurestore.embedders.elmo import ElmoOptions, _expected_shapes

    (folder / "options.json").write_text(json.dumps(ORIGINAL_OPTIONS))
    rng = np.random.default_rng(seed)
    shapes = {"char_embed": (261, 16), **_expected_shapes(ElmoOptions.from_dict(ORIGINAL_OPTIONS))}
    with h5py.File(folder / "weights.hdf5", "w") as f:
        for name, shape in shapes.items():
            scale = 1.0 if name == "char_embed" else 0.05  # as the peer's generator
            f.create_dataset(name, data=rng.standard_normal(shape, dtype=np.float32) * scale)
    return int(sum(np.prod(s) for s in shapes.values()))


def _onednn_on() -> bool | None:
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return None


def machine() -> dict[str, object]:
    # TensorFlow through featurestore's import, as the embedder gets it: a plain ``import
    # tensorflow`` first would fix TF_ENABLE_ONEDNN_OPTS at TF's default (off on this AMD CPU)
    # for the whole process, ours included.
    tf = tensorflow()

    info: dict[str, object] = {"cpu": platform.processor(), "cores": os.cpu_count()}
    try:
        cpuinfo = open("/proc/cpuinfo").read()
        fields = dict(line.split(":", 1) for line in cpuinfo.split("\n\n")[0].splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        flags = set(fields.get("flags", "").split())
        info.update(
            cpu=fields.get("model name"),
            family=fields.get("cpu family"),
            model=fields.get("model"),
            simd=" ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags),
        )
        mem = next(line for line in open("/proc/meminfo") if line.startswith("MemTotal"))
        info["memory_gb"] = round(int(mem.split()[1]) / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    info.update(
        python=platform.python_version(),
        tensorflow=tf.__version__,
        gpu=[d.name for d in tf.config.list_physical_devices("GPU")] or "none",
        TF_ENABLE_ONEDNN_OPTS=os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset (featurestore sets 1 for its import)"),
        onednn=_onednn_on(),
        tf_threads=(
            tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads(),
        ),
    )
    return info


def sgemm_gflops(size: int = 2048, repeat: int = 5) -> dict[str, float]:
    tf = tensorflow()

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    flop = 2.0 * size**3
    out = {}
    ta, tb = tf.constant(a), tf.constant(b)
    for name, fn in (("numpy", lambda: a @ b), ("tensorflow", lambda: tf.matmul(ta, tb).numpy())):
        fn()
        best = min(_timed(fn) for _ in range(repeat))
        out[name] = round(flop / best / 1e9, 1)
    return out


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def macs_per_word(o: ElmoOptions) -> dict[str, int]:
    """Multiply-adds of one word position, as ``ElmoBiLM.char_cnn`` and ``_lstm_layer`` compute them.

    Character CNN: per filter (width w, n filters) a VALID conv1d over ``max_chars`` embedded
    characters, (C - w + 1) positions x w x D x n; its max over positions is comparisons, counted
    apart (``maxpool_compares``, not in the total). Highway: two F x F products a layer; projection
    F x P. LSTM, per step, direction and layer: ``[x, m_prev] @ W`` (2P x 4H) and the H x P
    projection; a word is one step of each direction of each layer (the embedder computes no
    marker step). Element-wise work (gates, clips, bias) is left out: it is O(H), not O(H x P).
    """
    C, D, F, P, H = o.max_chars, o.char_embed_dim, o.n_filters, o.projection_dim, o.lstm_dim
    conv = sum((C - w + 1) * w * D * n for w, n in o.filters)
    gates = 2 * P * 4 * H
    lstm_proj = H * P if P < H else 0
    out = {
        "char_conv": conv,
        "maxpool_compares": sum((C - w + 1) * n for w, n in o.filters),
        "highway": o.n_highway * 2 * F * F,
        "cnn_projection": F * P if F != P else 0,
        "lstm_gates_per_step": gates,
        "lstm_projection_per_step": lstm_proj,
        "lstm": 2 * o.n_layers * (gates + lstm_proj),
    }
    out["token_embedding"] = out["char_conv"] + out["highway"] + out["cnn_projection"]
    out["total"] = out["token_embedding"] + out["lstm"]
    return out


def lstm_gemm_rates(
    o: ElmoOptions, batches: tuple[int, ...] = (64, 128, 256, 512), repeat: int = 7
) -> list[dict[str, object]]:
    """fp32 GFLOP/s of TF's matmul at the LSTM's per-step products, both directions batched as the
    embedder runs them (``[2, B, 2P] @ [2, 2P, 4H]`` and ``[2, B, H] @ [2, H, P]``), eager on
    constants (a CPU op returns when done), best and median of ``repeat`` after one warm-up."""
    tf = tensorflow()
    rng = np.random.default_rng(0)
    P, H = o.projection_dim, o.lstm_dim
    weights = {
        "gates": tf.constant(rng.standard_normal((2, 2 * P, 4 * H), dtype=np.float32) * 0.05),
        "projection": tf.constant(rng.standard_normal((2, H, P), dtype=np.float32) * 0.05),
    }
    found = []
    for b in batches:
        for name, w in weights.items():
            x = tf.constant(rng.standard_normal((2, b, int(w.shape[1])), dtype=np.float32))
            tf.matmul(x, w)
            times = sorted(_timed(partial(tf.matmul, x, w)) for _ in range(repeat))
            flop = 2.0 * 2 * b * int(w.shape[1]) * int(w.shape[2])
            found.append(
                {
                    "product": name,
                    "shape": f"[2,{b},{int(w.shape[1])}]@[2,{int(w.shape[1])},{int(w.shape[2])}]",
                    "batch": b,
                    "best_gflops": round(flop / times[0] / 1e9, 1),
                    "median_gflops": round(flop / times[len(times) // 2] / 1e9, 1),
                }
            )
    return found


def batch_distinct_share(texts: list[str], max_tokens: int, max_size: int) -> float:
    """Distinct words a batch / words, over the embedder's batches of ``texts``: the share of positions whose
    first LSTM layer's input product ours computes (once per distinct word of a batch)."""
    todo = [t.split() for t in texts if t.strip()]
    batches = plan_batches([len(s) for s in todo], max_tokens, max_size)
    distinct = sum(len({w for j in b for w in todo[j]}) for b in batches)
    return distinct / max(1, sum(len(s) for s in todo))


def fp32_ceiling(
    o: ElmoOptions, texts: list[str], batch: int, max_tokens: int = ElmoEmbedder.max_batch_tokens
) -> dict[str, object]:
    """The fp32 ceiling on this machine: measured LSTM GEMM rate / (2 x multiply-adds a word).

    The rate is the best over the LSTM shapes and batch sizes measured, up to the embedder's
    largest batch (a generous ceiling: the char CNN's convolutions, the shrinking rows of a packed
    batch and a short run's smaller batches all run slower). Word costs: the whole model at
    every word (any exact ELMo without a word cache), the work ours does on these texts (char
    CNN once per distinct word, cold cache; the first LSTM layer's input products once per distinct word
    of a batch), the LSTM's recurrent work alone (a bound no exact fp32 ELMo can pass whatever it caches:
    every word needs the ``m_prev`` products of its 4 LSTM steps, the projections and the second layer's
    input products), and AllenNLP's (markers are positions, char CNN at every position), to turn its
    words/s into GFLOP/s.
    """
    macs = macs_per_word(o)
    load_before = round(os.getloadavg()[0], 2)
    run_batch = min(batch, len(texts))
    rates = lstm_gemm_rates(o, batches=tuple(sorted({64, 128, 256, 512, run_batch})))
    rate = max(r["best_gflops"] for r in rates)
    at_batch = max(r["best_gflops"] for r in rates if r["batch"] == run_batch)
    words = [w for t in texts for w in t.split()]
    distinct = len(set(words)) / max(1, len(words))
    # AllenNLP runs <S> and </S> as positions too, and the char CNN at every position.
    peer_positions = (len(words) + 2 * len(texts)) / max(1, len(words))
    # The first layer's input half of the gate products (input @ W_input, both directions) depends on the word
    # alone: ours computes it per distinct word of a batch.
    first_input = 2 * o.projection_dim * 4 * o.lstm_dim
    in_batch = batch_distinct_share(texts, max_tokens, batch)
    per_word = {
        "full_model": macs["total"],
        "ours_with_word_cache": (
            macs["lstm"] - round((1 - in_batch) * first_input) + round(distinct * macs["token_embedding"])
        ),
        "lstm_only": macs["lstm"] - first_input,
        "allennlp_work": round(peer_positions * macs["total"]),
    }
    return {
        "macs_per_word": macs,
        "gemm": rates,
        "gemm_gflops": rate,
        "gemm_gflops_at_batch": at_batch,
        "batch": run_batch,
        "distinct_word_share": round(distinct, 4),
        "distinct_in_batch_share": round(in_batch, 4),
        "macs_per_word_by_case": per_word,
        "ceiling_words_per_s": {k: round(rate * 1e9 / (2 * v), 1) for k, v in per_word.items()},
        "load_avg_before": load_before,
        "load_avg_after": round(os.getloadavg()[0], 2),
    }


def print_ceiling(c: dict[str, object], peer_wps: float | None, peer_note: str, ours_wps: float | None) -> None:
    m = c["macs_per_word"]
    print(
        f"ceiling: multiply-adds a word (from the options; conv over positions, max-pool compares apart): "
        f"char CNN {m['char_conv']:,} (+{m['maxpool_compares']:,} max-pool compares), highway {m['highway']:,}, "
        f"projection {m['cnn_projection']:,} = token embedding {m['token_embedding']:,}; LSTM a step a direction "
        f"a layer {m['lstm_gates_per_step']:,} gates + {m['lstm_projection_per_step']:,} projection, x4 = "
        f"{m['lstm']:,}; total {m['total']:,} MACs = {2 * m['total'] / 1e6:.1f} MFLOP a word",
        flush=True,
    )
    for r in c["gemm"]:
        print(
            f"ceiling: TF fp32 matmul {r['product']:10s} {r['shape']:26s} best {r['best_gflops']:6.1f} "
            f"median {r['median_gflops']:6.1f} GFLOP/s",
            flush=True,
        )
    print(
        f"ceiling: GEMM rate {c['gemm_gflops']} GFLOP/s (best LSTM-shaped product, any batch; at this run's batch "
        f"{c['batch']}: {c['gemm_gflops_at_batch']}); 1-min load {c['load_avg_before']} before, "
        f"{c['load_avg_after']} after, on {os.cpu_count()} cores",
        flush=True,
    )
    labels = {
        "full_model": "whole model at every word",
        "ours_with_word_cache": (
            f"ours' work on these texts (CNN on {100 * c['distinct_word_share']:.0f}% distinct "
            f"words, first LSTM inputs on {100 * c['distinct_in_batch_share']:.0f}%)"
        ),
        "lstm_only": "LSTM without the first layer's input products (no exact fp32 ELMo does less)",
    }
    for k, label in labels.items():
        wps = c["ceiling_words_per_s"][k]
        vs = f" = {wps / peer_wps:.2f}x AllenNLP ({peer_wps} words/s, {peer_note})" if peer_wps else ""
        reach = f"; ours reaches {100 * ours_wps / wps:.0f}% of it" if ours_wps and k == "ours_with_word_cache" else ""
        print(
            f"ceiling: {wps:.0f} words/s{vs} -- {label}, {c['gemm_gflops']} GFLOP/s / "
            f"(2 x {c['macs_per_word_by_case'][k]:,}){reach}",
            flush=True,
        )
    if peer_wps:
        peer_gflops = peer_wps * 2 * c["macs_per_word_by_case"]["allennlp_work"] / 1e9
        print(
            f"ceiling: AllenNLP computes {c['macs_per_word_by_case']['allennlp_work']:,} MACs a word (markers and char "
            f"CNN at every position): {peer_wps} words/s is {peer_gflops:.0f} GFLOP/s, "
            f"{100 * peer_gflops / c['gemm_gflops']:.0f}% of that GEMM rate",
            flush=True,
        )
        need = 3 * peer_wps * 2 * c["macs_per_word_by_case"]["ours_with_word_cache"] / 1e9
        print(
            f"ceiling: 3x AllenNLP = {3 * peer_wps:.0f} words/s needs {need:.0f} GFLOP/s sustained over ours' work, "
            f"{100 * need / c['gemm_gflops']:.0f}% of the best LSTM-shaped GEMM measured",
            flush=True,
        )


def run_peer(n: int, model_dir: Path) -> dict[str, object]:
    """The peer's length-sorted pass: its last stdout line, parsed."""
    python = peer_dir() / "venv" / "bin" / "python"
    cmd = [
        str(python),
        str(PEER_SCRIPT),
        "--n",
        str(n),
        "--orders",
        "sorted",
        "--skip-sgemm",
        "--model-dir",
        str(model_dir),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"peer failed ({proc.returncode}): {proc.stderr[-2000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    (sorted_pass,) = [p for p in summary["passes"] if p["order"] == "sorted"]
    return {
        "tok_per_s": sorted_pass["tok_per_s"],
        "tok_per_s_excl_first": sorted_pass["tok_per_s_excl_first"],
        "total_s": sorted_pass["total_s"],
        "tokens": sorted_pass["tokens"],
        "torch": summary["torch"],
        "load_s": summary["load_s"],
        "peak_rss_mb": summary["peak_rss_mb"],
    }


def run_ours(emb: NativeElmoEmbedder, texts: list[str]) -> dict[str, object]:
    emb.clear_token_cache()  # cold: every word's character CNN counts, as in a first ingest
    t = time.perf_counter()
    vecs = emb.embed(texts)
    dt = time.perf_counter() - t
    words = sum(len(s.split()) for s in texts)
    return {"words": words, "seconds": round(dt, 2), "words_per_s": round(words / dt, 1), "vectors": vecs}


def reference_vectors(emb: ElmoEmbedder, texts: list[str]) -> np.ndarray:
    """The elmo mix by the reference path: all positions with markers, zero state, no caches."""
    layers, n, _ = emb.bilm.sentence_layers([t.split() for t in texts])
    return np.stack(
        [
            layers[:, b, : n[b]].mean(axis=(0, 1)) if n[b] else np.zeros(layers.shape[-1], np.float32)
            for b in range(len(texts))
        ]
    )


def sweep(args: argparse.Namespace) -> dict[str, object]:
    """Batch shapes by measurement: each size once a round, rounds interleaved against load drift."""
    sizes = [int(x) for x in args.sweep.split(",")]
    texts = load_tweets(args.n)
    words = sum(len(t.split()) for t in texts)
    model = peer_dir() / "elmo_full_random"
    with tempfile.TemporaryDirectory() as tmp:
        if not (model / "weights.hdf5").is_file():
            model = Path(tmp)
            write_random_model(model)
        emb = ElmoEmbedder.from_path(str(model))
    emb.embed(["warm up the graph"])
    print(f"machine: {machine()}\nsweep: {len(texts)} tweets, {words} words; words/s per max_batch_size", flush=True)
    found: dict[int, list[float]] = {n: [] for n in sizes}
    for r in range(max(1, args.rounds)):
        for n in sizes:
            emb.max_batch_size, emb.max_batch_tokens = n, 64 * n
            found[n].append(run_ours(emb, texts)["words_per_s"])
            print(
                f"  round {r + 1} max_batch_size {n:5d}: {found[n][-1]} words/s (load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    res = {"sweep": {str(n): v for n, v in found.items()}, "words": words}
    print("best of rounds: " + ", ".join(f"{n}: {max(v)}" for n, v in found.items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return res


def backends(args: argparse.Namespace) -> dict[str, object]:
    """Native ELMo on TensorFlow and on torch (``elmo_torch``): words/s on the same tweets and weights,
    in interleaved rounds (TF then torch each round, cold word caches), and the vectors' max abs diff.

    Also CPU seconds (this process, all threads) per run: words per CPU-second is what a busy machine
    shows best, where wall time depends on what else runs. ``elmo_torch.CPU_DEFAULT`` is set from it.
    """
    from featurestore.embedders.elmo_torch import ElmoTorchEmbedder

    texts = load_tweets(args.n)
    words = sum(len(t.split()) for t in texts)
    model = peer_dir() / "elmo_full_random"
    with tempfile.TemporaryDirectory() as tmp:
        if not (model / "weights.hdf5").is_file():
            model = Path(tmp)
            write_random_model(model)
        found: dict[str, NativeElmoEmbedder] = {
            "tf": ElmoEmbedder.from_path(str(model)),
            "torch": ElmoTorchEmbedder.from_path(str(model)),
        }
    for emb in found.values():
        emb.embed(["warm up the graph"])
    res: dict[str, object] = {"machine": machine(), "n": args.n, "words": words, "rounds": []}
    print(f"machine: {res['machine']}\nbackends: {len(texts)} tweets, {words} words, full-size model", flush=True)
    for r in range(max(1, args.rounds)):
        row: dict[str, object] = {"load_avg_before": round(os.getloadavg()[0], 2)}
        vectors: dict[str, np.ndarray] = {}
        for name, emb in found.items():
            cpu = time.process_time()
            ran = run_ours(emb, texts)
            cpu = time.process_time() - cpu
            vectors[name] = np.asarray(ran.pop("vectors"))
            row[name] = {**ran, "cpu_s": round(cpu, 2), "words_per_cpu_s": round(words / cpu, 1)}
            print(
                f"  round {r + 1} {name:5s}: {ran['words_per_s']} words/s, {ran['seconds']}s, CPU {cpu:.1f}s "
                f"({words / cpu:.1f} words per CPU-second), load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        row["torch_over_tf"] = round(row["torch"]["words_per_s"] / row["tf"]["words_per_s"], 2)  # type: ignore[index]
        row["max_abs_diff"] = float(np.abs(vectors["tf"] - vectors["torch"]).max())
        print(
            f"  round {r + 1} torch / tf: {row['torch_over_tf']}x words/s; vectors max abs diff "
            f"{row['max_abs_diff']:.2e} (|v| up to {np.abs(vectors['tf']).max():.1f})",
            flush=True,
        )
        res["rounds"].append(row)  # type: ignore[attr-defined]
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str))
    return res


def ceiling_only(args: argparse.Namespace) -> dict[str, object]:
    res: dict[str, object] = {"machine": machine(), "n": args.n}
    print(f"machine: {res['machine']}", flush=True)
    texts = load_tweets(args.n)
    batch = args.max_batch_size or ElmoEmbedder.max_batch_size
    res["ceiling"] = c = fp32_ceiling(
        ElmoOptions.from_dict(ORIGINAL_OPTIONS), texts, batch, args.max_batch_tokens or ElmoEmbedder.max_batch_tokens
    )
    print_ceiling(c, args.peer_words_per_s, "given by --peer-words-per-s, not measured in this run", None)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str))
    return res


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="tweets, first N rows of the AV train file (default 2000)")
    parser.add_argument("--rounds", type=int, default=1, help="peer-then-ours pairs (default 1)")
    parser.add_argument("--no-peer", action="store_true", help="ours only")
    parser.add_argument("--max-batch-tokens", type=int, default=None, help="override ElmoEmbedder.max_batch_tokens")
    parser.add_argument("--max-batch-size", type=int, default=None, help="override ElmoEmbedder.max_batch_size")
    parser.add_argument(
        "--sweep",
        default=None,
        metavar="SIZES",
        help="ours only: max_batch_size values (token budget 64 x size), e.g. 128,256,512,1024, "
        "run in interleaved rounds in this process",
    )
    parser.add_argument(
        "--backends",
        action="store_true",
        help="ours only: native ELMo on TensorFlow against the same on torch (elmo_torch), interleaved rounds",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument(
        "--ceiling-only",
        action="store_true",
        help="only the ceiling section (MACs a word, LSTM-shaped GEMM rates); no peer or ours run",
    )
    parser.add_argument(
        "--peer-words-per-s",
        type=float,
        default=322.7,
        help="with --ceiling-only: AllenNLP's words/s to compare the ceiling with (default 322.7, "
        "docs/elmo.md's quiet-machine run, --n 500, load 1.6)",
    )
    args = parser.parse_args(argv)
    if args.sweep:
        return sweep(args)
    if args.backends:
        return backends(args)
    if args.ceiling_only:
        return ceiling_only(args)

    res: dict[str, object] = {"machine": machine(), "n": args.n}
    print(f"machine: {res['machine']}", flush=True)
    texts = load_tweets(args.n)
    words = sum(len(t.split()) for t in texts)
    print(f"tweets: first {len(texts)} rows of {DATA.name}, tutorial cleaning: {words} words", flush=True)

    peer_model = peer_dir() / "elmo_full_random"
    has_peer = (peer_dir() / "venv" / "bin" / "python").is_file() and (peer_model / "weights.hdf5").is_file()
    if not has_peer and not args.no_peer:
        print(
            f"peer: no venv/weights under {peer_dir()}; build them as {PEER_README} says (about 1 minute: "
            "section 1 venv, then gen_random_weights.py), then rerun. Ours only.",
            flush=True,
        )
    with tempfile.TemporaryDirectory() as tmp:
        model = peer_model if has_peer else Path(tmp)
        if not has_peer:
            write_random_model(model)
        t0 = time.perf_counter()
        kwargs = {"max_batch_tokens": args.max_batch_tokens} if args.max_batch_tokens else {}
        emb = ElmoEmbedder.from_path(str(model), **kwargs)
        if args.max_batch_size:
            emb.max_batch_size = args.max_batch_size
        load_s = time.perf_counter() - t0
        from featurestore.embedders.elmo_torch import ElmoTorchEmbedder

        on_torch = ElmoTorchEmbedder.from_path(str(model), **kwargs)  # the same files on the other backend
        on_torch.max_batch_size = emb.max_batch_size
    t0 = time.perf_counter()
    emb.embed(["warm up the graph"])
    first = time.perf_counter() - t0
    on_torch.embed(["warm up"])
    print(
        f"model: {model if has_peer else 'random weights, elmo_2x4096_512_2048cnn_2xhighway shapes'} "
        f"({emb.bilm.n_parameters:,} parameters); ours: load {load_s:.1f}s, first call (graph build) {first:.1f}s, "
        f"max_batch_tokens {emb.max_batch_tokens}, max_batch_size {emb.max_batch_size}",
        flush=True,
    )

    gemm = sgemm_gflops()
    rounds = []
    for r in range(max(1, args.rounds)):
        row: dict[str, object] = {"load_avg_before": round(os.getloadavg()[0], 2)}
        if has_peer and not args.no_peer:
            row["peer"] = peer = run_peer(args.n, peer_model)
            assert peer["tokens"] == words, (peer["tokens"], words)
            print(
                f"[round {r + 1}] peer  AllenNLP 0.9.0 (torch {peer['torch']}), length-sorted batches of 64: "
                f"{peer['tok_per_s']} words/s ({peer['tok_per_s_excl_first']} excl. first batch), "
                f"{peer['total_s']}s",
                flush=True,
            )
        ours = run_ours(emb, texts)
        del ours["vectors"]  # the row is printed and saved as JSON
        row["ours"] = ours
        print(f"[round {r + 1}] ours  native TF2 ELMo: {ours['words_per_s']} words/s, {ours['seconds']}s", flush=True)
        row["torch"] = torch_run = run_ours(on_torch, texts)
        del torch_run["vectors"]
        print(
            f"[round {r + 1}] ours  native ELMo on torch (FS_ELMO_BACKEND=torch): {torch_run['words_per_s']} words/s, "
            f"{torch_run['seconds']}s = {torch_run['words_per_s'] / ours['words_per_s']:.2f}x TF",  # type: ignore[operator]
            flush=True,
        )
        if "peer" in row:
            row["ratio"] = round(ours["words_per_s"] / row["peer"]["tok_per_s"], 2)
            row["ratio_vs_peer_excl_first"] = round(ours["words_per_s"] / row["peer"]["tok_per_s_excl_first"], 2)
        row["load_avg_after"] = round(os.getloadavg()[0], 2)
        if "peer" in row:
            print(
                f"[round {r + 1}] ratio ours / peer: {row['ratio']}x ({row['ratio_vs_peer_excl_first']}x against "
                f"the peer without its first batch); 1-min load average {row['load_avg_before']} before the peer, "
                f"{row['load_avg_after']} after ours, on {os.cpu_count()} cores",
                flush=True,
            )
        rounds.append(row)
    res["rounds"] = rounds
    gemm_after = sgemm_gflops()
    best = max(*gemm.values(), *gemm_after.values())
    ceiling = best / GFLOP_PER_WORD
    top = max(r["ours"]["words_per_s"] for r in rounds)
    res["sgemm_gflops"] = {"before": gemm, "after": gemm_after}
    res["ceiling_words_per_s"] = round(ceiling, 1)
    res["pct_of_ceiling"] = round(100 * top / ceiling, 1)
    print(
        f"sgemm 2048^3 GFLOP/s before {gemm}, after {gemm_after}: ceiling {best} / {GFLOP_PER_WORD} = "
        f"{ceiling:.0f} words/s; ours at best {top} words/s = {res['pct_of_ceiling']}% of it "
        "(above 100% is possible: the word cache and the marker shortcut skip part of the 0.204 GFLOP)",
        flush=True,
    )

    res["ceiling"] = c = fp32_ceiling(emb.bilm.options, texts, emb.max_batch_size, emb.max_batch_tokens)
    peers = [r["peer"]["tok_per_s"] for r in rounds if "peer" in r]
    print_ceiling(c, max(peers) if peers else None, "best round of this run", top)

    sample = texts[:64]
    diff = float(np.abs(emb.embed(sample) - reference_vectors(emb, sample)).max())
    res["max_abs_diff_vs_reference_path"] = diff
    print(
        f"vectors vs the reference path (markers computed, no caches), first {len(sample)} tweets: "
        f"max abs diff {diff:.2e}; graph traces {emb.traces}",
        flush=True,
    )
    ratios = [r["ratio"] for r in rounds if "ratio" in r]
    if ratios:
        print(f"RESULT ours/peer ratios: {ratios} (goal >= 3x)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str))
        print(f"wrote {args.json}")
    return res


if __name__ == "__main__":
    main()
