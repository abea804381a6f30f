"""Native ELMo speed: our embedder against the tutorial's loop, on a full-size random-weight model.

Run: ``[TF_ENABLE_ONEDNN_OPTS=1] .venv/bin/python bench/elmo.py [--n 2000] [--tutorial-n 300] [--json out.json]``

The model has the exact shapes of ``elmo_2x4096_512_2048cnn_2xhighway`` (93.6M parameters)
with random weights, so the cost is the real one. Tweets are the av-twitter-sentiment train
set, cleaned with the ``tweet-v1`` recipe. Reported, all measured in this one run:

- the machine, and sgemm GFLOP/s (large float32 matmuls) -> ceiling tokens/s = GFLOP/s / 0.204
  (the biLM's GFLOP per token);
- our tokens/s (real words, markers and padding not counted) and its share of the ceiling;
- the tutorial's loop on the same model and the same network code: batches of 100 tweets in
  file order, padded to the longest and every padded position computed (``layers(packed=False)``,
  as bilm-tf's ``dynamic_rnn``), the character CNN on every position, no token cache ->
  speed ratio (and LSTM positions computed per word, both ways);
- that both give the same vectors; peak RSS while embedding; the first call (graph build).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featurestore.embedders.elmo import ElmoEmbedder, char_ids, pool_layers, tokenize  # noqa: E402
from featurestore.embedders.elmo_spec import OUTPUT_ELMO  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "av-twitter-sentiment" / "train_2kmZucJ.csv"
GFLOP_PER_TOKEN = 0.204
ORIGINAL_OPTIONS = {
    "lstm": {"use_skip_connections": True, "projection_dim": 512, "cell_clip": 3, "proj_clip": 3,
             "dim": 4096, "n_layers": 2},
    "char_cnn": {"activation": "relu", "filters": [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]],
                 "n_highway": 2, "embedding": {"dim": 16}, "n_characters": 262, "max_characters_per_token": 50},
}


def write_random_model(folder: Path, seed: int = 0) -> int:
    """options.json + weights.hdf5 with the original's shapes and random weights; returns the parameter count."""
    import h5py

    from featurestore.embedders.elmo import ElmoOptions, _expected_shapes

    (folder / "options.json").write_text(json.dumps(ORIGINAL_OPTIONS))
    opts = ElmoOptions.from_dict(ORIGINAL_OPTIONS)
    rng = np.random.default_rng(seed)
    shapes = {"char_embed": (261, 16), **_expected_shapes(opts)}
    total = 0
    with h5py.File(folder / "weights.hdf5", "w") as f:
        for name, shape in shapes.items():
            fan_in = shape[-2] if len(shape) >= 2 else 1
            scale = 1.0 / np.sqrt(fan_in * (shape[1] if len(shape) == 4 else 1))
            f.create_dataset(name, data=(rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float32))
            total += int(np.prod(shape))
    return total


def load_tweets(n: int) -> tuple[list[str], str]:
    with open(DATA, newline="", encoding="utf8") as f:
        raw = [row["tweet"] for row in csv.DictReader(f)]
    try:
        from featurestore.clean import get_recipe

        recipe = "tweet-v1"
        cleaned = get_recipe(recipe).clean(raw)
    except Exception as exc:  # spaCy tables missing: fall back to whitespace cleaning
        recipe = f"whitespace (tweet-v1 failed: {exc})"
        cleaned = [" ".join(t.split()) for t in raw]
    texts = [t for t in cleaned if t.strip()]
    out = [texts[i % len(texts)] for i in range(n)]  # cycles through the file when n > its size
    return out, recipe


def machine() -> dict[str, object]:
    import tensorflow as tf

    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    # oneDNN's matmuls pick AVX2/FMA kernels at run time; TF's own (Eigen) ones are built for AVX.
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset (TF's default for this CPU)")
    return {"cpu": cpu, "cores": os.cpu_count(), "tensorflow": tf.__version__, "gpu": gpus or "none",
            "TF_ENABLE_ONEDNN_OPTS": onednn}


def sgemm_gflops(size: int = 2048, repeat: int = 5) -> dict[str, float]:
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    flop = 2.0 * size**3
    best_np = 0.0
    a @ b
    for _ in range(repeat):
        t = time.perf_counter()
        a @ b
        best_np = max(best_np, flop / (time.perf_counter() - t) / 1e9)
    ta, tb = tf.constant(a), tf.constant(b)
    tf.matmul(ta, tb).numpy()
    best_tf = 0.0
    for _ in range(repeat):
        t = time.perf_counter()
        tf.matmul(ta, tb).numpy()
        best_tf = max(best_tf, flop / (time.perf_counter() - t) / 1e9)
    return {"numpy": best_np, "tensorflow": best_tf}


class PeakRSS:
    """Samples this process's resident memory while a block runs."""

    def __enter__(self) -> "PeakRSS":
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            self._stop.wait(0.05)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class TutorialLoop:
    """The tutorial's procedure, computed by our network code (``char_cnn``, ``layers``,
    ``pool_layers``): batches of 100 tweets in file order, each padded to its longest tweet, the
    character CNN at every position (padding included, id 0 as bilm-tf feeds it), no token cache.
    Only the procedure differs from the embedder, so the ratio measures the procedure."""

    def __init__(self, embedder: ElmoEmbedder) -> None:
        import tensorflow as tf

        self.bilm = bilm = embedder.bilm
        o = bilm.options

        def run(ids, lengths):
            B, T = tf.shape(ids)[0], tf.shape(ids)[1]
            emb = tf.reshape(bilm.char_cnn(tf.reshape(ids, [-1, o.max_chars])), [B, T, o.projection_dim])
            c0 = tf.zeros([o.n_layers, 2, B, o.lstm_dim])
            m0 = tf.zeros([o.n_layers, 2, B, o.projection_dim])
            # every padded position computed, markers included, as bilm-tf's dynamic_rnn does
            layers, _, _ = bilm.layers(emb, lengths, c0, m0, packed=False)
            return pool_layers(layers, lengths, OUTPUT_ELMO)

        self.fn = tf.function(run, input_signature=[tf.TensorSpec([None, None, o.max_chars], tf.int32),
                                                     tf.TensorSpec([None], tf.int32)])

    @staticmethod
    def positions(texts: list[str], batch: int = 100) -> int:
        """Positions the LSTM computes (markers and padding included)."""
        n = [len(tokenize(t)) + 2 for t in texts]
        return sum(len(n[i : i + batch]) * max(n[i : i + batch]) for i in range(0, len(n), batch))

    def embed(self, texts: list[str], batch: int = 100) -> np.ndarray:
        C = self.bilm.options.max_chars
        out = []
        for start in range(0, len(texts), batch):
            sents = [["<S>", *tokenize(t), "</S>"] for t in texts[start : start + batch]]
            T = max(len(s) for s in sents)
            ids = np.zeros((len(sents), T, C), np.int32)  # padding positions: id 0, as bilm-tf feeds them
            for b, s in enumerate(sents):
                ids[b, : len(s)] = [char_ids(t, C) for t in s]
            out.append(self.fn(ids, np.array([len(s) for s in sents], np.int32)).numpy())
        return np.concatenate(out)


def our_positions(texts: list[str]) -> int:
    """Positions each LSTM direction computes in the embedder: packed batches compute no
    padding, and the pooled vector skips the forward step at ``</S>`` and the backward one at
    ``<S>``, so a tweet of n words costs n + 1 steps."""
    return sum(len(tokenize(t)) + 1 for t in texts if t.strip())


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="tweets embedded by our embedder (default 2000)")
    parser.add_argument("--tutorial-n", type=int, default=300, help="tweets for the slow tutorial loop (default 300)")
    parser.add_argument("--max-batch-tokens", type=int, default=None, help="override ElmoEmbedder.max_batch_tokens")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    res: dict[str, object] = {"machine": machine()}
    print(f"machine: {res['machine']}")
    gemm_before = sgemm_gflops()

    tweets, recipe = load_tweets(max(args.n, args.tutorial_n))
    res["cleaning"] = recipe
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        n_params = write_random_model(Path(tmp))
        res["parameters"] = n_params
        print(f"model: elmo_2x4096_512_2048cnn_2xhighway shapes, random weights, {n_params:,} parameters "
              f"(written in {time.perf_counter() - t0:.1f}s); tweets cleaned with {recipe}")
        t0 = time.perf_counter()
        kwargs = {"max_batch_tokens": args.max_batch_tokens} if args.max_batch_tokens else {}
        emb = ElmoEmbedder.from_path(tmp, **kwargs)
        res["load_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    emb.embed(["warm up the graph"])
    res["first_call_s"] = time.perf_counter() - t0
    print(f"load {res['load_s']:.1f}s; first call (graph build) {res['first_call_s']:.1f}s, reported apart")

    texts = tweets[: args.n]
    n_tok = sum(len(tokenize(t)) for t in texts)
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        ours = emb.embed(texts)
        dt = time.perf_counter() - t0
    rate = n_tok / dt

    # The tutorial loop, and ours again on the same tweets right before and after it (cold
    # token cache), so that the ratio is not skewed by the machine's speed drifting.
    loop = TutorialLoop(emb)
    sub = tweets[: args.tutorial_n]
    n_sub = sum(len(tokenize(t)) for t in sub)
    t0 = time.perf_counter()
    loop.embed(sub[:100])
    res["tutorial_first_call_s"] = time.perf_counter() - t0
    ours_sub = []
    for phase in ("before", "tutorial", "after"):
        t0 = time.perf_counter()
        if phase == "tutorial":
            theirs = loop.embed(sub)
            dt_t = time.perf_counter() - t0
        else:
            emb.clear_token_cache()
            mine = emb.embed(sub)
            ours_sub.append(time.perf_counter() - t0)
    gemm_after = sgemm_gflops()

    gemm = {k: max(gemm_before[k], gemm_after[k]) for k in gemm_before}
    best = max(gemm.values())
    res["sgemm_gflops"] = {"before": gemm_before, "after": gemm_after}
    res["ceiling_tokens_per_s"] = best / GFLOP_PER_TOKEN
    print(f"sgemm (best of before/after the runs): numpy {gemm['numpy']:.1f} GFLOP/s, tensorflow "
          f"{gemm['tensorflow']:.1f} GFLOP/s -> ceiling {best:.1f} / {GFLOP_PER_TOKEN} = "
          f"{res['ceiling_tokens_per_s']:.0f} tokens/s")
    pos = our_positions(texts) / n_tok
    res["ours"] = {"tweets": len(texts), "tokens": n_tok, "seconds": dt, "tokens_per_s": rate, "positions_per_word": pos,
                   "pct_of_ceiling": 100 * rate / res["ceiling_tokens_per_s"], "peak_rss_mb": rss.peak / 2**20,
                   "max_batch_tokens": emb.max_batch_tokens, "graph_traces": emb.traces}
    print(f"ours: {len(texts)} tweets, {n_tok} words in {dt:.1f}s = {rate:.0f} words/s = "
          f"{res['ours']['pct_of_ceiling']:.0f}% of ceiling (goal >= 50%); {pos:.2f} LSTM positions a word; peak RSS while embedding "
          f"{rss.peak / 2**20:.0f} MB; graph traces {emb.traces}; max_batch_tokens {emb.max_batch_tokens}")
    rate_t = n_sub / dt_t
    rate_o = n_sub / (sum(ours_sub) / len(ours_sub))
    diff = float(max(np.abs(theirs - mine).max(), np.abs(mine - ours[: len(sub)]).max()))
    pos_t = loop.positions(sub) / n_sub
    res["tutorial"] = {"tweets": len(sub), "tokens": n_sub, "seconds": dt_t, "tokens_per_s": rate_t, "positions_per_word": pos_t,
                       "ours_seconds_same_tweets": ours_sub, "ours_tokens_per_s_same_tweets": rate_o,
                       "speedup": rate_o / rate_t, "max_abs_diff_vs_ours": diff}
    print(f"tutorial loop: first {len(sub)} tweets in batches of 100, {n_sub} words in {dt_t:.1f}s = "
          f"{rate_t:.0f} words/s ({pos_t:.2f} LSTM positions a word); ours on the same tweets (cold token cache, timed before and after it) "
          f"{rate_o:.0f} words/s: {rate_o / rate_t:.2f}x faster (goal >= 3x); same vectors: max abs diff {diff:.2e}")
    res["peak_rss_process_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str))
        print(f"wrote {args.json}")
    return res


if __name__ == "__main__":
    main()
