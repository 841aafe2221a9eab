"""The job layer: start a job, track it, and fit a model into a run dir, written once for every command.

A `Job` is the composed config, the `Distribution` (who is the chief) and
the run dir every rank agrees on. `fit_and_write` trains a model on a task
and writes the run dir; what differs between a classifier and a language
model (what is scored, which files hold the model) is an `Output`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig

from sentiment_dist.config.hydra_task import run_dir, run_dir_given
from sentiment_dist.data.tokens import Splits, TokenizedSplit
from sentiment_dist.jobs import tracking
from sentiment_dist.jobs.plots import format_metrics_table, plot_confusion, plot_history
from sentiment_dist.jobs.rundir import RunDir
from sentiment_dist.models.classifier import inference_model
from sentiment_dist.runtime.distribute import Distribution, make_distribution
from sentiment_dist.runtime.errors import UserError
from sentiment_dist.training.callbacks import make_callbacks
from sentiment_dist.training.loop import Task, Trainer
from sentiment_dist.training.metrics import best_threshold
from sentiment_dist.training.optimizers import ParamGroup
from sentiment_dist.training.selection import Selection
from sentiment_dist.training.selection import describe as describe_selection

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Job:
    cfg: DictConfig
    dist: Distribution
    run: RunDir

    def at(self, run: RunDir, cfg: DictConfig | None = None) -> Job:
        """The same job writing to another run dir (a stage), optionally with another config."""
        return Job(cfg if cfg is not None else self.cfg, self.dist, run)


def start(cfg: DictConfig) -> Job:
    """Create the strategy (before any other TF work), seed, and agree on the run dir."""
    dist = make_distribution(cfg.strategy)
    keras.utils.set_random_seed(cfg.seed)
    if cfg.get("trainer") and cfg.trainer.deterministic:
        tf.config.experimental.enable_op_determinism()
    if cfg.get("trainer"):
        keras.mixed_precision.set_global_policy(str(cfg.trainer.precision))
    if dist.elastic and not run_dir_given():
        raise UserError(
            "strategy=horovod_elastic needs the run dir given: add hydra.run.dir=<a directory every worker "
            "sees> (a worker that joins later must find it without asking the others; launch/ scripts key it by job)."
        )
    run = RunDir(dist.shared(run_dir))
    dist.shared(lambda: run.check_resumed_by(cfg))  # decided by the chief, refused on every rank
    return Job(cfg, dist, run)


def tracked(job: Job, job_type: str, body: Callable[[tracking.Tracker], T], group: str | None = None,
            input_model: str | None = None, announce: bool = True) -> T:
    """Run `body(tracker)` as one W&B run (declaring `input_model`'s artifact as its input),
    then, if `announce`, print where the run dir is: the last line of every command."""
    def start_tracker() -> tracking.Tracker:
        return tracking.start(job.cfg, job.dist, job.run.path, job_type=job_type, group=group)

    tracker = start_tracker()
    if job.dist.elastic:  # rank 0 may become another process: the W&B run follows it
        tracker = tracking.FollowChief(tracker, start_tracker, job.dist)
        job.dist.on_reset(tracker.follow)
    try:
        if input_model:
            tracker.use_model(input_model)
        result = body(tracker)
    finally:
        tracker.finish()
    if announce and job.dist.is_chief:
        print(f"Run directory: {os.path.abspath(job.run.path)}", flush=True)
    return result


def stage(job: Job, job_type: str, body: Callable[[tracking.Tracker], Any], group: str | None = None) -> None:
    """One stage of a longer job (finetune's in-job source, ULMFiT's language models),
    reused when its run dir already holds a finished run.

    The chief decides and writes; the closing barrier keeps every rank from reading
    the stage's files before the chief has written them."""
    if job.dist.shared(lambda: job.run.finished):
        if job.dist.is_chief:
            log.info("Reusing the %s stage already finished in %s.", job_type, job.run.path)
        return
    tracked(job, job_type, body, group, announce=False)
    job.dist.wait_until(lambda: job.run.finished)


class ClassifierOutput:
    """A classifier run: scored by confusion matrix, saved as a model that takes raw strings
    (with its decision threshold, when `trainer.tune_threshold` chose one on validation)."""

    throughput = "examples_per_second"

    def __init__(self, label_names: list[str], vectorizer: keras.layers.Layer):
        self.label_names, self.vectorizer = label_names, vectorizer
        self.threshold = 0.5

    def score(self, trainer: Trainer, split: TokenizedSplit) -> dict:
        return trainer.evaluate(split, self.threshold).metrics(self.label_names)

    def calibrate(self, trainer: Trainer, validation: TokenizedSplit, tune: bool) -> dict:
        """With `tune` (binary classifiers), the threshold that maximises validation macro-F1."""
        if not tune or len(self.label_names) != 2:
            return {}
        self.threshold, score = best_threshold(trainer.evaluate(validation).scores)
        log.info("Decision threshold %.2f: validation macro-F1 %.4f (at 0.5: %.4f)", self.threshold, score,
                 trainer.evaluate(validation).metrics(self.label_names)["macro_f1"])
        return {"decision_threshold": self.threshold}

    def write(self, run: RunDir, model: keras.Model, metrics: dict) -> None:
        run.write_labels(self.label_names, self.threshold)
        run.write_model(inference_model(self.vectorizer, model))
        plot_confusion(np.array(metrics["test"]["confusion_matrix"]), self.label_names, run.file(RunDir.CONFUSION))

    def report(self, metrics: dict, tracker: tracking.Tracker, run: RunDir) -> None:
        log.info("Test set (%d examples):\n%s", metrics["test"]["examples"], format_metrics_table(metrics["test"]))
        tracker.log_results(metrics, run.path)


class LanguageModelOutput:
    """A pretrain run: scored by held-out perplexity, saved as the language model's weights."""

    throughput = "tokens_per_second"

    def __init__(self, held_out_texts: int, bidirectional: bool):
        self.held_out_texts, self.bidirectional = held_out_texts, bidirectional

    def score(self, trainer: Trainer, split: TokenizedSplit) -> dict:
        return trainer.evaluate(split).as_dict()

    def calibrate(self, trainer: Trainer, validation: TokenizedSplit, tune: bool) -> dict:
        return {}

    def write(self, run: RunDir, model: keras.Model, metrics: dict) -> None:
        run.write_language_model(model)

    def report(self, metrics: dict, tracker: tracking.Tracker, run: RunDir) -> None:
        held_out = metrics["test"]
        by_direction = "".join(f", {d} {p:.2f}" for d, p in held_out["perplexity_by_direction"].items())
        log.info(
            "Held-out perplexity %.2f on %d tokens of %d test texts%s; next-token accuracy %.3f; %.0f tokens/s",
            held_out["perplexity"], held_out["tokens"], self.held_out_texts, by_direction if self.bidirectional else "",
            held_out["accuracy"], metrics["tokens_per_second"],
        )
        tracker.log_pretrain_results(metrics, run.path)


def fit_and_write(
    job: Job,
    tracker: tracking.Tracker,
    output: ClassifierOutput | LanguageModelOutput,
    model: keras.Model,
    task: Task | int,
    splits: Splits,
    vocabulary: list[str],
    groups: list[ParamGroup] | None = None,
    schedule: Callable[[int], set[str]] | None = None,
    environment: dict | None = None,
    extra_metrics: dict | None = None,
    test_before_training: bool = False,
    selection: Selection | None = None,
) -> dict:
    """Train `model` on `task` as `job.cfg.trainer` says, score it, and write the run dir.

    `test_before_training` also scores the model as it starts (a transferred
    classifier as-is), so that a fine-tune reports what it gained. With `selection`, the
    starting weights compete with the trained ones on validation (`metrics.json` `selection`
    says which won, and by how much)."""
    cfg, dist = job.cfg, job.dist
    trainer = Trainer(dist, model, task, cfg.trainer, cfg.seed, groups)
    environment = {
        **dist.describe(),
        "global_batch_size": trainer.global_batch,
        "effective_learning_rate": trainer.base_learning_rate,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "train_examples": len(splits.train),
        **(environment or {}),
    }
    if dist.is_chief:
        log.info(
            "Strategy %s: %d process(es), %d replica(s); per-replica batch %d, global batch %d, "
            "learning rate %.3g (%s scaling)",
            dist.name, dist.world_size, dist.num_replicas, cfg.trainer.batch_size, trainer.global_batch,
            trainer.base_learning_rate, cfg.trainer.lr_scaling,
        )
        tracker.update_config({"environment": environment})
    if selection is not None:
        selection.start(trainer, splits.validation)  # before the checkpoint (if any) is restored
    before = output.score(trainer, splits.test) if test_before_training else None
    if before and dist.is_chief:
        log.info("Before training: test accuracy %.4f, macro-F1 %.4f", before["accuracy"], before["macro_f1"])
    steps = len(splits.train) // trainer.global_batch
    callbacks = make_callbacks(
        cfg.trainer, float(cfg.trainer.learning_rate), trainer.base_learning_rate, steps, dist,
        job.run.checkpoint_dir, job.run.best_weights, resume=cfg.trainer.resume,
    )
    callbacks.append(tracking.EpochLogger(tracker))
    written = False

    def score_and_write(history) -> dict:
        """After the last epoch, on every rank. Elastic Horovod runs this inside its elastic section
        and again if a worker is lost meanwhile; the run dir is written once per process."""
        nonlocal written
        epochs = history.epochs
        chosen = selection.choose(trainer, splits.validation) if selection is not None else None
        if chosen and dist.is_chief and not written:
            log.info(describe_selection(chosen))
        calibration = output.calibrate(trainer, splits.validation, cfg.trainer.get("tune_threshold", False))
        metrics = {
            "test": output.score(trainer, splits.test),
            "validation": output.score(trainer, splits.validation),
            "epochs_run": len(epochs),
            "seconds_to_first_step": trainer.seconds_to_first_step,
            "train_seconds": float(sum(epoch["epoch_seconds"] for epoch in epochs)),
            output.throughput: float(np.mean([epoch[output.throughput] for epoch in epochs])) if epochs else 0.0,
            "environment": environment,
            **calibration,
            **(extra_metrics or {}),
        }
        if before:
            metrics["test_before_training"] = before
        if chosen:
            metrics["selection"] = chosen
        if dist.is_chief and not written:
            run = job.run
            run.write_config(cfg)
            run.write_vocabulary(vocabulary)
            output.write(run, model, metrics)
            run.write_json(RunDir.HISTORY, history.as_columns())
            plot_history(history.as_columns(), run.file(RunDir.CURVES))
            run.write_metrics(metrics)
            output.report(metrics, tracker, run)
            written = True
        return metrics

    return trainer.fit(splits.train, splits.validation, cfg.trainer.epochs, callbacks,
                       verbose=cfg.trainer.verbose, schedule=schedule, then=score_and_write)
