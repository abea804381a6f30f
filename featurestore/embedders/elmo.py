"""Native TensorFlow 2 ELMo: the bilm-tf biLM loaded from ``options.json`` + ``weights.hdf5``.

The published ELMo releases (AllenNLP / bilm-tf, e.g. ``elmo_2x4096_512_2048cnn_2xhighway``)
are an options file and an HDF5 file of weights named after bilm-tf's TF1 variables. This
module rebuilds that network with TF2 ops:

- character ids: UTF-8 bytes of each token, truncated to ``max_characters_per_token - 2``
  bytes, wrapped in begin/end-of-word markers and padded (bilm-tf's ``UnicodeCharsVocabulary``,
  AllenNLP's ``ELMoCharacterMapper``); ids are shifted by one so 0 means "no token";
- a character CNN (max over time, relu/tanh), highway layers and a projection;
- per direction a stack of LSTMs with a projection (TF1 ``LSTMCell`` with ``num_proj``,
  ``cell_clip``, ``proj_clip``, gate order i, j, f, o and forget bias 1.0), with a residual
  connection around every layer but the first when ``use_skip_connections`` is set.

The layers are: 0, the token embedding repeated to ``2 * projection_dim`` (as bilm-tf does so
that all layers have one width); 1..n, the LSTM layers, forward and backward concatenated.
Sentence markers are added around every sentence and removed from the outputs.

:class:`ElmoEmbedder` mean-pools a layer mix over real tokens. It starts every sentence from a
zero state, so a vector does not depend on the batch it was computed in. What does not depend on
TensorFlow (options, weights, character ids, and :class:`NativeElmoEmbedder`: output, fingerprint,
batching, word cache) is shared with the PyTorch twin, ``elmo_torch``; TensorFlow is imported on use.
:class:`StatefulBiLM` reproduces bilm-tf's stateful inference (state carried from one batch
to the next, per batch row); it exists to check this code against bilm-tf's reference outputs.
"""

from __future__ import annotations

import json
import logging
import os
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from featurestore.embedders.base import Embedder, Fingerprint
from featurestore.embedders.checksums import cached_file_sha256
from featurestore.embedders.elmo_spec import DEFAULT_ELMO_OUTPUT, ELMO_OUTPUTS, OUTPUT_ALL, OUTPUT_ELMO, OUTPUT_TOP
from featurestore.embedders.tf_runtime import Tensor, tensorflow
from featurestore.errors import ModelError

log = logging.getLogger(__name__)

#: bump when a change here can change a vector: it is part of the fingerprint
IMPLEMENTATION_VERSION = 1

# Character vocabulary of bilm-tf (before the +1 shift): bytes are 0..255.
BOS_CHAR = 256  # begin of sentence
EOS_CHAR = 257  # end of sentence
BOW_CHAR = 258  # begin of word
EOW_CHAR = 259  # end of word
PAD_CHAR = 260  # padding inside a word
BOS_TOKEN = "<S>"
EOS_TOKEN = "</S>"

_WEIGHTS_HINT = "use the weights .hdf5 released with this options.json (bilm-tf / AllenNLP layout)"


# --------------------------------------------------------------------------------------------
# options


@dataclass(frozen=True)
class ElmoOptions:
    """The parts of a bilm-tf ``options.json`` that shape the network."""

    filters: tuple[tuple[int, int], ...]
    n_highway: int
    char_embed_dim: int
    n_characters: int
    max_chars: int
    activation: str
    lstm_dim: int
    projection_dim: int
    n_layers: int
    cell_clip: float | None
    proj_clip: float | None
    use_skip_connections: bool

    @property
    def n_filters(self) -> int:
        return sum(n for _, n in self.filters)

    @property
    def layer_dim(self) -> int:
        """Width of every output layer (forward + backward)."""
        return 2 * self.projection_dim

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "options.json") -> ElmoOptions:
        def get(section: str, key: str, default: Any = ...) -> Any:
            part = raw.get(section)
            if not isinstance(part, dict):
                raise ModelError(f"{source} has no {section!r} section; use the options.json released with the weights")
            if key not in part:
                if default is ...:
                    raise ModelError(
                        f"{source} lacks key {section}.{key}; use the options.json released with the weights"
                    )
                return default
            return part[key]

        try:
            filters = tuple((int(w), int(n)) for w, n in get("char_cnn", "filters"))
            emb = get("char_cnn", "embedding")
            if not isinstance(emb, dict) or "dim" not in emb:
                raise ModelError(
                    f"{source} lacks key char_cnn.embedding.dim; use the options.json released with the weights"
                )
            activation = str(get("char_cnn", "activation", "relu"))
            cell_clip = get("lstm", "cell_clip", None)
            proj_clip = get("lstm", "proj_clip", None)
            lstm_dim = int(get("lstm", "dim"))
            opts = cls(
                filters=filters,
                n_highway=int(get("char_cnn", "n_highway", 0) or 0),
                char_embed_dim=int(emb["dim"]),
                n_characters=int(get("char_cnn", "n_characters", 262)),
                max_chars=int(get("char_cnn", "max_characters_per_token")),
                activation=activation,
                lstm_dim=lstm_dim,
                projection_dim=int(get("lstm", "projection_dim", lstm_dim)),
                n_layers=int(get("lstm", "n_layers", 1)),
                cell_clip=None if cell_clip is None else float(cell_clip),
                proj_clip=None if proj_clip is None else float(proj_clip),
                use_skip_connections=bool(get("lstm", "use_skip_connections")),
            )
        except (TypeError, ValueError) as exc:
            raise ModelError(
                f"{source} has a malformed value ({exc}); use the options.json released with the weights"
            ) from None
        if opts.activation not in ("relu", "tanh"):
            raise ModelError(f"{source}: char_cnn.activation {opts.activation!r} is not relu or tanh")
        if not opts.filters or opts.n_layers < 1 or opts.max_chars < 3:
            raise ModelError(f"{source}: needs char_cnn.filters, lstm.n_layers >= 1 and max_characters_per_token >= 3")
        return opts

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> ElmoOptions:
        path = Path(path)
        if not path.is_file():
            raise ModelError(
                f"ELMo options file {path} does not exist; give the options.json released with the weights"
            )
        try:
            raw = json.loads(path.read_text(encoding="utf8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(
                f"ELMo options file {path} is not valid JSON ({exc}); give the options.json released with the weights"
            ) from None
        if not isinstance(raw, dict):
            raise ModelError(
                f"ELMo options file {path} is not a JSON object; give the options.json released with the weights"
            )
        return cls.from_dict(raw, source=str(path))


# --------------------------------------------------------------------------------------------
# weights


def _expected_shapes(o: ElmoOptions) -> dict[str, tuple[int, ...]]:
    """Every dataset the network reads, with its shape, named as in bilm-tf's weight files."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (width, num) in enumerate(o.filters):
        shapes[f"CNN/W_cnn_{i}"] = (1, width, o.char_embed_dim, num)
        shapes[f"CNN/b_cnn_{i}"] = (num,)
    nf = o.n_filters
    for i in range(o.n_highway):
        for name, shape in (
            ("W_carry", (nf, nf)),
            ("W_transform", (nf, nf)),
            ("b_carry", (nf,)),
            ("b_transform", (nf,)),
        ):
            shapes[f"CNN_high_{i}/{name}"] = shape
    if nf != o.projection_dim:
        shapes["CNN_proj/W_proj"] = (nf, o.projection_dim)
        shapes["CNN_proj/b_proj"] = (o.projection_dim,)
    for d in range(2):
        for k in range(o.n_layers):
            cell = f"RNN_{d}/RNN/MultiRNNCell/Cell{k}/LSTMCell"
            shapes[f"{cell}/W_0"] = (2 * o.projection_dim, 4 * o.lstm_dim)
            shapes[f"{cell}/B"] = (4 * o.lstm_dim,)
            if o.projection_dim < o.lstm_dim:
                shapes[f"{cell}/W_P_0"] = (o.lstm_dim, o.projection_dim)
    return shapes


def load_weights(path: str | os.PathLike, options: ElmoOptions) -> dict[str, np.ndarray]:
    """Read and check every dataset the network needs; raise ModelError naming what is wrong."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"ELMo weights file {path} does not exist; {_WEIGHTS_HINT}")
    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise ModelError(f"ELMo weights file {path} is not HDF5 ({exc}); {_WEIGHTS_HINT}") from None
    out: dict[str, np.ndarray] = {}
    with fh:
        wanted = {"char_embed": None, **_expected_shapes(options)}
        for name, shape in wanted.items():
            obj = fh.get(name)
            if obj is None or not isinstance(obj, h5py.Dataset):
                raise ModelError(f"ELMo weights file {path} lacks dataset {name!r}; {_WEIGHTS_HINT}")
            arr = np.asarray(obj[...], dtype=np.float32)
            if name == "char_embed":
                # bilm-tf stores ids 0..260 (261 rows); the shifted id 0 is our own zero row.
                ok = arr.ndim == 2 and arr.shape[0] >= PAD_CHAR + 1 and arr.shape[1] == options.char_embed_dim
                shape_txt = f"(>={PAD_CHAR + 1}, {options.char_embed_dim})"
            else:
                ok = arr.shape == shape
                shape_txt = str(shape)
            if not ok:
                raise ModelError(
                    f"ELMo weights file {path}: dataset {name!r} has shape {arr.shape}, the options say {shape_txt}; "
                    "the weights do not belong to this options.json"
                )
            if not np.isfinite(arr).all():
                raise ModelError(f"ELMo weights file {path}: dataset {name!r} holds NaN/Inf; {_WEIGHTS_HINT}")
            out[name] = arr
    return out


def resolve_model_files(spec: str | os.PathLike) -> tuple[Path, Path]:
    """``(options.json, weights.hdf5)`` from a directory holding both, or ``"OPTIONS,WEIGHTS"``."""
    text = str(spec)
    if "," in text:
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 2 or not all(parts):
            raise ModelError(f"ELMo path {text!r} must be a directory or 'OPTIONS.json,WEIGHTS.hdf5'")
        options, weights = Path(parts[0]).expanduser(), Path(parts[1]).expanduser()
        for p, what in ((options, "options file"), (weights, "weights file")):
            if not p.is_file():
                raise ModelError(f"ELMo {what} {p} does not exist; check the path given as OPTIONS.json,WEIGHTS.hdf5")
        return options, weights
    folder = Path(text).expanduser()
    if not folder.is_dir():
        raise ModelError(
            f"ELMo path {folder} is not a directory; give a folder with options.json and one weights .hdf5"
        )
    options = folder / "options.json"
    if not options.is_file():
        jsons = sorted(folder.glob("*options*.json"))
        if len(jsons) != 1:
            raise ModelError(f"{folder} has no options.json; put the release's options file there as options.json")
        options = jsons[0]
    found_weights = sorted(p for p in folder.glob("*.hdf5") if p.is_file())
    if len(found_weights) != 1:
        found = ", ".join(p.name for p in found_weights) or "none"
        raise ModelError(
            f"{folder} must hold exactly one weights .hdf5 file (found: {found}); "
            "give 'OPTIONS.json,WEIGHTS.hdf5' to choose one"
        )
    return options, found_weights[0]


# --------------------------------------------------------------------------------------------
# characters


def tokenize(text: str) -> list[str]:
    """Whitespace split: the text is already cleaned, ELMo sees the words as they are."""
    return text.split()


def _marker_ids(char: int, max_chars: int) -> np.ndarray:
    ids = np.full(max_chars, PAD_CHAR, dtype=np.int32)
    ids[:3] = (BOW_CHAR, char, EOW_CHAR)
    return ids + 1


def char_ids(token: str, max_chars: int = 50) -> np.ndarray:
    """ELMo character ids (+1 shifted, int32[max_chars]) of one token.

    Bytes of the UTF-8 encoding, cut to ``max_chars - 2`` bytes (so a long word keeps its
    first 48 bytes and a multi-byte character may be cut in half, as ELMo does), between
    begin- and end-of-word markers. ``<S>`` and ``</S>`` are the sentence markers.
    """
    if token == BOS_TOKEN:
        return _marker_ids(BOS_CHAR, max_chars)
    if token == EOS_TOKEN:
        return _marker_ids(EOS_CHAR, max_chars)
    data = token.encode("utf-8", "ignore")[: max_chars - 2]
    ids = np.full(max_chars, PAD_CHAR, dtype=np.int32)
    ids[0] = BOW_CHAR
    ids[1 : len(data) + 1] = np.frombuffer(data, dtype=np.uint8)
    ids[len(data) + 1] = EOW_CHAR
    return ids + 1


def _round_up(n: int, step: int) -> int:
    return max(step, -(-n // step) * step)


# --------------------------------------------------------------------------------------------
# the network


def _tf() -> ModuleType:
    return tensorflow()


class ElmoBiLM:
    """The biLM's weights as TF variables and the TF2 computations over them.

    Shapes: ``char_ids`` int32[N, max_chars]; token embeddings float32[.., projection_dim];
    LSTM states ``(c, m)`` float32[n_layers, 2, B, lstm_dim] / [n_layers, 2, B, projection_dim]
    (direction 0 forward, 1 backward).
    """

    def __init__(self, options: ElmoOptions, weights: dict[str, np.ndarray]) -> None:
        tf = _tf()
        self.options = o = options
        self.n_parameters = int(sum(w.size for w in weights.values()))

        def var(value: np.ndarray, name: str) -> Tensor:
            return tf.Variable(np.ascontiguousarray(value, dtype=np.float32), trainable=False, name=name)

        table = weights["char_embed"][: PAD_CHAR + 1]
        # Shifted id 0 (no character) looks up a zero row, as in bilm-tf and AllenNLP.
        self.char_embed = var(np.concatenate([np.zeros((1, table.shape[1]), np.float32), table]), "char_embed")
        self.conv = [
            (var(weights[f"CNN/W_cnn_{i}"][0], f"W_cnn_{i}"), var(weights[f"CNN/b_cnn_{i}"], f"b_cnn_{i}"))
            for i in range(len(o.filters))
        ]
        self.highway = []
        for i in range(o.n_highway):
            p = f"CNN_high_{i}/"
            self.highway.append(
                tuple(var(weights[p + n], f"high{i}_{n}") for n in ("W_carry", "b_carry", "W_transform", "b_transform"))
            )
        self.proj = None
        if o.n_filters != o.projection_dim:
            self.proj = (var(weights["CNN_proj/W_proj"], "W_proj"), var(weights["CNN_proj/b_proj"], "b_proj"))
        # self.lstm[layer] = (W [2, P + P, 4H], B [2, 1, 4H], W_proj [2, H, P] or None); axis 0 is
        # the direction, 0 forward, 1 backward. W is TF1 LSTMCell's kernel W_0: rows for the
        # input, then for m_prev. Stacked so that one batched matmul serves both directions.
        self.lstm = []
        for k in range(o.n_layers):
            cells = [f"RNN_{d}/RNN/MultiRNNCell/Cell{k}/LSTMCell/" for d in range(2)]
            name = f"lstm{k}"
            self.lstm.append(
                (
                    var(np.stack([weights[c + "W_0"] for c in cells]), f"{name}_W"),
                    var(np.stack([weights[c + "B"][None, :] for c in cells]), f"{name}_B"),
                    var(np.stack([weights[c + "W_P_0"] for c in cells]), f"{name}_W_proj")
                    if o.projection_dim < o.lstm_dim
                    else None,
                )
            )
        P = o.projection_dim
        C = o.max_chars
        # One trace each: batch and length are dynamic in the input signatures, so new shapes
        # never retrace.
        self.token_embeddings = tf.function(self.char_cnn, input_signature=[tf.TensorSpec([None, C], tf.int32)])
        self._layers_fn = tf.function(
            self.layers,
            input_signature=[
                tf.TensorSpec([None, None, P], tf.float32),
                tf.TensorSpec([None], tf.int32),
                tf.TensorSpec([o.n_layers, 2, None, o.lstm_dim], tf.float32),
                tf.TensorSpec([o.n_layers, 2, None, P], tf.float32),
            ],
        )

    @property
    def variables(self) -> list:
        """Every weight variable, so a tf.Module that uses this network can track them."""
        found = [self.char_embed, *(v for pair in self.conv for v in pair), *(v for h in self.highway for v in h)]
        found += list(self.proj or ())
        found += [v for layer in self.lstm for v in layer if v is not None]
        return found

    @classmethod
    def from_files(cls, options_path: str | os.PathLike, weights_path: str | os.PathLike) -> ElmoBiLM:
        options = ElmoOptions.from_file(options_path)
        return cls(options, load_weights(weights_path, options))

    # -- graph pieces (traceable) -------------------------------------------------------

    def char_cnn(self, ids: Tensor) -> Tensor:
        """Token embeddings float32[N, projection_dim] from shifted character ids int32[N, C]."""
        tf = _tf()
        o = self.options
        act = tf.nn.relu if o.activation == "relu" else tf.nn.tanh
        x = tf.gather(self.char_embed, ids)  # [N, C, D]
        pooled = []
        for w, b in self.conv:
            y = tf.nn.conv1d(x, w, stride=1, padding="VALID")
            # bilm-tf adds the bias, max-pools over positions, then applies the activation.
            pooled.append(act(tf.reduce_max(y, axis=1) + b))
        h = tf.concat(pooled, axis=-1)
        for w_carry, b_carry, w_tr, b_tr in self.highway:
            # bilm-tf's highway: the "carry" gate weighs the transform, 1 - gate the input.
            gate = tf.sigmoid(tf.matmul(h, w_carry) + b_carry)
            h = gate * tf.nn.relu(tf.matmul(h, w_tr) + b_tr) + (1.0 - gate) * h
        if self.proj is not None:
            h = tf.matmul(h, self.proj[0]) + self.proj[1]
        return h

    def _lstm_layer(
        self,
        x: Tensor,
        steps: Tensor,
        cell: tuple[Tensor, Tensor, Tensor | None],
        c: Tensor,
        m: Tensor,
        packed: bool,
        tokens: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Both directions of one layer over time-major x [T, 2, B, P] (backward already reversed).

        ``steps`` int32[B]: positions each row runs, rows sorted longest first; ``cell``: the
        layer's stacked weights; ``c``/``m``: initial states [2, B, H] / [2, B, P]. Returns
        outputs [T, 2, B, P] (zero past each row's steps) and the final states.

        ``packed``: step t computes only the rows still running (a prefix, since rows are
        sorted), so padding costs nothing. Otherwise every row is computed at every step and
        finished rows are masked, as TF1's ``dynamic_rnn`` with ``sequence_length`` does.

        ``tokens``: ``(table [D, P], ids [T, 2, B])``, the distinct inputs and which one each position has
        (``x`` holds them gathered): the input's share of the gate product (``input @ W_input + bias``) is then
        computed once per distinct input, and the loop multiplies only ``m_prev`` (same sums in another order).
        """
        tf = _tf()
        o = self.options
        w, bias, w_proj = cell
        if tokens is not None:
            table, ids = tokens
            P = o.projection_dim
            input_gates, w_rec = tf.matmul(table[None], w[:, :P]) + bias, w[:, P:]  # [2, D, 4H]; rows for m_prev
        T, B = tf.shape(x)[0], tf.shape(x)[2]
        if packed:
            rows = tf.reduce_sum(tf.cast(tf.sequence_mask(steps, T), tf.int32), axis=0)  # [T], a prefix
        else:
            rows = tf.fill([T], B)
        outputs = tf.TensorArray(tf.float32, size=T, element_shape=tf.TensorShape([2, None, o.projection_dim]))

        def step(t: Tensor, c: Tensor, m: Tensor, outputs: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
            n = rows[t]
            c_prev, m_prev = c[:, :n], m[:, :n]
            # TF1 LSTMCell's one product of [input, m_prev], both directions in one batched
            # matmul. Measured on 2 CPU cores with 512 rows, this K = 2P product ran faster than
            # input products for all steps before the loop plus a K = P product per step, and
            # needs no [positions, 4H] buffer. An input that repeats (the first layer's word
            # embeddings) comes as tokens: its products were computed once per distinct word.
            if tokens is None:
                z = tf.matmul(tf.concat([x[t][:, :n], m_prev], axis=-1), w) + bias
            else:
                z = tf.gather(input_gates, ids[t][:, :n], batch_dims=1) + tf.matmul(m_prev, w_rec)
            i, j, f, g = tf.split(z, 4, axis=-1)
            # TF1 LSTMCell: forget_bias 1.0 added inside the sigmoid.
            c_new = tf.sigmoid(f + 1.0) * c_prev + tf.sigmoid(i) * tf.tanh(j)
            if o.cell_clip is not None:
                c_new = tf.clip_by_value(c_new, -o.cell_clip, o.cell_clip)
            m_new = tf.sigmoid(g) * tf.tanh(c_new)
            if w_proj is not None:
                m_new = tf.matmul(m_new, w_proj)
            if o.proj_clip is not None:
                m_new = tf.clip_by_value(m_new, -o.proj_clip, o.proj_clip)
            out = m_new
            if not packed:
                # Past a sentence's end its state is kept, as dynamic_rnn does, so the final
                # state (used by the stateful reference mode) is that of its last token.
                live = (t < steps)[None, :, None]
                c_new, m_new, out = (
                    tf.where(live, c_new, c_prev),
                    tf.where(live, m_new, m_prev),
                    tf.where(live, m_new, 0.0),
                )
            # Rows that have finished keep their state.
            c_next = tf.concat([c_new, c[:, n:]], axis=1)
            m_next = tf.concat([m_new, m[:, n:]], axis=1)
            c_next.set_shape(c.shape)
            m_next.set_shape(m.shape)
            return t + 1, c_next, m_next, outputs.write(t, tf.pad(out, [[0, 0], [0, B - n], [0, 0]]))

        _, c, m, outputs = tf.while_loop(lambda t, *_: t < T, step, (tf.constant(0), c, m, outputs))
        return outputs.stack(), c, m

    def layers(
        self,
        emb: Tensor,
        lengths: Tensor,
        c0: Tensor,
        m0: Tensor,
        *,
        packed: bool = True,
        drop_markers: bool = False,
        ids: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """All layers for token embeddings float32[B, T, P] of sentences with markers.

        ``lengths`` counts positions including ``<S>``/``</S>``. Returns
        ``(layers [n_layers + 1, B, T, 2P], c, m)``; positions past a length are zero.
        ``packed=False`` computes padding positions too (the cost of bilm-tf, same results).
        ``drop_markers``: the forward LSTMs skip ``</S>`` and the backward ones ``<S>``, one step
        less per sentence; their LSTM outputs at the markers are then zero and the final states
        are not bilm-tf's. For word vectors, which never read either.
        ``ids`` int32[B, T]: ``emb`` is then a table float32[D, P] of distinct tokens (row 0 a zero row, for
        padding) that ``ids`` index. The first LSTM layer's input products are then computed once per distinct
        token, not per position: in tweets a batch has a third as many distinct words as positions.
        """
        tf = _tf()
        o = self.options
        table = None
        if ids is not None:
            table, emb = emb, tf.gather(emb, ids)
        # Rows longest first, so that the rows still running at a step are a prefix.
        order = tf.argsort(lengths, direction="DESCENDING", stable=True)
        emb, lengths = tf.gather(emb, order), tf.gather(lengths, order)
        c0, m0 = tf.gather(c0, order, axis=2), tf.gather(m0, order, axis=2)
        steps = lengths - 1 if drop_markers else lengths
        x = tf.transpose(emb, [1, 0, 2])  # time-major [T, B, P]
        mask = tf.cast(tf.sequence_mask(lengths, tf.shape(x)[0]), tf.float32)
        x = x * tf.transpose(mask)[:, :, None]
        x2 = tf.stack([x, tf.reverse_sequence(x, lengths, seq_axis=0, batch_axis=1)], axis=1)  # [T, 2, B, P]
        token_layer = tf.concat([x, x], axis=-1)
        found = [token_layer]
        cs, ms = [], []
        for k in range(o.n_layers):
            tokens = None
            if k == 0 and table is not None:
                t_ids = tf.transpose(tf.gather(ids, order))  # time-major [T, B]
                backward = tf.reverse_sequence(t_ids, lengths, seq_axis=0, batch_axis=1)
                tokens = (table, tf.stack([t_ids, backward], axis=1))  # [T, 2, B], as x2
            out, c, m = self._lstm_layer(x2, steps, self.lstm[k], c0[k], m0[k], packed, tokens)
            if o.use_skip_connections and k > 0:
                out = out + x2  # bilm-tf's ResidualWrapper around every layer but the first
            cs.append(c)
            ms.append(m)
            fwd = out[:, 0]
            bwd = tf.reverse_sequence(out[:, 1], lengths, seq_axis=0, batch_axis=1)
            found.append(tf.concat([fwd, bwd], axis=-1))
            x2 = out
        back = tf.math.invert_permutation(order)
        stacked = tf.gather(tf.transpose(tf.stack(found), [0, 2, 1, 3]), back, axis=1)  # [L+1, B, T, 2P]
        return stacked, tf.gather(tf.stack(cs), back, axis=2), tf.gather(tf.stack(ms), back, axis=2)

    # -- numpy-level helpers ------------------------------------------------------------

    def zero_state(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        o = self.options
        return (
            np.zeros((o.n_layers, 2, batch, o.lstm_dim), np.float32),
            np.zeros((o.n_layers, 2, batch, o.projection_dim), np.float32),
        )

    def embed_tokens(self, tokens: Sequence[str]) -> np.ndarray:
        """Character-CNN token embeddings float32[len(tokens), projection_dim]."""
        ids = (
            np.stack([char_ids(t, self.options.max_chars) for t in tokens])
            if tokens
            else np.zeros((0, self.options.max_chars), np.int32)
        )
        return self.token_embeddings(ids).numpy()

    def sentence_layers(
        self, sentences: Sequence[Sequence[str]], state: tuple[np.ndarray, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Layers float32[L+1, B, T, 2P] of tokenized sentences (markers removed), lengths, final state."""
        vocab: dict[str, int] = {BOS_TOKEN: 0, EOS_TOKEN: 1}
        rows = []
        for sent in sentences:
            rows.append([0] + [vocab.setdefault(t, len(vocab)) for t in sent] + [1])
        table = self.embed_tokens(list(vocab))
        width = max(len(r) for r in rows)
        idx = np.ones((len(rows), width), np.int64)
        for b, r in enumerate(rows):
            idx[b, : len(r)] = r
        lengths = np.array([len(r) for r in rows], np.int32)
        c0, m0 = state if state is not None else self.zero_state(len(rows))
        out, c, m = self._layers_fn(table[idx], lengths, c0, m0)
        n = lengths - 2
        layers = out.numpy()[:, :, 1 : 1 + int(n.max())]
        for b, k in enumerate(n):
            layers[:, b, k:] = 0.0  # drop </S>, keep the zero padding
        return layers, n, (c.numpy(), m.numpy())


class StatefulBiLM:
    """Reference mode: bilm-tf's stateful inference, for checking against its outputs.

    bilm-tf keeps LSTM states for ``max_batch_size`` rows and starts row k of each batch
    from row k's final state of the previous batch. Not for the store: a vector would depend
    on what was embedded before it.
    """

    def __init__(self, bilm: ElmoBiLM, max_batch_size: int) -> None:
        self.bilm = bilm
        self.c, self.m = bilm.zero_state(max_batch_size)

    def __call__(self, sentences: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
        b = len(sentences)
        layers, n, (c, m) = self.bilm.sentence_layers(sentences, (self.c[:, :, :b], self.m[:, :, :b]))
        self.c[:, :, :b], self.m[:, :, :b] = c, m
        return layers, n


# --------------------------------------------------------------------------------------------
# the embedder


def model_source(options_path: Path, weights_path: Path) -> dict[str, str]:
    """The files a native ELMo was loaded from and their checksums (what its fingerprint names)."""
    return {
        "options": str(options_path),
        "weights": str(weights_path),
        "options_sha256": cached_file_sha256(options_path),
        "weights_sha256": cached_file_sha256(weights_path),
    }


class NativeElmoEmbedder(Embedder):
    """What a native ELMo embedder is whatever framework runs it: output, fingerprint, batching, word cache.

    Vectors are the mean over real tokens of the ``output`` layer mix, each sentence from a zero
    LSTM state. A subclass runs the network: :meth:`_word_vectors` (the character CNN) and
    :meth:`_pooled_vectors` (the biLSTM and the pooling). TensorFlow (:class:`ElmoEmbedder`) and
    PyTorch (``elmo_torch.ElmoTorchEmbedder``) give the same vectors for the same files, so they
    share one fingerprint and one vector space: it names what makes vectors differ, not which
    library computed them.
    """

    name = "elmo-native"
    # The LSTM is packed (padding costs no matmul), so batches are as large as memory allows:
    # 512 tweets make the per-step products [2, 512, 1024] @ [2, 1024, 4H] big enough for the
    # CPU's matmul kernels; 32768 padded positions keep the layer outputs under ~0.5 GB.
    max_batch_tokens = 32768
    max_batch_size = 512
    #: distinct words a batch runs with: the first layer's per-word input products take 2 x 4H floats a word
    #: (128 KB for the original model, so 512 MB at this bound); a batch with more is run in halves. Tweets
    #: stay under it (at most 3,440 in the 512-tweet batches of 2,000 AV tweets).
    max_distinct_words = 4096

    def __init__(
        self,
        options: ElmoOptions,
        output: str = DEFAULT_ELMO_OUTPUT,
        *,
        source: dict[str, str] | None = None,
        token_cache_size: int = 50_000,
        max_batch_tokens: int | None = None,
        max_distinct_words: int | None = None,
    ) -> None:
        if output not in ELMO_OUTPUTS:
            raise ModelError(f"unknown ELMo output {output!r}; use one of: {', '.join(ELMO_OUTPUTS)}")
        self.options = options
        self.output = output
        self.source = dict(source or {})
        self.token_cache_size = token_cache_size
        if max_batch_tokens is not None:
            self.max_batch_tokens = max_batch_tokens
        if max_distinct_words is not None:
            self.max_distinct_words = max_distinct_words
        self._dim = options.layer_dim * (options.n_layers + 1 if output == OUTPUT_ALL else 1)
        # Word-embedding cache: the character CNN (+ highway + projection) runs once per distinct
        # word, across batches; least recently used words go first beyond token_cache_size
        # (50,000 words x projection_dim floats: 100 MB for the original model).
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    @abstractmethod
    def _word_vectors(self, ids: np.ndarray) -> np.ndarray:
        """Character-CNN token embeddings float32[N, projection_dim] of shifted character ids int32[N, C]."""

    @abstractmethod
    def _pooled_vectors(self, table: np.ndarray, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Pooled vectors float32[B, dim] of word rows ``ids`` int32[B, T] into ``table`` float32[D, P] (row 0 zero).

        ``lengths`` int32[B] counts words; markers are not in ``ids``: each sentence starts from the
        LSTM state after them (forward after ``<S>``, backward after ``</S>``).
        """

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def fingerprint(self) -> Fingerprint:
        o = self.options
        if not (self.source.get("options_sha256") and self.source.get("weights_sha256")):
            # "unknown" would let two different networks share one vector space.
            cls = type(self).__name__
            raise ModelError(
                f"this {cls} was built without the checksums of its files, so its vectors cannot be "
                f"keyed; fix: build it with {cls}.from_path(PATH) or pass source={{'options_sha256': ..., "
                "'weights_sha256': ...}"
            )
        return Fingerprint(
            # the first release's dict named the model "embedder": stores are keyed by its hash
            model="elmo-native",
            weights_sha256=self.source["weights_sha256"],
            output=self.output,
            pooling="mean-real-tokens",
            extra={
                "implementation": IMPLEMENTATION_VERSION,
                "options_sha256": self.source["options_sha256"],
                "mix": "equal" if self.output == DEFAULT_ELMO_OUTPUT else self.output,
                "tokenizer": "whitespace",
                "max_characters_per_token": o.max_chars,
                "state": "zero-per-sentence",
                "dtype": "float32",
            },
            key_names={"model": "embedder"},
        )

    def count_tokens(self, text: str) -> int:
        return len(tokenize(text))  # the markers cost no position (see _pooled_vectors)

    def clear_token_cache(self) -> None:
        """Forget cached word embeddings (they are recomputed identically on demand)."""
        self._cache.clear()

    def _token_table(self, tokens: list[str]) -> list[np.ndarray]:
        """Embeddings of ``tokens`` from the cache, running the CNN once over the missing ones."""
        cache = self._cache
        found: dict[str, np.ndarray] = {}
        missing = []
        for t in dict.fromkeys(tokens):
            v = cache.get(t)
            if v is None:
                missing.append(t)
            else:
                found[t] = v
                cache.move_to_end(t)
        if missing:
            C = self.options.max_chars
            ids = np.full((_round_up(len(missing), 64), C), 0, np.int32)
            ids[: len(missing)] = np.stack([char_ids(t, C) for t in missing])
            vecs = self._word_vectors(ids)
            for t, v in zip(missing, vecs):
                found[t] = cache[t] = v
            while len(cache) > self.token_cache_size:
                cache.popitem(last=False)
        return [found[t] for t in tokens]

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        sents = [tokenize(t) for t in texts]
        distinct = list(dict.fromkeys(t for s in sents for t in s))
        if len(distinct) > self.max_distinct_words and len(texts) > 1:
            half = len(texts) // 2  # each sentence starts from the same state: halves give the same vectors
            return np.concatenate([self.embed_batch(texts[:half]), self.embed_batch(texts[half:])])
        pos = {t: i + 1 for i, t in enumerate(distinct)}
        P = self.options.projection_dim
        table = np.concatenate(
            [np.zeros((1, P), np.float32), *([np.stack(self._token_table(distinct))] if distinct else [])]
        )
        # Words only (the marker steps are in the initial state), exact shapes: rounding shapes up
        # to buckets would only add padding.
        B = len(sents)
        T = max(1, max(len(s) for s in sents))
        idx = np.zeros((B, T), np.int32)
        lengths = np.zeros(B, np.int32)
        for b, s in enumerate(sents):
            idx[b, : len(s)] = [pos[t] for t in s]
            lengths[b] = len(s)
        return self._pooled_vectors(table, idx, lengths)[: len(texts)]


class ElmoEmbedder(NativeElmoEmbedder):
    """Tweet vectors from a native ELMo on TensorFlow: mean over real tokens of the ``output`` layer mix.

    ``output``: ``elmo`` (equal-weight mix of all layers, as the untrained TF Hub scalar mix),
    ``top`` (last LSTM layer) or ``all`` (layers concatenated). Each sentence starts from a
    zero LSTM state, so vectors do not depend on batching.
    """

    def __init__(
        self,
        bilm: ElmoBiLM,
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
        tf = _tf()
        self.bilm = bilm
        o = bilm.options
        self._markers = bilm.embed_tokens([BOS_TOKEN, EOS_TOKEN])
        self._marker_state = self._state_after_markers()
        self.traces = 0
        P = o.projection_dim

        def pooled(table: Tensor, ids: Tensor, lengths: Tensor) -> Tensor:
            self.traces += 1  # Python side effect: runs only when TF traces a new graph
            B = tf.shape(ids)[0]
            # Every sentence's forward LSTMs start with <S> and its backward ones with </S>, from
            # a zero state: the same step for every sentence, computed once (_state_after_markers).
            # The word rows start from its result, and the pooled mean never reads the LSTMs at
            # the markers, so no marker step is computed here: n steps a direction for n words.
            c0 = tf.broadcast_to(self._marker_state[0], [o.n_layers, 2, B, o.lstm_dim])
            m0 = tf.broadcast_to(self._marker_state[1], [o.n_layers, 2, B, P])
            layers, _, _ = bilm.layers(table, lengths, c0, m0, ids=ids)
            return pool_layers(layers, lengths, output, markers=False)

        # The input_signature leaves batch and length dynamic: traced once, never retraced.
        self._pooled = tf.function(
            pooled,
            input_signature=[
                tf.TensorSpec([None, P], tf.float32),
                tf.TensorSpec([None, None], tf.int32),
                tf.TensorSpec([None], tf.int32),
            ],
        )

    @classmethod
    def from_path(cls, path: str | os.PathLike, output: str = DEFAULT_ELMO_OUTPUT, **kwargs: Any) -> ElmoEmbedder:
        """Load from a folder with ``options.json`` + one weights ``.hdf5``, or ``"OPTIONS,WEIGHTS"``."""
        options_path, weights_path = resolve_model_files(path)
        bilm = ElmoBiLM.from_files(options_path, weights_path)
        log.info("loaded ELMo %s (%d parameters) on TensorFlow", weights_path, bilm.n_parameters)
        return cls(bilm, output, source=model_source(options_path, weights_path), **kwargs)

    @property
    def device(self) -> str:
        tf = _tf()
        return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"

    def _state_after_markers(self) -> tuple[np.ndarray, np.ndarray]:
        """LSTM states (c, m) [n_layers, 2, 1, H] / [.., P]: forward after ``<S>``, backward after ``</S>``.

        Each is one step of every layer from a zero state on a fixed input, as the packed loop
        computes it for any sentence (tested: vectors within 1e-6 of computing the markers).
        """
        bilm = self.bilm
        states = []
        for marker in (0, 1):  # <S> row, then </S> row of self._markers
            c, m = bilm.zero_state(1)
            _, c, m = bilm._layers_fn(self._markers[None, marker : marker + 1], np.array([1], np.int32), c, m)
            states.append((c.numpy(), m.numpy()))
        (c_bos, m_bos), (c_eos, m_eos) = states
        c = np.concatenate([c_bos[:, :1], c_eos[:, 1:]], axis=1)
        m = np.concatenate([m_bos[:, :1], m_eos[:, 1:]], axis=1)
        return c, m

    def _word_vectors(self, ids: np.ndarray) -> np.ndarray:
        return self.bilm.token_embeddings(ids).numpy()

    def _pooled_vectors(self, table: np.ndarray, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return self._pooled(table, ids, lengths).numpy()


def pool_layers(layers: Tensor, lengths: Tensor, output: str, *, markers: bool = True) -> Tensor:
    """Mean over real tokens (markers and padding excluded) of the ``output`` mix; TF ops.

    ``layers`` float32[L+1, B, T, 2P] with markers; ``lengths`` count the markers.
    ``markers=False``: the layers hold words only and ``lengths`` count words.
    """
    tf = _tf()
    if output == OUTPUT_ELMO:
        # TF Hub's elmo: softmax of untrained zero weights (1/3 each) times gamma 1.
        mixed = tf.reduce_mean(layers, axis=0)
    elif output == OUTPUT_TOP:
        mixed = layers[-1]
    else:
        mixed = tf.concat(tf.unstack(layers, axis=0), axis=-1)  # OUTPUT_ALL
    T = tf.shape(mixed)[1]
    pos = tf.range(T)[None, :]
    if markers:
        real = tf.cast((pos >= 1) & (pos < lengths[:, None] - 1), tf.float32)  # skip <S> and </S>
    else:
        real = tf.cast(pos < lengths[:, None], tf.float32)
    n = tf.maximum(tf.reduce_sum(real, axis=1, keepdims=True), 1.0)
    return tf.reduce_sum(mixed * real[:, :, None], axis=1) / n


__all__ = [
    "ElmoBiLM",
    "ElmoEmbedder",
    "ElmoOptions",
    "NativeElmoEmbedder",
    "StatefulBiLM",
    "char_ids",
    "load_weights",
    "model_source",
    "pool_layers",
    "resolve_model_files",
    "tokenize",
]
