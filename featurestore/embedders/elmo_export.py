"""Export a native ELMo as a TF2 SavedModel shaped like TF Hub's ``google/elmo/3``.

The SavedModel has two signatures, as the Hub module does:

- ``default``: ``tokens`` string[B] sentences, split on spaces (empty pieces dropped);
- ``tokens``: ``tokens`` string[B, T] (padding beyond ``sequence_len`` ignored) and
  ``sequence_len`` int32[B].

Both return ``word_emb`` [B,T,P] (character-CNN token embeddings, not doubled, as in the Hub
module), ``lstm_outputs1`` and ``lstm_outputs2`` [B,T,2P], ``elmo`` [B,T,2P] (equal-weight mix
of the three layers, the token layer doubled), ``default`` [B,2P] (``elmo`` mean-pooled over
real tokens) and ``sequence_len`` [B]. Positions past a sentence's length are zero.

Character ids are computed by TF ops inside the graph (``tf.strings.bytes_split`` and
``tf.io.decode_raw``), the same mapping as :func:`featurestore.embedders.elmo.char_ids`, so
the module needs nothing but TensorFlow. Load it with ``hub.load(dir)``.

TensorFlow is imported on first use (``tf_runtime``), not when this module is imported: the
module class is built then, by :func:`hub_module_class`.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from featurestore.embedders.base import Embedder
from featurestore.embedders.elmo import (
    BOS_CHAR,
    BOS_TOKEN,
    BOW_CHAR,
    EOS_CHAR,
    EOS_TOKEN,
    EOW_CHAR,
    PAD_CHAR,
    ElmoBiLM,
    ElmoEmbedder,
    NativeElmoEmbedder,
    pool_layers,
)
from featurestore.embedders.elmo_spec import OUTPUT_ELMO
from featurestore.embedders.tf_runtime import Tensor, tensorflow
from featurestore.errors import ModelError

log = logging.getLogger(__name__)


def tf_char_ids(tokens: Tensor, max_chars: int = 50) -> Tensor:
    """Shifted ELMo character ids int32[N, max_chars] of string[N] tokens, as TF ops."""
    tf = tensorflow()
    room = max_chars - 2
    cut = tf.strings.substr(tokens, 0, room, unit="BYTE")  # ELMo keeps the first 48 bytes
    pieces = tf.strings.bytes_split(cut)
    values = tf.cast(tf.reshape(tf.io.decode_raw(pieces.flat_values, tf.uint8), [-1]), tf.int32)
    chars = tf.RaggedTensor.from_row_splits(values, pieces.row_splits)
    n = tf.shape(tokens)[0]
    body = chars.to_tensor(default_value=PAD_CHAR, shape=[n, room])
    ids = tf.concat([tf.fill([n, 1], BOW_CHAR), body, tf.fill([n, 1], PAD_CHAR)], axis=1)
    pos = tf.range(max_chars)[None, :]
    ends = tf.cast(chars.row_lengths(), tf.int32)[:, None] + 1
    ids = tf.where(pos == ends, EOW_CHAR, ids)

    def marker(char: int) -> Tensor:
        row = np.full(max_chars, PAD_CHAR, np.int32)
        row[:3] = (BOW_CHAR, char, EOW_CHAR)
        return tf.constant(row)[None, :]

    ids = tf.where((tokens == BOS_TOKEN)[:, None], marker(BOS_CHAR), ids)
    ids = tf.where((tokens == EOS_TOKEN)[:, None], marker(EOS_CHAR), ids)
    return ids + 1


@functools.cache
def hub_module_class() -> type:
    """``ElmoHubModule``, a ``tf.Module`` subclass; built on first call because it needs TensorFlow."""
    tf = tensorflow()
    base: Any = tf.Module  # a class known only once TensorFlow is imported

    class ElmoHubModule(base):
        """The saved module: google/elmo/3's two signatures over the native network's variables."""

        def __init__(self, bilm: ElmoBiLM) -> None:
            super().__init__(name="elmo")
            self._bilm = bilm
            self.weights = list(bilm.variables)  # tracked, so the SavedModel stores them

        def _outputs(self, tokens: Tensor, sequence_len: Tensor) -> dict[str, Tensor]:
            bilm, o = self._bilm, self._bilm.options
            B, T = tf.shape(tokens)[0], tf.shape(tokens)[1]
            uniq, where = tf.unique(tf.reshape(tokens, [-1]))
            markers = tf.constant([BOS_TOKEN, EOS_TOKEN])
            # The character CNN runs once per distinct token of the batch, then a gather.
            table = bilm.char_cnn(tf_char_ids(tf.concat([markers, uniq], 0), o.max_chars))
            idx = tf.reshape(where, [B, T]) + 2
            full = tf.concat([tf.zeros([B, 1], tf.int32), idx, tf.ones([B, 1], tf.int32)], axis=1)
            pos = tf.range(T + 2)[None, :]
            full = tf.where(pos == sequence_len[:, None] + 1, 1, full)  # </S> right after the last token
            emb = tf.gather(table, full)
            lengths = sequence_len + 2
            zeros_c = tf.zeros([o.n_layers, 2, B, o.lstm_dim])
            zeros_m = tf.zeros([o.n_layers, 2, B, o.projection_dim])
            layers, _, _ = bilm.layers(emb, lengths, zeros_c, zeros_m)
            mask = tf.sequence_mask(sequence_len, T, dtype=tf.float32)[None, :, :, None]
            inner = layers[:, :, 1 : T + 1] * mask
            out = {
                "word_emb": emb[:, 1 : T + 1] * mask[0],
                "elmo": tf.reduce_mean(inner, axis=0),
                "default": pool_layers(layers, lengths, OUTPUT_ELMO),
                "sequence_len": sequence_len,
            }
            for k in range(1, o.n_layers + 1):
                out[f"lstm_outputs{k}"] = inner[k]
            return out

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="tokens")])
        def default(self, tokens: Tensor) -> dict[str, Tensor]:
            """Sentences split on single spaces, empty pieces dropped (as google/elmo/3)."""
            ragged = tf.strings.split(tokens, sep=" ")
            ragged = tf.ragged.boolean_mask(ragged, tf.strings.length(ragged) > 0)
            return self._outputs(ragged.to_tensor(default_value=""), tf.cast(ragged.row_lengths(), tf.int32))

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, None], tf.string, name="tokens"),
                tf.TensorSpec([None], tf.int32, name="sequence_len"),
            ]
        )
        def tokens(self, tokens: Tensor, sequence_len: Tensor) -> dict[str, Tensor]:
            """Pre-split tokens; positions at or past ``sequence_len`` are padding."""
            return self._outputs(tokens, tf.minimum(sequence_len, tf.shape(tokens)[1]))

    return ElmoHubModule


def export_savedmodel(embedder_or_model: Embedder | ElmoBiLM, out_dir: str | os.PathLike) -> Path:
    """Write the network as a TF2 SavedModel with google/elmo/3's signatures; return the folder.

    Any embedder may be given (``fs models export`` loads whichever ``--model`` names); only a native ELMo exports."""
    if isinstance(embedder_or_model, NativeElmoEmbedder) and not isinstance(embedder_or_model, ElmoEmbedder):
        # a native ELMo on torch (elmo_torch): the same files, loaded for TensorFlow
        src = embedder_or_model.source
        embedder_or_model = ElmoBiLM.from_files(src["options"], src["weights"])
    bilm = embedder_or_model.bilm if isinstance(embedder_or_model, ElmoEmbedder) else embedder_or_model
    if not isinstance(bilm, ElmoBiLM):
        raise ModelError(f"cannot export {type(embedder_or_model).__name__}: give an ElmoEmbedder or ElmoBiLM")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ModelError(f"export folder {out} is not empty; give a new or empty folder")
    tf = tensorflow()
    module = hub_module_class()(bilm)
    signatures = {"default": module.default.get_concrete_function(), "tokens": module.tokens.get_concrete_function()}
    tf.saved_model.save(module, str(out), signatures=signatures)
    log.info("exported ELMo SavedModel to %s", out)
    return out


def __getattr__(name: str) -> Any:
    # ``ElmoHubModule`` stays importable by name; building it imports TensorFlow.
    if name == "ElmoHubModule":
        return hub_module_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [  # noqa: F822 -- ElmoHubModule comes from the module __getattr__ above
    "ElmoHubModule",
    "export_savedmodel",
    "hub_module_class",
    "tf_char_ids",
]
