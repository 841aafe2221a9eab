"""`python -m sentiment_dist.finetune`: move a trained classifier to a new domain.

    python -m sentiment_dist.finetune finetune.source=outputs/train/<time> dataset=ecommerce dataset.path=reviews.csv

With `finetune.source=null` (the default) the job first trains the source
model (`source.dataset`, `source.model`, `source.trainer`) into
`<run dir>/source`, then fine-tunes it: one command for the whole transfer.

Transfer follows ULMFiT (Howard & Ruder 2018): the source vocabulary is kept
(or extended) so embedding rows keep their meaning, layer groups can be
frozen, `gradual` unfreezes one group per epoch from the top, and each group
trains at its own learning rate (`finetune.lr_multipliers`) with its own
optimizer, since Adam would undo a plain gradient scaling.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable

import keras
import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from sentiment_dist import tracking
from sentiment_dist.config import hydra_task
from sentiment_dist.data import load_dataset
from sentiment_dist.data.pipeline import extend_vocabulary
from sentiment_dist.distribute import Distribution
from sentiment_dist.errors import UserError
from sentiment_dist.language_model import (
    PretrainedRun,
    check_compatible,
    copy_pretrained,
    init_from,
    load_pretrained,
    pretrained_vocabulary,
)
from sentiment_dist.models import GROUPS, build_classifier, group_variables, layer_group
from sentiment_dist.runs import Run, load_run
from sentiment_dist.train import fit_and_report, load_and_tokenize, run_stage, run_tracked, start, train_run
from sentiment_dist.trainer import ParamGroup, param_groups

log = logging.getLogger(__name__)

SCHEDULES = ("frozen", "full", "gradual")
UNFREEZE_ORDER = ("head", "encoder", "embedding")  # top first


def trainable_groups(schedule: str, epoch: int, frozen: set[str]) -> set[str]:
    """Groups that train in `epoch` (0-based) under `schedule`."""
    if schedule == "frozen":
        active = {"head"}
    elif schedule == "full":
        active = set(GROUPS)
    elif schedule == "gradual":
        active = set(UNFREEZE_ORDER[: epoch + 1])
    else:
        raise UserError(f"finetune.schedule={schedule!r} is unknown; use one of {', '.join(SCHEDULES)}.")
    return active - frozen


def transfer_weights(source: keras.Model, target: keras.Model, reuse_head: bool) -> None:
    """Copy the source's weights into `target`, layer by layer (matched by name).

    A larger target embedding (extended vocabulary) keeps every source row at
    its index; new rows start at the mean source embedding, a neutral word.
    The head is copied only when `reuse_head` (same label set).
    """
    for layer in target.layers:
        if not layer.weights or (layer_group(layer) == "head" and not reuse_head):
            continue
        try:
            weights = source.get_layer(layer.name).get_weights()
        except ValueError:
            raise UserError(
                f"the source model has no layer {layer.name!r}: it is a different model family; "
                "fine-tune from a run of the same model."
            ) from None
        if layer.name == "embedding" and weights[0].shape[0] < layer.get_weights()[0].shape[0]:
            table = weights[0]
            extra = layer.get_weights()[0].shape[0] - table.shape[0]
            new_rows = np.repeat(table[1:].mean(axis=0, keepdims=True), extra, axis=0)
            weights = [np.concatenate([table, new_rows])]
        if [w.shape for w in weights] != [w.shape for w in layer.get_weights()]:
            raise UserError(
                f"layer {layer.name!r} of the source model has shapes {[w.shape for w in weights]}, "
                f"not {[tuple(w.shape) for w in layer.get_weights()]}; the source run's config.yaml does not "
                "match its model.keras, retrain the source."
            )
        layer.set_weights(weights)


def prepare_source(cfg: DictConfig, dist: Distribution, directory: str, tracker_group: str | None) -> Run:
    """The source run: given by `finetune.source`, or trained now into `<run dir>/source`."""
    source_dir = cfg.finetune.source
    if source_dir is None:
        source_dir = os.path.join(directory, "source")
        source_cfg = source_config(cfg)
        run_stage(
            source_cfg, dist, source_dir, "train", lambda tracker: train_run(source_cfg, dist, source_dir, tracker),
            tracker_group,
        )
    elif not os.path.isdir(source_dir) and source_dir.count("/") == 2 and ":" in source_dir:
        # A W&B artifact reference: every rank downloads into its own dir.
        source_dir = tracking.download_model(source_dir, os.path.join(tempfile.gettempdir(), f"sentiment-dist-source-{dist.rank}"))
    run = load_run(source_dir)
    expected = cfg.finetune.expect_model
    if expected and run.config.model.name != expected:
        raise UserError(
            f"the source run {source_dir} is a {run.config.model.name}, not the {expected} that "
            "finetune.expect_model asks for; pick a matching source run."
        )
    return run


def source_config(cfg: DictConfig) -> DictConfig:
    """The config of the in-job source training: `source.*` over the shared keys."""
    shared = {key: cfg[key] for key in ("seed", "tags", "strategy", "logger", "paths", "task_name")}
    return OmegaConf.merge(shared, cfg.source)


def target_vocabulary(settings: DictConfig, dist: Distribution, source: Run, target_texts) -> list[str]:
    """The source vocabulary, reused exactly or extended with target tokens (built on the chief)."""
    if settings.vocab == "source":
        return list(source.vectorizer.get_vocabulary())
    if settings.vocab == "extend":
        vocabulary = None
        if dist.is_chief:
            vocabulary = extend_vocabulary(source.vectorizer.get_vocabulary(), target_texts(), settings.extend_max_tokens)
        return dist.broadcast_object(vocabulary)
    raise UserError(f"finetune.vocab={settings.vocab!r} is unknown; use source or extend.")


def transferred_classifier(
    settings: DictConfig, dist: Distribution, source: Run, vocab_size: int, label_names: list[str]
) -> tuple[keras.Model, list[ParamGroup], Callable[[int], set[str]]]:
    """The source's architecture and weights with a head for `label_names`,
    its per-group learning rates, and the schedule of groups per epoch."""
    frozen = set(settings.freeze or [])
    same_labels = label_names == source.label_names
    if settings.head not in ("auto", "reuse", "new"):
        raise UserError(f"finetune.head={settings.head!r} is unknown; use auto, reuse or new.")
    reuse_head = same_labels if settings.head == "auto" else settings.head == "reuse"
    if reuse_head and not same_labels:
        raise UserError(
            f"finetune.head=reuse needs the source's classes {source.label_names}, the target has "
            f"{label_names}; use finetune.head=auto."
        )
    with dist.scope():
        classifier = build_classifier(source.config.model, vocab_size, len(label_names))
        transfer_weights(source.classifier, classifier, reuse_head)
    groups, schedule = discriminative_groups(settings, classifier)
    if dist.is_chief:
        log.info(
            "Fine-tuning %s from %s: %d-token vocabulary, %s head, schedule %s, frozen %s, lr multipliers %s",
            source.config.model.name, source.directory, vocab_size, "reused" if reuse_head else "new",
            settings.schedule, sorted(frozen) or "none", dict(settings.lr_multipliers),
        )
    return classifier, groups, schedule


def discriminative_groups(settings: DictConfig, classifier: keras.Model) -> tuple[list[ParamGroup], Callable[[int], set[str]]]:
    """One optimizer per layer group at its own rate, and the groups that train in each epoch."""
    frozen = set(settings.freeze or [])
    if unknown := frozen - set(GROUPS):
        raise UserError(f"finetune.freeze has unknown groups {sorted(unknown)}; use any of {list(GROUPS)}.")
    groups = param_groups(group_variables(classifier.layers), settings.lr_multipliers, "finetune.lr_multipliers")

    def schedule(epoch: int) -> set[str]:
        active = trainable_groups(settings.schedule, epoch, frozen)
        if not active:
            raise UserError("every layer group is frozen in this schedule; remove a group from finetune.freeze.")
        return active

    schedule(0)  # fail before training on a schedule that trains nothing
    return groups, schedule


def pretrained_classifier(
    settings: DictConfig, dist: Distribution, pretrained: PretrainedRun, vocab_size: int, label_names: list[str],
    model: DictConfig | None = None,
) -> tuple[keras.Model, list[ParamGroup], Callable[[int], set[str]]]:
    """ULMFiT's last stage: the pretrained embedding and encoder under a new
    head, with the fine-tune's (`settings`) schedule and per-group learning
    rates. `model` (default: the pretrained one) may pool differently."""
    model = model or pretrained.config.model
    if settings.head not in ("auto", "new"):
        raise UserError(f"finetune.head={settings.head} needs a classifier to take the head from; use finetune.head=auto with init.from.")
    with dist.scope():
        classifier = build_classifier(model, vocab_size, len(label_names))
        copied = copy_pretrained(pretrained, classifier)
    groups, schedule = discriminative_groups(settings, classifier)
    if dist.is_chief:
        log.info(
            "Fine-tuning a %s classifier from the language model in %s (%s): %d-token vocabulary, schedule %s, "
            "frozen %s, lr multipliers %s",
            model.name, pretrained.directory, ", ".join(copied), vocab_size, settings.schedule,
            sorted(settings.freeze or []) or "none", dict(settings.lr_multipliers),
        )
    return classifier, groups, schedule


def finetune_from_pretrained(
    cfg: DictConfig, dist: Distribution, directory: str, pretrained: PretrainedRun, tracker: tracking.Tracker,
    vocab: DictConfig | None = None,
) -> dict:
    """Fine-tune a classifier on `cfg.dataset` from a pretrained language model and write the run dir.

    The pretrained model's config fixes the architecture (as a source run's
    does); keys that shape no pretrained weight may be set over it, e.g.
    `+model.pooling=mean` (ULMFiT pools rather than take the last state).
    `vocab` (default `cfg.init`) says whether to extend the vocabulary."""
    with open_dict(cfg):
        cfg.model = OmegaConf.merge(pretrained.config.model, cfg.get("model") or {})
    check_compatible(pretrained, cfg.model)
    vocabulary = pretrained_vocabulary(vocab or cfg.init, dist, pretrained, lambda: load_dataset(cfg.dataset).train.texts)
    data, vocabulary, vectorizer, _ = load_and_tokenize(cfg, dist, vocabulary=vocabulary)
    classifier, groups, schedule = pretrained_classifier(cfg.finetune, dist, pretrained, len(vocabulary), data.label_names, cfg.model)
    return fit_and_report(cfg, dist, directory, data, vocabulary, vectorizer, classifier, tracker, groups, schedule)


def finetune_run(cfg: DictConfig, dist: Distribution, directory: str, source: Run, tracker: tracking.Tracker) -> dict:
    """Fine-tune `source` on `cfg.dataset` and write the run dir."""
    with open_dict(cfg):
        cfg.model = source.config.model  # the architecture is the source's
    vocabulary = target_vocabulary(cfg.finetune, dist, source, lambda: load_dataset(cfg.dataset).train.texts)
    data, vocabulary, vectorizer, _ = load_and_tokenize(cfg, dist, vocabulary=vocabulary)
    classifier, groups, schedule = transferred_classifier(cfg.finetune, dist, source, len(vocabulary), data.label_names)
    # With the source's head kept, the untouched model is the baseline the fine-tune must beat.
    reused_head = data.label_names == source.label_names and cfg.finetune.head != "new"
    return fit_and_report(
        cfg, dist, directory, data, vocabulary, vectorizer, classifier, tracker, groups, schedule,
        test_before_training=reused_head,
    )


@hydra_task("finetune")
def main(cfg: DictConfig) -> dict:
    if init_from(cfg) and cfg.finetune.source:
        raise UserError("set finetune.source (a classifier run) or init.from (a pretrain run), not both.")
    dist, directory = start(cfg)
    group = cfg.logger.get("group") or os.path.basename(os.path.normpath(directory))
    if init_from(cfg):  # ULMFiT: from a pretrained language model
        source, finetune = load_pretrained(init_from(cfg)), finetune_from_pretrained
    else:
        source, finetune = prepare_source(cfg, dist, directory, group), finetune_run
    return run_tracked(
        cfg, dist, directory, "finetune", lambda tracker: finetune(cfg, dist, directory, source, tracker),
        group=tracking.source_group(source.directory) or group, input_model=source.directory,
    )


if __name__ == "__main__":
    main()
