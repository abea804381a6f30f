"""Small real TF Hub-style modules for tests/test_hub.py, built with TensorFlow: imported by its fixtures,
not when pytest collects the tests (importing TensorFlow cost every pytest-xdist worker 5 s)."""

from __future__ import annotations

import numpy as np

from featurestore.embedders.tf_runtime import tensorflow

tf = tensorflow()

WORD, LSTM, BUCKETS = 4, 6, 97  # tests/test_hub.py repeats WORD and LSTM


class FakeElmo(tf.Module):
    """Hashes tokens into an embedding table; the "LSTM" layers mix in the masked sentence mean."""

    def __init__(self) -> None:
        super().__init__()
        rng = np.random.default_rng(0)
        self.table = tf.Variable(rng.normal(size=(BUCKETS, WORD)).astype(np.float32))
        self.w1 = tf.Variable(rng.normal(size=(2 * WORD, LSTM)).astype(np.float32))
        self.w2 = tf.Variable(rng.normal(size=(LSTM, LSTM)).astype(np.float32))

    def _layers(self, tokens: tf.Tensor, lengths: tf.Tensor) -> dict[str, tf.Tensor]:
        word = tf.gather(self.table, tf.strings.to_hash_bucket_fast(tokens, BUCKETS))
        mask = tf.sequence_mask(lengths, tf.shape(tokens)[1], dtype=tf.float32)[:, :, None]
        context = tf.reduce_sum(word * mask, 1, keepdims=True) / tf.maximum(tf.reduce_sum(mask, 1, keepdims=True), 1.0)
        lstm1 = tf.tanh(tf.einsum("btd,de->bte", tf.concat([word, word + context], -1), self.w1))
        lstm2 = tf.tanh(tf.einsum("btd,de->bte", lstm1, self.w2))
        elmo = 0.2 * tf.concat([word, word], -1)[:, :, :LSTM] + 0.5 * lstm1 + 0.3 * lstm2
        pooled = tf.reduce_sum(elmo * mask, 1) / tf.maximum(tf.reduce_sum(mask, 1), 1.0)
        return {
            "word_emb": word,
            "lstm_outputs1": lstm1,
            "lstm_outputs2": lstm2,
            "elmo": elmo,
            "default": pooled,
            "sequence_len": lengths,
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def default(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
        ragged = tf.strings.split(text, sep=" ")
        ragged = tf.ragged.boolean_mask(ragged, tf.strings.length(ragged) > 0)
        return self._layers(ragged.to_tensor(default_value=""), tf.cast(ragged.row_lengths(), tf.int32))

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string), tf.TensorSpec([None], tf.int32)])
    def tokens(self, tokens: tf.Tensor, sequence_len: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._layers(tokens, sequence_len)


class StringsToStrings(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def default(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"upper": tf.strings.upper(text)}


class SentenceEncoder(tf.Module):
    """A generic strings -> vectors module whose only rank-2 float output is not called "default"."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def encode(self, sentences: tf.Tensor) -> dict[str, tf.Tensor]:
        n = tf.cast(tf.strings.length(sentences), tf.float32)
        return {"vec": tf.stack([n, n * 2.0, tf.ones_like(n)], axis=1), "n": tf.cast(n, tf.int32)}
