"""Next-token language models over a classifier's `embedding` and `encoder` groups.

ULMFiT (Howard & Ruder 2018) and Dai & Le (2015): an encoder pretrained as a
language model on unlabeled text classifies better, and from fewer labels,
than one trained on labels alone. The language model here is built from the
classifier's own layer builders (`sentiment_dist.models.classifier`), so its `embedding`
and `encoder_*` layers have exactly the names and weight shapes of the
classifier's; only the output layer (`head_lm_*`) is its own.

A bidirectional encoder is two language models sharing the embedding: the
forward LSTM reads the text and predicts the next token, the backward LSTM
reads it reversed and predicts the previous one. Keras' `Bidirectional`
returns the backward outputs flipped back into input order, and with right
padding (masked) the backward layer starts on the last real token, so
`backward[t]` has read tokens `t..end` and predicts token `t-1`
(`tests/test_pretrain.py` checks this against a plain LSTM on the reversed
text). A stacked bidirectional encoder cannot be pretrained this way: its
second layer's forward half reads the first layer's backward states, which
have seen the token it must predict. How the model is trained:
`sentiment_dist.training.language_modeling`.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig

from sentiment_dist.models.classifier import embed, recurrent_layer
from sentiment_dist.runtime.errors import UserError

DIRECTIONS = ("forward", "backward")


@keras.saving.register_keras_serializable(package="sentiment_dist")
class LanguageModelHead(keras.layers.Layer):
    """Output embedding `[vocab, units]` and bias `[vocab]`: the layout
    `tf.nn.sampled_softmax_loss` takes, so training never forms full logits."""

    def __init__(self, vocab_size: int, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(self.vocab_size, input_shape[-1]), initializer="glorot_uniform", name="kernel")
        self.bias = self.add_weight(shape=(self.vocab_size,), initializer="zeros", name="bias")

    def call(self, hidden):
        """Full logits (for evaluation)."""
        return tf.matmul(hidden, self.kernel, transpose_b=True) + self.bias

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size}


class LanguageModel(keras.Model):
    """`encoder`: token ids -> hidden states per direction; `heads`: one output layer per direction."""

    def __init__(self, encoder: keras.Model, heads: list[LanguageModelHead], **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.heads = heads
        self.built = True  # its parts are: weights can be saved and loaded before any call

    def call(self, tokens, training=False):
        states = self.encoder(tokens, training=training)
        return list(states) if isinstance(states, list | tuple) else [states]

    @property
    def directions(self) -> tuple[str, ...]:
        return DIRECTIONS[: len(self.heads)]


def check_pretrainable(cfg: DictConfig) -> None:
    if cfg.bidirectional and cfg.num_layers > 1:
        raise UserError(
            "a stacked bidirectional encoder cannot be pretrained as a language model (its upper layer "
            "would see the future through the lower layer's backward states); pretrain with "
            "model.num_layers=1 or model.bidirectional=false."
        )


def build_language_model(cfg: DictConfig, vocab_size: int) -> LanguageModel:
    """The classifier's embedding and (bi)LSTM layers, every step's states out, and LM heads."""
    check_pretrainable(cfg)
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")  # any length, as the classifier
    x = embed(cfg, tokens, vocab_size)
    for index in range(cfg.num_layers):
        x = recurrent_layer(cfg, index, return_sequences=True, merge_mode=None)(x)
        if index < cfg.num_layers - 1 and cfg.dropout > 0:
            x = keras.layers.Dropout(cfg.dropout, name=f"encoder_dropout_{index}")(x)
    states = list(x) if cfg.bidirectional else [x]
    if cfg.dropout > 0:  # as the classifier drops out before its head
        states = [keras.layers.Dropout(cfg.dropout, name=f"head_lm_dropout_{d}")(s) for d, s in zip(DIRECTIONS, states, strict=False)]
    encoder = keras.Model(tokens, states if cfg.bidirectional else states[0], name="lm_encoder")
    heads = []
    for direction in DIRECTIONS[: len(states)]:
        head = LanguageModelHead(vocab_size, name=f"head_lm_{direction}", dtype="float32")
        head.build((None, cfg.units))
        heads.append(head)
    return LanguageModel(encoder, heads, name="language_model")


def unigram_log_frequencies(counts: np.ndarray) -> np.ndarray:
    """Log frequencies of the (non-padding) tokens, add-one smoothed: the LM heads' initial bias.

    With a zero bias the quickest way to lower the loss is to learn the
    unigram distribution through the states, by driving them to a constant,
    saturated vector; the LSTM then stops learning context (measured on IMDB:
    |h| ~ 0.99 everywhere, perplexity stuck at the unigram's). Starting from
    the unigram bias leaves the states only context to learn."""
    counts = np.asarray(counts, np.float64) + 1.0  # each id's count in the training rows (padding: 0)
    return np.log(counts / counts.sum()).astype(np.float32)
