"""Experiment tracking with Weights & Biases, on the chief only.

Other ranks (and `logger=none`) get a `Tracker` that does nothing. W&B is
never allowed to stop or corrupt training: any failure is logged once and the
run falls back to offline, then to no tracking.
"""

from __future__ import annotations

import logging
import netrc
import os
import secrets
import string
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import keras
from omegaconf import DictConfig

from sentiment_dist.config.hydra_task import resolved
from sentiment_dist.config.search import sweep_member
from sentiment_dist.jobs.rundir import RunDir
from sentiment_dist.runtime.errors import UserError
from sentiment_dist.runtime.io import read_json

log = logging.getLogger(__name__)


class Tracker:
    """No tracking: what non-chief ranks and `logger=none` get."""

    run: Any = None

    def update_config(self, values: dict) -> None: ...

    def log_epoch(self, epoch: int, logs: dict) -> None: ...

    def log_results(self, metrics: dict, run_dir: str) -> None: ...

    def log_pretrain_results(self, metrics: dict, run_dir: str) -> None: ...

    def use_model(self, source_dir: str) -> None: ...

    def log_report(self, summary: list[dict], run_dir: str) -> None: ...

    def finish(self) -> None: ...


def _logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def choose_mode(cfg: DictConfig) -> str:
    """W&B's own convention: online when logged in, offline otherwise."""
    if cfg.mode:
        return cfg.mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if _logged_in() else "offline"


class WandbTracker(Tracker):
    def __init__(self, run, mode: str):
        self.run, self.mode = run, mode
        self._failed: set[str] = set()

    def _guard(self, action: str, fn, *args) -> None:
        """Run a W&B call; a failure is logged once per kind and never raised."""
        try:
            fn(*args)
        except Exception as err:  # W&B must never break training
            if action not in self._failed:
                self._failed.add(action)
                log.warning("W&B %s failed (%s: %s); training continues.", action, type(err).__name__, err)

    def update_config(self, values: dict) -> None:
        self._guard("config update", lambda: self.run.config.update(values, allow_val_change=True))

    def log_epoch(self, epoch: int, logs: dict) -> None:
        # step = the epoch: a resumed run's epochs continue its history, each logged once.
        self._guard("log", lambda: self.run.log({"epoch": epoch + 1, **logs}, step=epoch + 1))

    def log_results(self, metrics: dict, run_dir: str) -> None:
        self._guard("summary", self._log_results, metrics, run_dir)

    def _log_results(self, metrics: dict, run_dir: str) -> None:
        import wandb

        for split in ("test", "validation"):
            for key in ("loss", "accuracy", "macro_f1"):
                self.run.summary[f"{split}/{key}"] = metrics[split][key]
            for name, scores in metrics[split]["per_class"].items():
                for key in ("precision", "recall", "f1"):
                    self.run.summary[f"{split}/{name}/{key}"] = scores[key]
        if before := metrics.get("test_before_training"):
            for key in ("accuracy", "macro_f1"):
                self.run.summary[f"test_before_training/{key}"] = before[key]
        self.run.summary["examples_per_second"] = metrics["examples_per_second"]
        self.run.summary["train_seconds"] = metrics["train_seconds"]
        names = metrics["test"]["label_names"]
        table = wandb.Table(columns=["true", *names])
        for name, row in zip(names, metrics["test"]["confusion_matrix"], strict=True):
            table.add_data(name, *row)
        images = {
            f"plots/{name.removesuffix('.png')}": wandb.Image(RunDir(run_dir).file(name))
            for name in (RunDir.CONFUSION, RunDir.CURVES, RunDir.REPORT_PLOT)
            if os.path.exists(RunDir(run_dir).file(name))
        }
        self.run.log({"test/confusion_matrix": table, **images})
        self._log_run_dir(RunDir(run_dir), "model", RunDir.CLASSIFIER_FILES, {"test": metrics["test"]["accuracy"]})

    def _log_run_dir(self, run_dir: RunDir, kind: str, files: tuple[str, ...], metadata: dict) -> None:
        """The run dir's `files` as a `kind` artifact, and tracking.json naming it (how later
        runs find this W&B run: group, lineage)."""
        import wandb

        name = {"model": "model", "language_model": "lm"}[kind] + f"-{self.run.id}"
        if self.run.config.get("logger", {}).get("log_model", True):
            artifact = wandb.Artifact(name, type=kind, metadata=metadata)
            for file in files:
                if os.path.exists(run_dir.file(file)):
                    artifact.add_file(run_dir.file(file))
            self.run.log_artifact(artifact, aliases=["latest"])
        run_dir.write_json(
            RunDir.TRACKING,
            {"run_id": self.run.id, "project": self.run.project, "entity": self.run.entity,
             "group": self.run.group, "artifact": name, "type": kind, "mode": self.mode},
        )

    def log_pretrain_results(self, metrics: dict, run_dir: str) -> None:
        self._guard("summary", self._log_pretrain_results, metrics, run_dir)

    def _log_pretrain_results(self, metrics: dict, run_dir: str) -> None:
        import wandb

        for split in ("test", "validation"):
            for key in ("loss", "perplexity", "accuracy"):
                self.run.summary[f"{split}/{key}"] = metrics[split][key]
            for direction, perplexity in metrics[split]["perplexity_by_direction"].items():
                self.run.summary[f"{split}/perplexity_{direction}"] = perplexity
        self.run.summary["tokens_per_second"] = metrics["tokens_per_second"]
        self.run.summary["train_seconds"] = metrics["train_seconds"]
        curves = RunDir(run_dir).file(RunDir.CURVES)
        if os.path.exists(curves):
            self.run.log({"plots/training_curves": wandb.Image(curves)})
        self._log_run_dir(RunDir(run_dir), "language_model", RunDir.LANGUAGE_MODEL_FILES, {"test_perplexity": metrics["test"]["perplexity"]})

    def use_model(self, source_dir: str) -> None:
        self._guard("use_artifact", self._use_model, source_dir)

    def log_report(self, summary: list[dict], run_dir: str) -> None:
        self._guard("transfer report", self._log_report, summary, run_dir)

    def _log_report(self, summary: list[dict], run_dir: str) -> None:
        import wandb

        columns = list(summary[0]) if summary else []
        table = wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in summary])
        self.run.log({"transfer_report/table": table, "plots/transfer_report": wandb.Image(RunDir(run_dir).file(RunDir.REPORT_PLOT))})

    def _use_model(self, source_dir: str) -> None:
        """Declare the source model artifact as this run's input (W&B lineage).

        W&B cannot look artifacts up offline, so an offline run records the
        reference in its config (`source_model`) instead.
        """
        info = RunDir(source_dir).read_tracking()
        if info is None:
            return
        reference = f"{info['entity']}/{info['project']}/{info['artifact']}:latest" if info.get("entity") else f"{info['artifact']}:latest"
        self.run.config.update({"source_model": reference, "source_run_dir": os.path.abspath(source_dir)}, allow_val_change=True)
        if self.mode == "online":
            self.run.use_artifact(reference, type=info.get("type", "model"))
        else:
            log.info("Offline W&B cannot record lineage; the source model %s is noted in the run config.", reference)

    def finish(self) -> None:
        self._guard("finish", self.run.finish)


def source_group(run_dir: str) -> str | None:
    """The W&B group a source run was logged in: its fine-tunes join it."""
    info = RunDir(run_dir).read_tracking()
    return info["group"] if info else None


def download_model(reference: str, root: str) -> str:
    """Fetch a `model` artifact (`entity/project/name:alias`) into `root`."""
    try:
        import wandb

        return wandb.Api().artifact(reference, type="model").download(root=root)
    except Exception as err:
        raise UserError(
            f"could not fetch W&B artifact {reference} ({type(err).__name__}); log in (wandb login) "
            "or pass finetune.source=<run dir>."
        ) from err


def start(cfg: DictConfig, dist, run_dir: str, job_type: str, group: str | None = None) -> Tracker:
    """A W&B run on the chief (one per job), a no-op tracker elsewhere."""
    logger = cfg.logger
    if not dist.is_chief or logger.name == "none":
        return Tracker()
    mode = choose_mode(logger)
    if mode == "disabled":
        return Tracker()
    if mode == "offline":
        log.info("W&B is logging offline (not logged in); upload later with `wandb sync %s/wandb/offline-run-*`.", run_dir)
    try:
        import wandb
    except ImportError:
        log.warning("wandb is not installed; running without W&B logging.")
        return Tracker()
    # One sweep (a multirun or an Optuna study) is one group, its trial number and parameters in
    # the config; it wins over a fine-tune's source group, so a transfer sweep stays together.
    member = sweep_member()
    settings = dict(
        id=_run_id(cfg, run_dir),
        resume="allow",  # a rerun on the same run dir (a resume) continues the same W&B run
        project=logger.project,
        entity=logger.entity,
        group=logger.group or (member and member["group"]) or group or os.path.basename(os.path.normpath(run_dir)),
        tags=list(logger.tags or []),
        name=logger.name_,
        notes=logger.notes,
        job_type=job_type,
        config={**resolved(cfg), **({"sweep": member} if member else {})},
        dir=run_dir,
    )
    for attempt in (mode, "offline") if mode == "online" else (mode,):
        try:
            run = wandb.init(mode=attempt, **settings, settings=wandb.Settings(init_timeout=logger.init_timeout))
            return WandbTracker(run, attempt)
        except Exception as err:  # no network, bad key, service error
            log.warning("W&B init (%s) failed (%s: %s).", attempt, type(err).__name__, err)
    log.warning("Running without W&B logging.")
    return Tracker()


def _run_id(cfg: DictConfig, run_dir: str) -> str:
    """The W&B run id of `run_dir`: the one its first attempt chose, unless the run starts over."""
    run = RunDir(run_dir)
    resuming = cfg.trainer.resume if cfg.get("trainer") else True
    if resuming:
        try:
            return str(read_json(run.file(RunDir.WANDB_RUN))["run_id"])
        except (OSError, ValueError, KeyError):
            pass
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's id alphabet
    run.write_json(RunDir.WANDB_RUN, {"run_id": run_id})
    return run_id


class FollowChief:
    """The tracker of an elastic job, which follows the chief: when a worker died and another
    process became rank 0, that process continues the same W&B run (its id is in the run dir)
    and the old one, if alive, stops logging. `follow` runs at every reset. The epochs the dead
    chief logged may not have reached W&B: the new chief logs them again at once (`resend`:
    EpochLogger's; W&B keeps the first row of each step), which also covers a chief lost after
    the last epoch, when no epoch is left to end."""

    def __init__(self, tracker: Tracker, start: Callable[[], Tracker], dist):
        self.inner, self.start, self.dist = tracker, start, dist
        self.resend: list[Callable[[], None]] = []

    def follow(self) -> None:
        if self.dist.is_chief and self.inner.run is None:
            self.inner = self.start()
            for resend in self.resend:
                resend()
        elif not self.dist.is_chief and self.inner.run is not None:
            self.inner.finish()
            self.inner = Tracker()

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


class EpochLogger(keras.callbacks.Callback):
    """Sends each epoch's logs (metrics, learning rate, throughput) to the tracker."""

    def __init__(self, tracker: Tracker):
        super().__init__()
        self.tracker = tracker
        self.logged: list[tuple[int, dict]] = []  # every rank keeps them: any may become the chief
        if isinstance(tracker, FollowChief):
            tracker.resend.append(self._resend)

    def resume(self, epochs: list[dict]) -> None:
        """The finished epochs' rows (a resumed run, or a worker that joined an elastic job): the
        ones to send again if this process becomes the chief."""
        self.logged = [(int(row["epoch"]) - 1, {k: v for k, v in row.items() if k != "epoch"}) for row in epochs]

    def _resend(self) -> None:
        for epoch, row in self.logged:
            self.tracker.log_epoch(epoch, row)

    def on_epoch_end(self, epoch, logs=None):
        row = {key: float(value) for key, value in (logs or {}).items()}
        self.logged.append((epoch, row))
        self.tracker.log_epoch(epoch, row)
