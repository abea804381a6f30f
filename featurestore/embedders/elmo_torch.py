"""Native ELMo on PyTorch: the bilm-tf biLM of ``elmo`` from the same ``options.json`` + ``weights.hdf5``.

The same network as :mod:`featurestore.embedders.elmo` (character CNN with max-pool then activation,
highway, projection; per direction a stack of TF1 LSTMCells with projection, gate order i, j, f, o,
forget bias 1.0, cell and projection clipping, residual connections past the first layer), the same
character ids, tokenizer, pooling and word cache (:class:`~featurestore.embedders.elmo.NativeElmoEmbedder`),
so the same vectors within float32 rounding (tests/test_elmo_torch.py: 1e-5) and the same fingerprint:
a store filled on TensorFlow is extended on torch, and the drift canaries check it on first use.

Which framework runs a native ELMo (:func:`elmo_backend`): ``FS_ELMO_BACKEND=tf|torch`` if set; else
torch on a CUDA device or where TensorFlow is not installed, and on a CPU the one measured faster
(:data:`CPU_DEFAULT`, ``bench/elmo.py --backends``). torch is imported on use, not by this module.

The LSTM runs as the TF path's packed loop: rows sorted longest first, step t computes only the rows
still running (a prefix), the first layer's input products computed once per distinct word, the marker
steps (``<S>`` forward, ``</S>`` backward) once per model as the initial state, and the gates updated in
place. Both directions run in one batched matmul a step, or on a CPU with big steps in two threads, one a
direction (:meth:`TorchBiLM.run_lstms`). On a GPU the per-step Python loop (about ten kernel launches a
step) is the overhead left; capturing it (CUDA graphs, ``torch.compile``) is future work.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from featurestore.embedders.base import Embedder
from featurestore.embedders.elmo import (
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_CHAR,
    ElmoOptions,
    NativeElmoEmbedder,
    char_ids,
    load_weights,
    model_source,
    resolve_model_files,
)
from featurestore.embedders.elmo_spec import DEFAULT_ELMO_OUTPUT, OUTPUT_ALL, OUTPUT_ELMO, OUTPUT_TOP
from featurestore.embedders.minilm import torch_threads
from featurestore.errors import ModelError
from featurestore.machine import usable_cores

log = logging.getLogger(__name__)

#: the environment variable that forces a native ELMo's framework
BACKEND_ENV = "FS_ELMO_BACKEND"
#: the frameworks a native ELMo runs on
BACKENDS: tuple[str, ...] = ("tf", "torch")
#: the framework a CPU runs a native ELMo on when both are installed: the faster in ``bench/elmo.py --backends``
#: (2 busy cores, full-size model, 300 tweets: TensorFlow 1.03x and 1.21x torch's words/s in two rounds; docs/elmo.md)
CPU_DEFAULT = "tf"

#: a torch tensor in annotations (torch is imported on use)
TorchTensor = Any


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _cuda() -> bool:
    """Whether torch sees a CUDA device; torch is imported only where an NVIDIA driver is present."""
    if not (os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")):
        return False
    import torch

    return bool(torch.cuda.is_available())


def elmo_backend() -> str:
    """The framework that runs a native ELMo: ``"tf"`` or ``"torch"`` (both give one vector space).

    ``FS_ELMO_BACKEND`` (tf or torch) if set; else torch on a CUDA device or without TensorFlow,
    TensorFlow without torch, and :data:`CPU_DEFAULT` on a CPU with both.
    """
    want = os.environ.get(BACKEND_ENV, "").strip().lower()
    if want and want not in BACKENDS:
        raise ModelError(
            f"{BACKEND_ENV}={want!r} is not an ELMo backend; fix: set it to {' or '.join(BACKENDS)}, or unset it"
        )
    if want == "torch" and not _installed("torch"):
        raise ModelError(f"{BACKEND_ENV}=torch but torch is not installed; fix: pip install torch, or unset it")
    if want:
        return want
    if not _installed("torch"):
        return "tf"
    if not _installed("tensorflow") or _cuda():
        return "torch"
    return CPU_DEFAULT


def load_native_elmo(path: str | os.PathLike, output: str = DEFAULT_ELMO_OUTPUT) -> Embedder:
    """A native ELMo (bilm-tf files) on the framework :func:`elmo_backend` picks."""
    if elmo_backend() == "torch":
        return ElmoTorchEmbedder.from_path(path, output=output)
    from featurestore.embedders.elmo import ElmoEmbedder

    return ElmoEmbedder.from_path(path, output=output)


def _rows_per_step(lengths: np.ndarray, T: int) -> list[int]:
    """For lengths sorted longest first: how many rows still run at each step (a prefix of the rows)."""
    return [int(n) for n in (lengths[None, :] > np.arange(T)[:, None]).sum(axis=1)]


def _reversed_positions(lengths: np.ndarray, T: int) -> np.ndarray:
    """int64[T, B]: position t of row b read backwards (``length - 1 - t``); padding stays where it is.

    Its own inverse, so it turns a backward sequence forward again (TF's ``reverse_sequence``).
    """
    t = np.arange(T)[:, None]
    return np.where(t < lengths[None, :], lengths[None, :] - 1 - t, t).astype(np.int64)


class TorchBiLM:
    """The biLM's weights as torch tensors (no autograd) and the computations over them.

    Shapes as :class:`~featurestore.embedders.elmo.ElmoBiLM`: ``char_ids`` int[N, max_chars]; token
    embeddings float32[N, projection_dim]; LSTM states ``(c, m)`` float32[n_layers, 2, B, lstm_dim] /
    [n_layers, 2, B, projection_dim] (direction 0 forward, 1 backward).
    """

    #: gate values a step computes (rows x 4H) from which the two directions run in two threads on a CPU
    #: (else one thread runs both): below it the threads' hand-offs cost more than they save
    min_parallel_work = 1 << 16
    #: multiply-adds of a character-CNN call from which it runs on every usable core (else on one)
    min_parallel_macs = 1 << 28

    def __init__(self, options: ElmoOptions, weights: dict[str, np.ndarray], device: str = "cpu") -> None:
        import torch

        self.options = o = options
        self.device = device
        self.n_parameters = int(sum(w.size for w in weights.values()))

        def t(value: np.ndarray) -> TorchTensor:
            return torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)).to(device)

        table = weights["char_embed"][: PAD_CHAR + 1]
        # Shifted id 0 (no character) looks up a zero row, as in bilm-tf and AllenNLP.
        self.char_embed = t(np.concatenate([np.zeros((1, table.shape[1]), np.float32), table]))
        # bilm-tf's W_cnn_i [1, width, D, n] -> torch's conv1d weight [n, D, width] (both cross-correlate)
        self.conv = [
            (t(weights[f"CNN/W_cnn_{i}"][0].transpose(2, 1, 0)), t(weights[f"CNN/b_cnn_{i}"]))
            for i in range(len(o.filters))
        ]
        self.highway = [
            tuple(t(weights[f"CNN_high_{i}/{n}"]) for n in ("W_carry", "b_carry", "W_transform", "b_transform"))
            for i in range(o.n_highway)
        ]
        self.proj = None
        if o.n_filters != o.projection_dim:
            self.proj = (t(weights["CNN_proj/W_proj"]), t(weights["CNN_proj/b_proj"]))
        # self.lstm[layer] = (W [2, 2P, 4H], B [2, 1, 4H], W_proj [2, H, P] or None): axis 0 is the
        # direction; W is TF1 LSTMCell's kernel, rows for the input, then for m_prev. Its gate columns
        # (i, j, f, o) are reordered to (i, f, o, j), so that one sigmoid runs over three contiguous
        # gates, and the forget bias 1.0 that LSTMCell adds inside the sigmoid is folded into B.
        H = o.lstm_dim
        gate_order = np.concatenate([np.arange(0, H), np.arange(2 * H, 4 * H), np.arange(H, 2 * H)])
        self.lstm = []
        for k in range(o.n_layers):
            cells = [f"RNN_{d}/RNN/MultiRNNCell/Cell{k}/LSTMCell/" for d in range(2)]
            bias = np.stack([weights[c + "B"][None, :] for c in cells])[..., gate_order]
            bias[..., H : 2 * H] += 1.0
            self.lstm.append(
                (
                    t(np.stack([weights[c + "W_0"] for c in cells])[..., gate_order]),
                    t(bias),
                    t(np.stack([weights[c + "W_P_0"] for c in cells])) if o.projection_dim < o.lstm_dim else None,
                )
            )

    @classmethod
    def from_files(
        cls, options_path: str | os.PathLike, weights_path: str | os.PathLike, device: str = "cpu"
    ) -> TorchBiLM:
        options = ElmoOptions.from_file(options_path)
        return cls(options, load_weights(weights_path, options), device)

    def zero_state(self, batch: int) -> tuple[TorchTensor, TorchTensor]:
        import torch

        o = self.options
        return (
            torch.zeros(o.n_layers, 2, batch, o.lstm_dim, device=self.device),
            torch.zeros(o.n_layers, 2, batch, o.projection_dim, device=self.device),
        )

    def token_embeddings(self, ids: np.ndarray) -> TorchTensor:
        """Token embeddings float32[N, projection_dim] from shifted character ids int[N, C]."""
        import torch
        import torch.nn.functional as F

        o = self.options
        big = len(ids) * o.max_chars * sum(w * n for w, n in o.filters) * o.char_embed_dim >= self.min_parallel_macs
        # The network's ops are small and many (a few per LSTM step): on a busy machine an OpenMP barrier waits
        # for a thread the OS has put aside, so small work runs on one thread (the fixture's stateful check:
        # 0.3 s on one thread, 3.5-12 s on two, 2 busy cores) and only big work on every usable core.
        with torch_threads(self.device, usable_cores() if big else 1), torch.inference_mode():
            x = F.embedding(torch.as_tensor(ids, dtype=torch.long, device=self.device), self.char_embed)
            x = x.transpose(1, 2)  # [N, D, C]: conv1d's channels first
            act = torch.relu if self.options.activation == "relu" else torch.tanh
            # bilm-tf adds the bias, max-pools over positions, then applies the activation.
            h = torch.cat([act(F.conv1d(x, w).amax(dim=2) + b) for w, b in self.conv], dim=-1)
            for w_carry, b_carry, w_tr, b_tr in self.highway:
                # bilm-tf's highway: the "carry" gate weighs the transform, 1 - gate the input.
                gate = torch.sigmoid(torch.addmm(b_carry, h, w_carry))
                h = gate * torch.relu(torch.addmm(b_tr, h, w_tr)) + (1.0 - gate) * h
            if self.proj is not None:
                h = torch.addmm(self.proj[1], h, self.proj[0])
            return h

    def embed_tokens(self, tokens: Sequence[str]) -> np.ndarray:
        """Character-CNN token embeddings float32[len(tokens), projection_dim]."""
        C = self.options.max_chars
        ids = np.stack([char_ids(t, C) for t in tokens]) if tokens else np.zeros((0, C), np.int32)
        return self.token_embeddings(ids).cpu().numpy()

    def run_lstms(
        self,
        rows: list[int],
        c0: TorchTensor,
        m0: TorchTensor,
        *,
        x: TorchTensor = None,
        tokens: tuple[TorchTensor, TorchTensor] | None = None,
    ) -> tuple[list[TorchTensor], TorchTensor, TorchTensor]:
        """Every LSTM layer, both directions, over time-major inputs (the backward ones already reversed).

        ``rows[t]``: the rows running at step t, a prefix (rows sorted longest first); ``c0``/``m0``:
        initial states. The first layer's input is ``x`` float32[T, 2, B, P], or ``tokens`` = (``table``
        float32[D, P], ``ids`` int64[T, 2, B]): its input products (``input @ W_input + bias``) are then
        computed once per distinct row of ``table`` and the loop multiplies only ``m_prev``.
        Returns each layer's outputs [T, 2, B, P] (zero past each row's steps; residual added past the
        first layer) and the final states; a row keeps its state once its steps are done.

        On a CPU with two cores or more the two directions, which never read each other, run in two
        threads on half the cores each, when a step is big enough (:attr:`min_parallel_work`): a step's
        ops are too short for OpenMP's barriers, which on a busy machine cost more than the work. On a GPU
        one thread runs both, one batched matmul a step.
        """
        import torch

        o = self.options
        T = len(rows)
        B = (x if x is not None else tokens[1]).shape[2]  # type: ignore[index]
        with torch.inference_mode():
            c, m = c0.clone(), m0.clone()
            outs = [torch.zeros(T, 2, B, o.projection_dim, device=self.device) for _ in range(o.n_layers)]
        cores = usable_cores()
        if self.device != "cpu" or cores < 2 or (rows[0] if rows else 0) * 4 * o.lstm_dim < self.min_parallel_work:
            with torch_threads(self.device, 1):
                self._directions(slice(0, 2), rows, c, m, outs, x, tokens, None)
        else:
            before = torch.get_num_threads()
            torch.set_num_threads(cores // 2)  # this thread's OpenMP workers would spin on the cores the two need
            try:
                with ThreadPoolExecutor(2, thread_name_prefix="elmo-direction") as pool:
                    done = [
                        pool.submit(self._directions, slice(d, d + 1), rows, c, m, outs, x, tokens, cores // 2)
                        for d in (0, 1)
                    ]
                    for f in done:
                        f.result()
            finally:
                torch.set_num_threads(before)  # the workers' setting is also torch's process-wide default
        return outs, c, m

    def _directions(
        self,
        ds: slice,
        rows: list[int],
        c: TorchTensor,
        m: TorchTensor,
        outs: list[TorchTensor],
        x: TorchTensor,
        tokens: tuple[TorchTensor, TorchTensor] | None,
        threads: int | None,
    ) -> None:
        """``run_lstms`` for the directions ``ds`` (both, or one): writes their part of ``c``, ``m`` and ``outs``."""
        import torch

        if threads is not None:
            torch.set_num_threads(threads)  # OpenMP's thread count is per thread: this one's, for its ops
        o = self.options
        P, H = o.projection_dim, o.lstm_dim
        with torch.inference_mode():  # thread-local, as autograd's modes are
            for k, (w_all, bias_all, w_proj_all) in enumerate(self.lstm):
                w, bias = w_all[ds], bias_all[ds]
                w_proj = None if w_proj_all is None else w_proj_all[ds]
                ck, mk, out = c[k, ds], m[k, ds], outs[k][:, ds]
                nd = w.shape[0]
                inp: TorchTensor = outs[k - 1][:, ds] if k > 0 else x[:, ds] if x is not None else None
                if k == 0 and tokens is not None:
                    table, ids = tokens
                    D = table.shape[0]
                    # [nd * D, 4H]: direction d's input products of table row i at row d * D + i
                    gates = torch.baddbmm(bias, table.expand(nd, D, P), w[:, :P]).reshape(nd * D, -1)
                    flat = ids[:, ds] + (torch.arange(nd, device=ids.device) * D)[None, :, None]  # [T, nd, B]
                    w_rec = w[:, P:]
                for t, n in enumerate(rows):
                    if n == 0:
                        break
                    m_prev = mk[:, :n]
                    # TF1 LSTMCell's one product of [input, m_prev] (both directions: one batched matmul).
                    if k == 0 and tokens is not None:
                        z = gates.index_select(0, flat[t, :, :n].reshape(-1)).view(nd, n, -1)
                        z.baddbmm_(m_prev, w_rec)
                    else:
                        z = torch.baddbmm(bias, torch.cat([inp[t, :, :n], m_prev], dim=-1), w)
                    # In place, fewest passes over the [nd, n, 4H] gates: the elementwise work costs as much as
                    # the products on a CPU. Gates (i, f, o, j); c = sigmoid(f + 1) * c + sigmoid(i) * tanh(j).
                    z[..., : 3 * H].sigmoid_()
                    j = z[..., 3 * H :].tanh_()
                    c_new = ck[:, :n].mul_(z[..., H : 2 * H]).addcmul_(z[..., :H], j)
                    if o.cell_clip is not None:
                        c_new.clamp_(-o.cell_clip, o.cell_clip)
                    m_new = torch.tanh(c_new).mul_(z[..., 2 * H : 3 * H])
                    if w_proj is not None:
                        m_new = torch.bmm(m_new, w_proj)
                    if o.proj_clip is not None:
                        m_new.clamp_(-o.proj_clip, o.proj_clip)
                    mk[:, :n] = m_new
                    out[t, :, :n] = m_new
                if o.use_skip_connections and k > 0:
                    out += inp  # bilm-tf's ResidualWrapper around every layer but the first

    def layers(
        self, emb: np.ndarray, lengths: np.ndarray, c0: TorchTensor, m0: TorchTensor
    ) -> tuple[np.ndarray, TorchTensor, TorchTensor]:
        """All layers float32[n_layers + 1, B, T, 2P] for token embeddings float32[B, T, P], as ``ElmoBiLM.layers``.

        The reference path: every position computed as given (markers included, if ``emb`` has them),
        nothing cached. ``lengths`` int[B]; returns the layers (zero past a length) and final states.
        """
        import torch

        lengths = np.asarray(lengths, np.int64)
        T = emb.shape[1]
        order = np.argsort(-lengths, kind="stable")  # longest first
        back = np.argsort(order)
        sorted_len = lengths[order]
        dev = self.device
        with torch_threads(dev, 1), torch.inference_mode():
            x = torch.as_tensor(np.ascontiguousarray(emb, np.float32)[order], device=dev).transpose(0, 1)  # [T, B, P]
            mask = torch.as_tensor(np.arange(T)[:, None] < sorted_len[None, :], device=dev)
            x = x * mask[:, :, None]
            rev = torch.as_tensor(_reversed_positions(sorted_len, T), device=dev)[:, :, None].expand(-1, -1, x.shape[2])
            x2 = torch.stack([x, torch.gather(x, 0, rev)], dim=1)  # [T, 2, B, P]
            o_ = torch.as_tensor(order, device=dev)
            outs, c, m = self.run_lstms(_rows_per_step(sorted_len, T), c0[:, :, o_], m0[:, :, o_], x=x2)
            found = [torch.cat([x, x], dim=-1)]
            for out in outs:
                found.append(torch.cat([out[:, 0], torch.gather(out[:, 1], 0, rev)], dim=-1))
            b_ = torch.as_tensor(back, device=dev)
            stacked = torch.stack(found).transpose(1, 2)[:, b_]  # [L+1, B, T, 2P]
            return stacked.cpu().numpy(), c[:, :, b_], m[:, :, b_]

    def sentence_layers(self, sentences: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Layers float32[L+1, B, T, 2P] of tokenized sentences from a zero state (markers computed, then
        removed) and their word counts, as ``ElmoBiLM.sentence_layers``."""
        rows = [[BOS_TOKEN, *s, EOS_TOKEN] for s in sentences]
        width = max(len(r) for r in rows)
        emb = np.zeros((len(rows), width, self.options.projection_dim), np.float32)
        for b, r in enumerate(rows):
            emb[b, : len(r)] = self.embed_tokens(r)
        lengths = np.array([len(r) for r in rows], np.int64)
        layers, _, _ = self.layers(emb, lengths, *self.zero_state(len(rows)))
        n = lengths - 2
        layers = layers[:, :, 1 : 1 + int(n.max())]
        for b, k in enumerate(n):
            layers[:, b, k:] = 0.0  # drop </S>, keep the zero padding
        return layers, n


class ElmoTorchEmbedder(NativeElmoEmbedder):
    """A native ELMo on PyTorch: the vectors (and the fingerprint) of ``elmo.ElmoEmbedder`` for the same files."""

    def __init__(
        self,
        bilm: TorchBiLM,
        output: str = DEFAULT_ELMO_OUTPUT,
        *,
        source: dict[str, str] | None = None,
        token_cache_size: int = 50_000,
        max_batch_tokens: int | None = None,
        max_distinct_words: int | None = None,
    ) -> None:
        super().__init__(
            bilm.options,
            output,
            source=source,
            token_cache_size=token_cache_size,
            max_batch_tokens=max_batch_tokens,
            max_distinct_words=max_distinct_words,
        )
        self.bilm = bilm
        self._marker_state = self._state_after_markers()

    @classmethod
    def from_path(
        cls, path: str | os.PathLike, output: str = DEFAULT_ELMO_OUTPUT, *, device: str | None = None, **kwargs: Any
    ) -> ElmoTorchEmbedder:
        """Load from a folder with ``options.json`` + one weights ``.hdf5``, or ``"OPTIONS,WEIGHTS"``.

        ``device``: a torch device; default CUDA where torch sees one, else the CPU.
        """
        options_path, weights_path = resolve_model_files(path)
        device = device or ("cuda" if _cuda() else "cpu")
        bilm = TorchBiLM.from_files(options_path, weights_path, device)
        log.info("loaded ELMo %s (%d parameters) on torch, %s", weights_path, bilm.n_parameters, device)
        return cls(bilm, output, source=model_source(options_path, weights_path), **kwargs)

    @property
    def device(self) -> str:
        return "cpu" if self.bilm.device == "cpu" else "gpu"

    def _state_after_markers(self) -> tuple[TorchTensor, TorchTensor]:
        """LSTM states (c, m) [n_layers, 2, 1, H] / [.., P]: forward after ``<S>``, backward after ``</S>``.

        One step of every layer from a zero state, forward on ``<S>`` and backward on ``</S>``: what
        every sentence's first step is, computed once.
        """
        import torch

        table = torch.as_tensor(self.bilm.embed_tokens([BOS_TOKEN, EOS_TOKEN]), device=self.bilm.device)
        ids = torch.tensor([[[0], [1]]], device=self.bilm.device)  # [T=1, 2, B=1]: <S> forward, </S> backward
        _, c, m = self.bilm.run_lstms([1], *self.bilm.zero_state(1), tokens=(table, ids))
        return c, m

    def _word_vectors(self, ids: np.ndarray) -> np.ndarray:
        return self.bilm.token_embeddings(ids).cpu().numpy()

    def _pooled_vectors(self, table: np.ndarray, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        import torch

        bilm = self.bilm
        dev = bilm.device
        B, T = ids.shape
        order = np.argsort(-lengths, kind="stable")  # longest first: the running rows are a prefix
        back = np.argsort(order)
        sorted_len = lengths[order].astype(np.int64)
        fwd = np.ascontiguousarray(ids[order].T, dtype=np.int64)  # time-major [T, B]
        bwd = np.take_along_axis(fwd, _reversed_positions(sorted_len, T), axis=0)
        with torch_threads(dev, 1), torch.inference_mode():  # small ops; run_lstms threads the big ones
            table_t = torch.as_tensor(table, device=dev)
            ids_t = torch.as_tensor(np.stack([fwd, bwd], axis=1), device=dev)  # [T, 2, B]
            c0 = self._marker_state[0].expand(-1, -1, B, -1)
            m0 = self._marker_state[1].expand(-1, -1, B, -1)
            outs, _, _ = bilm.run_lstms(_rows_per_step(sorted_len, T), c0, m0, tokens=(table_t, ids_t))
            # Sums over positions: outputs are zero past a row's length, and a mean does not depend on
            # the order of the positions, so the backward direction need not be turned forward again.
            words = table_t[ids_t[:, 0]].sum(dim=0)  # [B, P]
            sums = [torch.cat([words, words], dim=-1)] + [
                torch.cat([s[0], s[1]], dim=-1) for s in (out.sum(0) for out in outs)
            ]
            if self.output == OUTPUT_ELMO:
                mixed = torch.stack(sums).mean(dim=0)  # TF Hub's untrained scalar mix: 1/(L+1) each, gamma 1
            elif self.output == OUTPUT_TOP:
                mixed = sums[-1]
            else:
                assert self.output == OUTPUT_ALL
                mixed = torch.cat(sums, dim=-1)
            n = torch.as_tensor(np.maximum(sorted_len, 1), dtype=torch.float32, device=dev)[:, None]
            return (mixed / n)[torch.as_tensor(back, device=dev)].cpu().numpy()


__all__ = [
    "BACKENDS",
    "BACKEND_ENV",
    "CPU_DEFAULT",
    "ElmoTorchEmbedder",
    "TorchBiLM",
    "elmo_backend",
    "load_native_elmo",
]
