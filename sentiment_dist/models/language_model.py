"""Next-token language models over a classifier's `embedding` and `encoder` groups.

ULMFiT (Howard & Ruder 2018) and Dai & Le (2015): an encoder pretrained as a
language model on unlabeled text classifies better, and from fewer labels,
than one trained on labels alone. The language model here is built from the
classifier's own layer builders (`sentiment_dist.models`), so its `embedding`
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
have seen the token it must predict.

Training uses sampled softmax (Jean et al. 2015; `tf.nn.sampled_softmax_loss`,
log-uniform negatives: the vocabulary is sorted by frequency), so a step costs
`num_sampled`, not the vocabulary size; held-out perplexity uses the full
softmax, one review at a time to bound memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig

from sentiment_dist.data.pipeline import TokenizedSplit, evaluation_batches
from sentiment_dist.distribute import Distribution
from sentiment_dist.errors import UserError
from sentiment_dist.models import embed, group_variables, recurrent_layer
from sentiment_dist.trainer import ParamGroup, param_groups

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


def lm_param_groups(model: LanguageModel, multipliers) -> list[ParamGroup]:
    """ULMFiT's discriminative fine-tuning of a language model: the embedding,
    the LSTM layers and the LM heads each train at their own multiple of the
    learning rate (lower layers hold more general knowledge, so they move less)."""
    return param_groups(group_variables([*model.encoder.layers, *model.heads]), multipliers, "lm.lr_multipliers")


def unigram_log_frequencies(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """Log frequencies of the (non-padding) tokens, add-one smoothed: the LM heads' initial bias.

    With a zero bias the quickest way to lower the loss is to learn the
    unigram distribution through the states, by driving them to a constant,
    saturated vector; the LSTM then stops learning context (measured on IMDB:
    |h| ~ 0.99 everywhere, perplexity stuck at the unigram's). Starting from
    the unigram bias leaves the states only context to learn."""
    counts = np.bincount(tokens[tokens > 0].ravel(), minlength=vocab_size)[:vocab_size].astype(np.float64) + 1.0
    return np.log(counts / counts.sum()).astype(np.float32)


def targets(tokens, direction: str):
    """Next-token targets in `direction` and where they are real (not padding, not past the text)."""
    padding = tf.zeros_like(tokens[:, :1])
    if direction == "forward":
        shifted = tf.concat([tokens[:, 1:], padding], axis=1)
    else:
        shifted = tf.concat([padding, tokens[:, :-1]], axis=1)
    return shifted, tf.logical_and(tokens > 0, shifted > 0)


class LanguageModelTask:
    """Next-token cross-entropy, averaged over every real target token of the global batch.

    The global token count varies per batch, so each replica divides its sum
    by the count summed over replicas (one scalar all-reduce): the gradients
    summed by the trainer are then those of one device on the whole batch.
    `num_sampled` negatives per step (sampled softmax); None or at least
    the vocabulary: the full softmax (exact, and deterministic across strategies).
    """

    def __init__(self, vocab_size: int, num_sampled: int | None):
        if num_sampled is not None and num_sampled < 1:
            raise UserError(f"lm.num_sampled={num_sampled} must be a positive number of negatives, or null for the full softmax.")
        self.vocab_size = vocab_size
        self.num_sampled = None if num_sampled is None or num_sampled >= vocab_size - 1 else int(num_sampled)

    def replica_loss(self, model, batch, global_batch, dist):
        tokens = batch[0]
        loss_sum, count = 0.0, 0.0
        for direction, states, head in zip(model.directions, model(tokens, training=True), model.heads, strict=True):
            target, real = targets(tokens, direction)
            hidden = tf.cast(tf.boolean_mask(states, real), tf.float32)
            labels = tf.boolean_mask(target, real)
            if self.num_sampled:
                losses = tf.nn.sampled_softmax_loss(
                    head.kernel, head.bias, tf.cast(labels[:, None], tf.int64), hidden,
                    num_sampled=self.num_sampled, num_classes=self.vocab_size,
                )
            else:
                losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, head(hidden))
            loss_sum += tf.reduce_sum(losses)
            count += tf.cast(tf.size(labels), tf.float32)
        (global_count,) = dist.all_reduce_sum([tf.convert_to_tensor(count)])
        return loss_sum / tf.maximum(global_count, 1.0), tf.stack([loss_sum, 0.0, count])

    def progress(self, totals):
        return {"loss": totals[0] / max(totals[2], 1)}

    def evaluator(self, dist, model, global_batch, by_length=False):
        return LanguageModelEvaluator(dist, model, global_batch, by_length)

    def epoch_logs(self, totals, result, seconds):
        logs = {
            "loss": totals[0] / max(totals[2], 1),  # sampled-softmax loss when num_sampled is set
            "tokens_per_second": totals[2] / len(result.directions) / seconds,
            "val_loss": result.loss,
            "val_perplexity": result.perplexity,
            "val_accuracy": result.accuracy,
        }
        if len(result.directions) > 1:
            logs.update({f"val_perplexity_{d}": p for d, p in result.perplexity_by_direction.items()})
        return logs


@dataclass
class LanguageModelEvaluation:
    """Full-softmax statistics per direction: `[nll sum, correct, tokens]`."""

    directions: tuple[str, ...]
    stats: np.ndarray

    @property
    def tokens(self) -> int:
        return int(self.stats[:, 2].sum())

    @property
    def loss(self) -> float:
        """Mean negative log-likelihood per token (nats), over every direction."""
        return float(self.stats[:, 0].sum() / max(self.tokens, 1))

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def accuracy(self) -> float:
        return float(self.stats[:, 1].sum() / max(self.tokens, 1))

    @property
    def perplexity_by_direction(self) -> dict[str, float]:
        return {d: math.exp(row[0] / max(row[2], 1)) for d, row in zip(self.directions, self.stats, strict=True)}

    def as_dict(self) -> dict:
        return {"loss": self.loss, "perplexity": self.perplexity, "accuracy": self.accuracy, "tokens": self.tokens,
                "perplexity_by_direction": self.perplexity_by_direction}


class LanguageModelEvaluator:
    """Held-out perplexity with the full softmax, every real token counted once."""

    def __init__(self, dist: Distribution, model: LanguageModel, global_batch: int, by_length: bool = False):
        self.dist, self.model, self.global_batch, self.by_length = dist, model, global_batch, by_length

        @tf.function(reduce_retracing=True)
        def step(batch):
            return dist.reduce_sum(dist.run(self._replica_step, args=batch))

        self._step = step

    def _replica_step(self, tokens, labels, weights):
        rows = []
        for direction, states, head in zip(self.model.directions, self.model(tokens, training=False), self.model.heads, strict=True):
            target, real = targets(tokens, direction)

            def one_review(args, head=head):  # [T, V] logits at a time, not [B, T, V]
                hidden, target, real = args
                logits = head(tf.cast(hidden, tf.float32))
                nll = tf.nn.sparse_softmax_cross_entropy_with_logits(target, logits)
                correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=target.dtype), target), tf.float32)
                return tf.stack([tf.reduce_sum(nll * real), tf.reduce_sum(correct * real), tf.reduce_sum(real)])

            per_review = tf.map_fn(one_review, (states, target, tf.cast(real, tf.float32)), fn_output_signature=tf.float32)
            rows.append(tf.reduce_sum(per_review, axis=0))
        return tf.stack(rows)

    def evaluate(self, split: TokenizedSplit) -> LanguageModelEvaluation:
        stats = np.zeros((len(self.model.heads), 3))
        batches = self.dist.distribute_dataset(
            lambda shard: evaluation_batches(split, self.global_batch, shard, self.by_length)
        )
        for batch in batches:
            stats += self._step(batch).numpy()
        return LanguageModelEvaluation(self.model.directions, stats)


# -- pretrain runs as the starting point of later stages (`init.from`) ----------

LM_WEIGHTS_FILE = "language_model.weights.h5"
# The model keys that fix the shapes of the pretrained weights. Pooling,
# head, dropout and sequence length may differ between stages.
SHAPE_KEYS = ("vocab_size", "embedding_dim", "units", "num_layers", "bidirectional")


@dataclass
class PretrainedRun:
    directory: str
    config: DictConfig
    vocabulary: list[str]
    model: LanguageModel


def init_from(cfg: DictConfig) -> str | None:
    """The pretrain run dir named by `init.from`, or None."""
    init = cfg.get("init") or {}
    return init.get("from") or None


def load_pretrained(directory: str) -> PretrainedRun:
    """A pretrain run's config, vocabulary and language model, or one sentence on what is wrong."""
    import os

    from omegaconf import OmegaConf

    from sentiment_dist.data.pipeline import load_vocabulary

    if not os.path.isdir(directory):
        raise UserError(f"init.from={directory} does not exist; pass the run directory that pretraining printed.")
    weights = os.path.join(directory, LM_WEIGHTS_FILE)
    config_path = os.path.join(directory, "config.yaml")
    if not os.path.isfile(weights) or not os.path.isfile(config_path):
        raise UserError(
            f"init.from={directory} is not a finished pretrain run (no {LM_WEIGHTS_FILE} or config.yaml); "
            "point it at a `python -m sentiment_dist.pretrain` run dir (a classifier run goes to finetune.source)."
        )
    vocabulary = load_vocabulary(directory)
    config = OmegaConf.load(config_path)
    model = build_language_model(config.model, len(vocabulary))
    try:
        model.load_weights(weights)
    except Exception as err:  # shapes or file damaged
        raise UserError(
            f"{weights} does not load into the model its config.yaml and vocabulary.txt describe "
            f"({type(err).__name__}); the run dir is damaged, re-run the pretraining."
        ) from err
    return PretrainedRun(directory, config, vocabulary, model)


def check_compatible(pretrained: PretrainedRun, model_cfg: DictConfig) -> None:
    """Fail in one sentence when `model_cfg` cannot take the pretrained weights."""
    for key in SHAPE_KEYS:
        have, want = pretrained.config.model[key], model_cfg[key]
        if have != want:
            raise UserError(
                f"init.from={pretrained.directory} was pretrained with model.{key}={have} but this run has "
                f"model.{key}={want}; set model.{key}={have} (or pretrain a model that matches)."
            )


def pretrained_vocabulary(settings: DictConfig, dist: Distribution, pretrained: PretrainedRun, texts) -> list[str]:
    """The pretrain run's vocabulary, reused exactly or extended with new tokens of `texts()` (on the chief)."""
    from sentiment_dist.data.pipeline import extend_vocabulary

    if settings.vocab == "source":
        return list(pretrained.vocabulary)
    if settings.vocab == "extend":
        vocabulary = None
        if dist.is_chief:
            vocabulary = extend_vocabulary(pretrained.vocabulary, texts(), settings.extend_max_tokens)
        return dist.broadcast_object(vocabulary)
    raise UserError(f"init.vocab={settings.vocab!r} is unknown; use source or extend.")


def _grown(weights: list[np.ndarray], rows: int) -> list[np.ndarray]:
    """Per-token weights grown to `rows` tokens (extended vocabulary): every
    pretrained row keeps its index, new rows start at the mean of the known
    tokens (index 0, padding, excluded)."""
    grown = []
    for array in weights:
        extra = rows - array.shape[0]
        if extra > 0:
            array = np.concatenate([array, np.repeat(array[1:].mean(axis=0, keepdims=True), extra, axis=0)])
        grown.append(array)
    return grown


def copy_pretrained(pretrained: PretrainedRun, target: keras.Model | LanguageModel) -> list[str]:
    """Copy the pretrained weights into `target`, layer by layer (by name).

    A classifier gets the `embedding` and the (bi)LSTM layers; its other
    layers (pooling, head) keep their fresh initialisation. A language model
    (continued pretraining) also gets the LM heads. Returns the copied layers.
    """
    source = pretrained.model
    sources = {layer.name: layer for layer in [*source.encoder.layers, *source.heads] if layer.weights}
    if isinstance(target, LanguageModel):
        layers = [*target.encoder.layers, *target.heads]
    else:
        layers = [layer for layer in target.layers if layer.weights and not layer.name.startswith("head")]
    copied = []
    for layer in layers:
        if layer.name not in sources or not layer.weights:
            continue
        mine = layer.get_weights()
        weights = sources[layer.name].get_weights()
        if layer.name == "embedding" or layer.name.startswith("head_lm"):
            weights = _grown(weights, mine[0].shape[0])
        if [w.shape for w in weights] != [w.shape for w in mine]:
            raise UserError(
                f"layer {layer.name!r} of init.from={pretrained.directory} has shapes {[w.shape for w in weights]}, "
                f"not {[w.shape for w in mine]}; pretrain the model this run uses."
            )
        layer.set_weights(weights)
        copied.append(layer.name)
    return copied
