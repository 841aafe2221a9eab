"""LSTM classifier builders, named layer groups and the raw-text inference model.

Every layer of a classifier is named `<group>_<what>` with group one of
`embedding`, `encoder`, `head`, so that freezing and per-group learning rates
address groups, not layer indices. The classifier maps token ids to class
probabilities (one sigmoid unit for two classes, a softmax over K otherwise);
`inference_model` puts the vectorizer in front so the saved model takes raw
strings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import keras
from omegaconf import DictConfig

from sentiment_dist.runtime.errors import UserError

log = logging.getLogger(__name__)

GROUPS = ("embedding", "encoder", "head")
CLASSIFIER_NAME = "classifier"


@keras.saving.register_keras_serializable(package="sentiment_dist")
class AttentionPooling(keras.layers.Layer):
    """Additive attention over time steps (Bahdanau-style scores), mask-aware."""

    def __init__(self, units: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.supports_masking = True
        self.score_hidden = keras.layers.Dense(units, activation="tanh", name="score_hidden")
        self.score = keras.layers.Dense(1, use_bias=False, name="score")

    def build(self, input_shape):
        self.score_hidden.build(input_shape)
        self.score.build((*input_shape[:-1], self.units))

    def call(self, sequence, mask=None):
        scores = self.score(self.score_hidden(sequence))[..., 0]
        if mask is not None:
            scores = keras.ops.where(mask, scores, keras.ops.full_like(scores, -1e9))
        weights = keras.ops.softmax(scores, axis=-1)
        return keras.ops.sum(sequence * keras.ops.expand_dims(weights, -1), axis=1)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="sentiment_dist")
class MaskedMaxPooling(keras.layers.Layer):
    """The maximum over the real (unmasked) time steps.

    Keras' GlobalMaxPooling1D ignores the mask, and the LSTM outputs zeros at
    padding, so a unit negative on every real step of a shorter text pooled
    to 0 instead of its maximum. A row without real steps pools to zeros."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, sequence, mask=None):
        if mask is None:
            return keras.ops.max(sequence, axis=1)
        real = keras.ops.expand_dims(mask, -1)
        # below any LSTM output ([-1, 1]) and still finite in float16 / bfloat16
        floor = keras.ops.full_like(sequence, -1e4)
        pooled = keras.ops.max(keras.ops.where(real, sequence, floor), axis=1)
        return keras.ops.where(keras.ops.any(real, axis=1), pooled, keras.ops.zeros_like(pooled))

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


def recurrent_layer(cfg: DictConfig, index: int, return_sequences: bool, merge_mode: str | None = "concat"):
    """The `index`-th (bi)LSTM layer of the encoder.

    The classifier and the language model (`sentiment_dist.models.language_model`)
    both build their layers here, so pretrained weights have the names and
    shapes the classifier expects (`return_sequences` and `merge_mode` change
    no weight)."""
    lstm = keras.layers.LSTM(
        cfg.units,
        return_sequences=return_sequences,
        recurrent_dropout=cfg.recurrent_dropout,
        kernel_regularizer=keras.regularizers.L2(cfg.l2) if cfg.l2 else None,
        name=f"encoder_lstm_{index}",
    )
    if cfg.bidirectional:
        return keras.layers.Bidirectional(lstm, merge_mode=merge_mode, name=f"encoder_bilstm_{index}")
    return lstm


def embed(cfg: DictConfig, tokens: keras.KerasTensor, vocab_size: int) -> keras.KerasTensor:
    """The `embedding` group: token ids -> (dropped-out) vectors, padding masked."""
    x = keras.layers.Embedding(
        vocab_size,
        cfg.embedding_dim,
        mask_zero=True,  # right-padded masks keep the cuDNN kernel eligible
        embeddings_regularizer=keras.regularizers.L2(cfg.l2) if cfg.l2 else None,
        name="embedding",
    )(tokens)
    if cfg.embedding_dropout > 0:
        x = keras.layers.SpatialDropout1D(cfg.embedding_dropout, name="embedding_dropout")(x)
    return x


def _recurrent_encoder(cfg: DictConfig, tokens: keras.KerasTensor) -> keras.KerasTensor:
    """Stacked (bi)LSTM layers and the pooling that turns a sequence into a vector."""
    if cfg.recurrent_dropout > 0:
        log.warning(
            "model.recurrent_dropout=%s disables the fused / cuDNN LSTM kernel: "
            "about 2x slower on CPU and far slower on GPU; use model.dropout instead.",
            cfg.recurrent_dropout,
        )
    pooling = cfg.pooling
    x = tokens
    for index in range(cfg.num_layers):
        last_layer = index == cfg.num_layers - 1
        x = recurrent_layer(cfg, index, return_sequences=not (last_layer and pooling == "last"))(x)
        if not last_layer and cfg.dropout > 0:
            x = keras.layers.Dropout(cfg.dropout, name=f"encoder_dropout_{index}")(x)
    if pooling == "max":
        x = MaskedMaxPooling(name="encoder_max_pool")(x)
    elif pooling == "mean":
        x = keras.layers.GlobalAveragePooling1D(name="encoder_mean_pool")(x)
    elif pooling == "max_mean":  # ULMFiT's concat pooling, less the last state (which max and mean mostly cover)
        x = keras.layers.Concatenate(name="encoder_max_mean")(
            [MaskedMaxPooling(name="encoder_max_pool")(x),
             keras.layers.GlobalAveragePooling1D(name="encoder_mean_pool")(x)]
        )
    elif pooling == "attention":
        x = AttentionPooling(cfg.attention_units, name="encoder_attention")(x)
    return x


def _attention_encoder(cfg: DictConfig, tokens: keras.KerasTensor) -> keras.KerasTensor:
    if cfg.pooling != "attention":
        raise UserError("model=attention_lstm needs model.pooling=attention; use model=bilstm for other poolings.")
    return _recurrent_encoder(cfg, tokens)


# name -> encoder builder. lstm / bilstm / stacked_lstm differ only in their
# configs (conf/model/*.yaml); the name is kept so that a fine-tune can check
# that the source run is of the same family.
ENCODERS: dict[str, Callable[[DictConfig, keras.KerasTensor], keras.KerasTensor]] = {
    "lstm": _recurrent_encoder,
    "bilstm": _recurrent_encoder,
    "stacked_lstm": _recurrent_encoder,
    "attention_lstm": _attention_encoder,
}


def build_classifier(cfg: DictConfig, vocab_size: int, num_classes: int) -> keras.Model:
    """Token ids `[batch, length]` (at most model.sequence_length, right-padded) -> class probabilities.

    Any length: with trainer.batch_by_length a batch is cut to its longest review, and
    padding is masked, so a review scores the same however much padding follows it."""
    if num_classes < 2:
        raise UserError("the data has fewer than 2 classes; a classifier needs at least two.")
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    x = embed(cfg, tokens, vocab_size)
    x = ENCODERS[cfg.name](cfg, x)
    if cfg.dropout > 0:
        x = keras.layers.Dropout(cfg.dropout, name="head_dropout")(x)
    if cfg.head_units:
        x = keras.layers.Dense(cfg.head_units, activation="relu", name="head_dense")(x)
    binary = num_classes == 2
    # float32 output even under mixed precision: the loss needs it.
    probabilities = keras.layers.Dense(
        1 if binary else num_classes,
        activation="sigmoid" if binary else "softmax",
        dtype="float32",
        name="head_output",
    )(x)
    return keras.Model(tokens, probabilities, name=CLASSIFIER_NAME)


def layer_group(layer: keras.layers.Layer) -> str:
    group = layer.name.split("_")[0]
    if group not in GROUPS:
        raise ValueError(f"layer {layer.name!r} belongs to no group of {GROUPS}")
    return group


def group_variables(layers: Iterable[keras.layers.Layer]) -> dict[str, list]:
    """Trainable variables of each layer group, in `GROUPS` order: a classifier's
    `model.layers`, or a language model's encoder layers and heads."""
    groups: dict[str, list] = {name: [] for name in GROUPS}
    for layer in layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        groups[layer_group(layer)].extend(layer.trainable_variables)
    return groups


def per_example_loss(labels, probabilities, num_classes: int):
    """Binary or sparse categorical cross-entropy per example (no reduction)."""
    if num_classes == 2:
        return keras.losses.binary_crossentropy(
            keras.ops.expand_dims(keras.ops.cast(labels, probabilities.dtype), -1), probabilities
        )
    return keras.losses.sparse_categorical_crossentropy(labels, probabilities)


def predicted_class(probabilities, num_classes: int, threshold=0.5):
    """The class of each row: for two classes, positive when P(positive) >= `threshold`."""
    if num_classes == 2:
        return keras.ops.cast(probabilities[:, 0] >= threshold, "int32")
    return keras.ops.cast(keras.ops.argmax(probabilities, axis=-1), "int32")


def inference_model(vectorizer: keras.layers.Layer, classifier: keras.Model) -> keras.Model:
    """Raw strings `[batch]` -> probabilities; what `model.keras` holds."""
    text = keras.Input(shape=(1,), dtype="string", name="text")
    tokens = vectorizer(text)
    return keras.Model(text, classifier(tokens), name="sentiment_model")
