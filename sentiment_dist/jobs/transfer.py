"""Moving trained weights into a new model: for fine-tuning and for language-model initialisation.

Transfer follows ULMFiT (Howard & Ruder 2018): the source vocabulary is kept
(or extended) so embedding rows keep their meaning, layers are copied by name
(`embedding`, `encoder_*`, and the head when the label set is the source's),
layer groups can be frozen, `gradual` unfreezes one group per epoch from the
top, and each group trains at its own learning rate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import keras
import numpy as np
from omegaconf import DictConfig

from sentiment_dist.data.tokenizer import VocabularyRequest
from sentiment_dist.jobs.rundir import ClassifierRun, PretrainedRun
from sentiment_dist.models.classifier import GROUPS, build_classifier, group_variables, layer_group
from sentiment_dist.runtime.distribute import Distribution
from sentiment_dist.runtime.errors import UserError
from sentiment_dist.training.optimizers import ParamGroup, param_groups

log = logging.getLogger(__name__)

UNFREEZE_ORDER = ("head", "encoder", "embedding")  # top first
# The model keys that fix the shapes of pretrained weights; pooling, head,
# dropout and sequence length may differ between stages.
SHAPE_KEYS = ("vocab_size", "embedding_dim", "units", "num_layers", "bidirectional")


def vocabulary_request(source: list[str], mode: str, max_new_tokens: int) -> VocabularyRequest:
    """The source vocabulary, kept exactly (`source`) or extended (`extend`) with the most
    frequent new words of the target's training texts."""
    return VocabularyRequest(base=tuple(source), extend=max_new_tokens if mode == "extend" else 0)


def vocabulary_for(source: list[str], mode: str, max_new_tokens: int, dist: Distribution,
                   texts: Callable[[], np.ndarray]) -> list[str]:
    """`vocabulary_request`'s vocabulary for texts held in memory (chosen on the chief, given to every rank)."""
    request = vocabulary_request(source, mode, max_new_tokens)
    return dist.shared(lambda: request.for_texts(texts()))


def _grown(weights: list[np.ndarray], rows: int) -> list[np.ndarray]:
    """Per-token weights grown to `rows` tokens (an extended vocabulary): every
    known row keeps its index, new rows start at the mean known row (index 0,
    padding, excluded), a neutral word."""
    grown = []
    for array in weights:
        extra = rows - array.shape[0]
        if extra > 0:
            array = np.concatenate([array, np.repeat(array[1:].mean(axis=0, keepdims=True), extra, axis=0)])
        grown.append(array)
    return grown


def copy_layers(source: Iterable[keras.layers.Layer], target: Iterable[keras.layers.Layer], origin: str,
                missing: str | None = None) -> list[str]:
    """Copy weights into `target`'s layers from `source`'s of the same name; returns the copied names.

    Per-token tables (the embedding, language-model heads) grow to the target's
    vocabulary. A target layer the source lacks keeps its initialisation, or is
    an error when `missing` (the sentence to raise) is given."""
    sources = {layer.name: layer for layer in source if layer.weights}
    copied = []
    for layer in target:
        if not layer.weights:
            continue
        if layer.name not in sources:
            if missing:
                raise UserError(missing.format(name=layer.name))
            continue
        mine, weights = layer.get_weights(), sources[layer.name].get_weights()
        if layer.name == "embedding" or layer.name.startswith("head_lm"):
            weights = _grown(weights, mine[0].shape[0])
        if [w.shape for w in weights] != [w.shape for w in mine]:
            raise UserError(
                f"layer {layer.name!r} of {origin} has shapes {[w.shape for w in weights]}, not "
                f"{[w.shape for w in mine]}; the weights do not fit this model, train the source again with this model."
            )
        layer.set_weights(weights)
        copied.append(layer.name)
    return copied


def trainable_groups(schedule: str, epoch: int, frozen: set[str]) -> set[str]:
    """Groups that train in `epoch` (0-based) under `schedule`."""
    active = {"frozen": {"head"}, "full": set(GROUPS), "gradual": set(UNFREEZE_ORDER[: epoch + 1])}[schedule]
    return active - frozen


def discriminative_groups(settings: DictConfig, classifier: keras.Model) -> tuple[list[ParamGroup], Callable[[int], set[str]]]:
    """One optimizer per layer group at its own rate, and the groups that train in each epoch."""
    frozen = {str(group) for group in settings.freeze or []}
    groups = param_groups(group_variables(classifier.layers), settings.lr_multipliers)

    def schedule(epoch: int) -> set[str]:
        active = trainable_groups(settings.schedule, epoch, frozen)
        if not active:
            raise UserError("every layer group is frozen in this schedule; remove a group from finetune.freeze.")
        return active

    schedule(0)  # fail before training on a schedule that trains nothing
    return groups, schedule


def anchor(groups: list[ParamGroup], settings: DictConfig, transferred: set[str]) -> None:
    """L2-SP (`finetune.l2_sp`): the groups whose weights came from the source are pulled toward
    them; a new head, which has no source value, is not."""
    for group in groups:
        if group.name in transferred:
            group.anchor = float(settings.get("l2_sp") or 0.0)


def transferred_classifier(
    settings: DictConfig, dist: Distribution, source: ClassifierRun, vocab_size: int, label_names: list[str]
) -> tuple[keras.Model, list[ParamGroup], Callable[[int], set[str]]]:
    """The source's architecture and weights with a head for `label_names`,
    its per-group learning rates, and the schedule of groups per epoch."""
    same_labels = label_names == source.label_names
    reuse_head = same_labels if settings.head == "auto" else settings.head == "reuse"
    if reuse_head and not same_labels:
        raise UserError(
            f"finetune.head=reuse needs the source's classes {source.label_names}, the target has "
            f"{label_names}; use finetune.head=auto."
        )
    with dist.scope():
        classifier = build_classifier(source.config.model, vocab_size, len(label_names))
        layers = [layer for layer in classifier.layers if layer.weights and (reuse_head or layer_group(layer) != "head")]
        copy_layers(
            source.classifier.layers, layers, f"the source run {source.directory}",
            missing="the source model has no layer {name!r}: it is a different model family; fine-tune from a run of the same model.",
        )
    groups, schedule = discriminative_groups(settings, classifier)
    anchor(groups, settings, {"embedding", "encoder"} | ({"head"} if reuse_head else set()))
    if dist.is_chief:
        log.info(
            "Fine-tuning %s from %s: %d-token vocabulary, %s head, schedule %s, frozen %s, lr multipliers %s",
            source.config.model.name, source.directory, vocab_size, "reused" if reuse_head else "new",
            settings.schedule, sorted(map(str, settings.freeze or [])) or "none", dict(settings.lr_multipliers),
        )
    return classifier, groups, schedule


def language_model_layers(pretrained: PretrainedRun) -> list[keras.layers.Layer]:
    return [*pretrained.model.encoder.layers, *pretrained.model.heads]


def init_classifier(pretrained: PretrainedRun, classifier: keras.Model) -> list[str]:
    """The pretrained embedding and (bi)LSTM layers copied into `classifier`; pooling and head stay fresh."""
    layers = [layer for layer in classifier.layers if layer.weights and layer_group(layer) != "head"]
    return copy_layers(language_model_layers(pretrained), layers, f"init.from={pretrained.directory}")


def pretrained_classifier(
    settings: DictConfig, dist: Distribution, pretrained: PretrainedRun, vocab_size: int, label_names: list[str],
    model: DictConfig | None = None,
) -> tuple[keras.Model, list[ParamGroup], Callable[[int], set[str]]]:
    """ULMFiT's last stage: the pretrained embedding and encoder under a new
    head, with the fine-tune's (`settings`) schedule and per-group learning
    rates. `model` (default: the pretrained one) may pool differently."""
    model = model or pretrained.config.model
    if settings.head == "reuse":
        raise UserError("finetune.head=reuse needs a classifier to take the head from; use finetune.head=auto with init.from.")
    with dist.scope():
        classifier = build_classifier(model, vocab_size, len(label_names))
        copied = init_classifier(pretrained, classifier)
    groups, schedule = discriminative_groups(settings, classifier)
    anchor(groups, settings, {"embedding", "encoder"})
    if dist.is_chief:
        log.info(
            "Fine-tuning a %s classifier from the language model in %s (%s): %d-token vocabulary, schedule %s, "
            "frozen %s, lr multipliers %s",
            model.name, pretrained.directory, ", ".join(copied), vocab_size, settings.schedule,
            sorted(map(str, settings.freeze or [])) or "none", dict(settings.lr_multipliers),
        )
    return classifier, groups, schedule


def init_from(cfg: DictConfig) -> str | None:
    """The pretrain run dir named by `init.from`, or None."""
    init = cfg.get("init") or {}
    return init.get("from") or None


def check_compatible(pretrained: PretrainedRun, model_cfg: DictConfig) -> None:
    """Fail in one sentence when `model_cfg` cannot take the pretrained weights."""
    for key in SHAPE_KEYS:
        have, want = pretrained.config.model[key], model_cfg[key]
        if have != want:
            raise UserError(
                f"init.from={pretrained.directory} was pretrained with model.{key}={have} but this run has "
                f"model.{key}={want}; set model.{key}={have} (or pretrain a model that matches)."
            )
