"""What the commands run: each recipe fits one model into the job's run dir (via `fit_and_write`).

- `train_classifier`: a classifier from scratch or from a language model (`init.from`);
- `pretrain_language_model`: the embedding and encoder as a language model;
- `finetune_classifier`: a trained classifier moved to the job's dataset;
- `finetune_from_language_model`: ULMFiT's last stage;
- `source_classifier` / `adapted_language_model`: the earlier stages of the
  longer jobs, each a run dir of its own inside the job's, reused when finished.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from sentiment_dist.data import LabeledData, Split, load_dataset
from sentiment_dist.data.augment import augment, embedding_neighbours
from sentiment_dist.data.inputs import classifier_inputs, language_model_inputs
from sentiment_dist.jobs import tracking
from sentiment_dist.jobs.job import ClassifierOutput, Job, LanguageModelOutput, fit_and_write, stage
from sentiment_dist.jobs.rundir import ClassifierRun, PretrainedRun, RunDir
from sentiment_dist.jobs.transfer import (
    SHAPE_KEYS,
    check_compatible,
    copy_layers,
    init_classifier,
    init_from,
    language_model_layers,
    pretrained_classifier,
    transferred_classifier,
    vocabulary_request,
)
from sentiment_dist.models.classifier import build_classifier, group_variables
from sentiment_dist.models.language_model import build_language_model, unigram_log_frequencies
from sentiment_dist.runtime.distribute import Distribution
from sentiment_dist.runtime.errors import UserError
from sentiment_dist.training.language_modeling import LanguageModelTask
from sentiment_dist.training.metrics import headline_metric
from sentiment_dist.training.optimizers import param_groups
from sentiment_dist.training.selection import Selection, resolve_monitors

log = logging.getLogger(__name__)


def _pretrained(job: Job) -> PretrainedRun | None:
    """The pretrain run `init.from` names, checked against this job's model."""
    if not init_from(job.cfg):
        return None
    pretrained = RunDir(init_from(job.cfg)).load_language_model()
    check_compatible(pretrained, job.cfg.model)
    return pretrained


def train_classifier(job: Job, tracker: tracking.Tracker) -> dict:
    """A classifier on `cfg.dataset`, from scratch or from the language model `init.from` names."""
    cfg, dist = job.cfg, job.dist
    pretrained = _pretrained(job)
    request = None
    if pretrained:
        tracker.use_model(pretrained.directory)
        request = vocabulary_request(pretrained.vocabulary, cfg.init.vocab, cfg.init.extend_max_tokens)
    inputs = classifier_inputs(cfg, dist, request)
    with dist.scope():
        classifier = build_classifier(cfg.model, len(inputs.vocabulary), len(inputs.label_names))
        if pretrained:
            copied = init_classifier(pretrained, classifier)
            if dist.is_chief:
                log.info("Initialised %s from the language model in %s.", ", ".join(copied), pretrained.directory)
    resolve_monitors(cfg.trainer, headline_metric(inputs.splits.train.labels, len(inputs.label_names)))
    return fit_and_write(job, tracker, ClassifierOutput(inputs.label_names, inputs.vectorizer), classifier,
                         len(inputs.label_names), inputs.splits, inputs.vocabulary, extra_metrics={"data": inputs.summary})


def pretrain_language_model(job: Job, tracker: tracking.Tracker, encoder_from: ClassifierRun | None = None) -> dict:
    """`cfg.model`'s embedding and encoder trained as a language model on `cfg.dataset`'s texts
    (continued from `init.from`, each group at its `lm.lr_multipliers` rate, when given; with
    `encoder_from`, the embedding and encoder start from that classifier's instead, the output
    layers from `init.from`'s)."""
    cfg, dist = job.cfg, job.dist
    pretrained = _pretrained(job)
    if encoder_from is not None and (pretrained is None or encoder_from.vocabulary != pretrained.vocabulary):
        raise UserError(
            f"the source classifier {encoder_from.directory} can be adapted to the target's texts only with the output "
            "layers of the language model it was trained from: set init.from=<that pretrain run> (same vocabulary)."
        )
    request = vocabulary_request(pretrained.vocabulary, cfg.init.vocab, cfg.init.extend_max_tokens) if pretrained else None
    inputs = language_model_inputs(cfg, dist, request)
    vocab_size = len(inputs.vocabulary)
    with dist.scope():
        model = build_language_model(cfg.model, vocab_size)
        if pretrained:
            copy_layers(language_model_layers(pretrained), [*model.encoder.layers, *model.heads],
                        f"init.from={pretrained.directory}")
        if encoder_from is not None:
            copy_layers(encoder_from.classifier.layers, model.encoder.layers, f"the source run {encoder_from.directory}",
                        missing="the source classifier has no layer {name!r}: it is not of the language model's family.")
        if pretrained is None:  # a new language model's output layers start from the unigram distribution
            for head in model.heads:
                head.bias.assign(unigram_log_frequencies(inputs.splits.train.id_counts(vocab_size)))
    task = LanguageModelTask(vocab_size, cfg.lm.num_sampled)
    resolve_monitors(cfg.trainer, None)
    multipliers = cfg.lm.lr_multipliers if pretrained else None  # continued pretraining only
    groups = param_groups(group_variables([*model.encoder.layers, *model.heads]), multipliers) if multipliers else None
    environment = {
        "train_texts": inputs.texts,
        "train_tokens": int(inputs.splits.train.row_lengths.sum()),
        "whole_texts": bool(cfg.lm.whole_texts),
        "held_out_texts": inputs.held_out_texts,
        "softmax": f"sampled ({task.num_sampled} negatives)" if task.num_sampled else "full",
        "lr_multipliers": dict(multipliers) if multipliers else None,
    }
    if dist.is_chief:
        log.info(
            "Pretraining a %s language model (%s) on %d %s texts (%d tokens in %d rows of %d, %s): "
            "%d-token vocabulary%s, %s softmax%s",
            cfg.model.name, "forward + backward" if cfg.model.bidirectional else "forward", inputs.texts,
            cfg.dataset.name, environment["train_tokens"], len(inputs.splits.train), cfg.model.sequence_length,
            "whole texts" if cfg.lm.whole_texts else "each text cut at that length", vocab_size,
            f" from {pretrained.directory}" if pretrained else "", environment["softmax"],
            f", lr multipliers {environment['lr_multipliers']}" if multipliers else "",
        )
    extra = {"vocab_size": vocab_size, "init_from": os.path.abspath(pretrained.directory) if pretrained else None,
             "data": inputs.summary}
    return fit_and_write(job, tracker, LanguageModelOutput(inputs.held_out_texts["test"], cfg.model.bidirectional),
                         model, task, inputs.splits, inputs.vocabulary, groups, environment=environment,
                         extra_metrics=extra)


def finetune_classifier(job: Job, source: ClassifierRun, tracker: tracking.Tracker) -> dict:
    """`source` fine-tuned on `cfg.dataset` (the architecture is the source's)."""
    cfg, dist = job.cfg, job.dist
    with open_dict(cfg):
        cfg.model = OmegaConf.merge(cfg.model, source.config.model)  # the architecture is the source's
    request = vocabulary_request(source.vocabulary, cfg.finetune.vocab, cfg.finetune.extend_max_tokens)
    data = augmented(cfg, source.vocabulary, embedding_table(source.classifier), dist)
    inputs = classifier_inputs(cfg, dist, request, data)
    classifier, groups, schedule = transferred_classifier(cfg.finetune, dist, source, len(inputs.vocabulary),
                                                          inputs.label_names)
    # With the source's head kept, the untouched model is the baseline the fine-tune must beat: on
    # test it is reported, on validation it competes (finetune.guard, and WiSE-FT's interpolations).
    reused_head = inputs.label_names == source.label_names and cfg.finetune.head != "new"
    resolve_monitors(cfg.trainer, headline_metric(inputs.splits.train.labels, len(inputs.label_names)))
    selection = source_selection(cfg, reused_head)
    return fit_and_write(job, tracker, ClassifierOutput(inputs.label_names, inputs.vectorizer), classifier,
                         len(inputs.label_names), inputs.splits, inputs.vocabulary, groups, schedule,
                         extra_metrics={"data": inputs.summary}, test_before_training=reused_head,
                         selection=selection)


def source_selection(cfg: DictConfig, reused_head: bool) -> Selection | None:
    """What competes with the fine-tuned weights on validation: the source (`finetune.guard`) and the
    interpolations toward it (`finetune.wise_ft_alphas`). Only a reused head makes the source a
    classifier of the target's classes; a new head starts from random weights, nothing to keep."""
    settings = cfg.finetune
    if not reused_head or not (settings.guard or settings.wise_ft_alphas):
        return None
    return Selection(cfg.trainer.best_monitor, list(settings.wise_ft_alphas), guard=bool(settings.guard))


def finetune_from_language_model(job: Job, pretrained: PretrainedRun, tracker: tracking.Tracker,
                                 vocab: str | None = None) -> dict:
    """A classifier on `cfg.dataset` fine-tuned from a pretrained language model (ULMFiT's last stage).

    The pretrained run fixes the model family and the keys that shape its
    weights (`SHAPE_KEYS`); the job's `model` sets the rest (pooling, dropout,
    sequence length, head). `vocab` (default `init.vocab`) says whether to
    extend the vocabulary."""
    cfg, dist = job.cfg, job.dist
    with open_dict(cfg):
        cfg.model = OmegaConf.merge(cfg.model, {key: pretrained.config.model[key] for key in ("name", *SHAPE_KEYS)})
    request = vocabulary_request(pretrained.vocabulary, vocab or cfg.init.vocab, cfg.init.extend_max_tokens)
    data = augmented(cfg, pretrained.vocabulary, embedding_table(pretrained.model.encoder), dist)
    inputs = classifier_inputs(cfg, dist, request, data)
    classifier, groups, schedule = pretrained_classifier(cfg.finetune, dist, pretrained, len(inputs.vocabulary),
                                                         inputs.label_names, cfg.model)
    resolve_monitors(cfg.trainer, headline_metric(inputs.splits.train.labels, len(inputs.label_names)))
    return fit_and_write(job, tracker, ClassifierOutput(inputs.label_names, inputs.vectorizer), classifier,
                         len(inputs.label_names), inputs.splits, inputs.vocabulary, groups, schedule,
                         extra_metrics={"data": inputs.summary})


def augmented(cfg: DictConfig, vocabulary: list[str], embedding: np.ndarray, dist: Distribution) -> LabeledData | None:
    """`cfg.dataset` in memory with `finetune.augment` copies of its training texts (neighbours from
    `embedding`); None when there is nothing to add (the data is then read as `dataset.prepared` says)."""
    settings = cfg.finetune.augment
    if settings.copies == 0:
        return None
    if cfg.dataset.get("prepared"):
        raise UserError("finetune.augment makes new training texts, which a prepared store cannot hold; set "
                        "dataset.prepared=null (augmentation is for small targets, which read fast in memory).")
    data = load_dataset(cfg.dataset)
    neighbours = embedding_neighbours(vocabulary, embedding, settings.neighbours, settings.min_similarity)
    texts, labels = augment(data.train.texts, data.train.labels, settings, neighbours)
    if dist.is_chief:
        log.info("Augmented %d training texts with %d copies each (%s; %d words have embedding neighbours).",
                 len(data.train), settings.copies, ", ".join(map(str, settings.operations)), len(neighbours))
    return dataclasses.replace(data, train=Split(texts, labels))


def embedding_table(model) -> np.ndarray:
    return model.get_layer("embedding").get_weights()[0]


# -- stages of longer jobs ---------------------------------------------------------


def source_config(cfg: DictConfig) -> DictConfig:
    """The config of a fine-tune's in-job source training: `source.*` and `model` over the shared keys."""
    merged = OmegaConf.merge(
        {key: cfg[key] for key in ("seed", "tags", "strategy", "logger", "paths")},
        {"task_name": "train", "init": {"from": None}, "model": cfg.model, "dataset": cfg.source.dataset, "trainer": cfg.source.trainer},
    )
    OmegaConf.set_struct(merged, True)
    return merged


def source_classifier(job: Job, group: str | None) -> ClassifierRun:
    """The source of a fine-tune: `finetune.source` (a run dir or a W&B artifact), or, when
    null, a classifier trained now into `<run dir>/source`."""
    source = job.cfg.finetune.source
    if source is None:
        source_job = job.at(job.run.child("source"), source_config(job.cfg))
        stage(source_job, "train", lambda tracker: train_classifier(source_job, tracker), group)
        source = source_job.run.path
    elif not os.path.isdir(source) and source.count("/") == 2 and ":" in source:
        # A W&B artifact reference: every rank downloads into its own dir.
        source = tracking.download_model(source, os.path.join(tempfile.gettempdir(), f"sentiment-dist-source-{job.dist.rank}"))
    run = RunDir(source).load_classifier()
    expected = job.cfg.finetune.expect_model
    if expected and run.config.model.name != expected:
        raise UserError(
            f"the source run {source} is a {run.config.model.name}, not the {expected} that "
            "finetune.expect_model asks for; pick a matching source run."
        )
    return run


def language_model_config(cfg: DictConfig, dataset: DictConfig, model: DictConfig, init: dict) -> DictConfig:
    """The config of one language-model stage, as `python -m sentiment_dist.pretrain` would compose it."""

    def plain(node: DictConfig) -> dict:  # resolved here: `${dataset.path}` means this job's dataset
        return OmegaConf.to_container(node, resolve=True, enum_to_str=True)

    lm = {key: value for key, value in plain(cfg.lm).items() if key != "trainer"}
    merged = OmegaConf.merge(
        {key: cfg[key] for key in ("seed", "tags", "strategy", "logger", "paths")},
        {"task_name": "pretrain", "dataset": plain(dataset), "model": plain(model), "trainer": plain(cfg.lm.trainer),
         "lm": lm, "init": {**plain(cfg.init), **init}},
    )
    OmegaConf.set_struct(merged, True)
    return merged


def adapted_language_model(job: Job, general: DictConfig, model: DictConfig, group: str | None) -> PretrainedRun:
    """ULMFiT's stages 1 and 2: a language model on `general`'s texts (`<run dir>/lm_general`,
    skipped when `init.from` names one), then adapted to `cfg.dataset`'s texts (`<run dir>/lm_target`,
    skipped with `lm.adapt=false`)."""
    cfg = job.cfg
    general_dir = init_from(cfg)
    if general_dir is None:
        general_job = job.at(job.run.child("lm_general"), language_model_config(cfg, general, model, {"from": None, "vocab": "source"}))
        stage(general_job, "pretrain", lambda tracker: pretrain_language_model(general_job, tracker), group)
        general_dir = general_job.run.path
    if not cfg.lm.adapt:
        return RunDir(general_dir).load_language_model()
    # The adapted model keeps the general one's architecture (its config.yaml), whatever `model` says.
    general_model = RunDir(general_dir).load_language_model().config.model
    target_job = job.at(job.run.child("lm_target"), language_model_config(cfg, cfg.dataset, general_model, {"from": general_dir}))
    stage(target_job, "pretrain", lambda tracker: pretrain_language_model(target_job, tracker), group)
    return target_job.run.load_language_model()


def adapted_source_encoder(job: Job, source: ClassifierRun, group: str | None) -> PretrainedRun:
    """ULMFiT's stage 2 for a source classifier (`<run dir>/lm_source`, reused when finished): its
    embedding and encoder trained further as a language model on the target's training texts
    (`cfg.dataset`, labels unused), under the output layers of the language model it came from
    (`init.from`), so that they read the target's words before the labels are fitted."""
    cfg = job.cfg
    general_dir = init_from(cfg)
    if general_dir is None:
        raise UserError("adapting the source classifier's encoder to the target's texts (report.helpers lm_adapt) needs "
                        "the language model it was trained from: set init.from=<that pretrain run>.")
    general = RunDir(general_dir).load_language_model()
    check_compatible(general, source.config.model)
    general_model = general.config.model
    adapt_job = job.at(job.run.child("lm_source"),
                       language_model_config(cfg, cfg.dataset, general_model, {"from": general_dir, "vocab": "source"}))
    stage(adapt_job, "pretrain", lambda tracker: pretrain_language_model(adapt_job, tracker, encoder_from=source), group)
    return adapt_job.run.load_language_model()
