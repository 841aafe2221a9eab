"""The run directory: the one place that knows every run file's name, and reads and writes them.

A classifier run holds `config.yaml`, `vocabulary.txt`, `labels.json`,
`model.keras`, `history.json`, `metrics.json` and plots; a pretrain run holds
`language_model.weights.h5` instead of the model and labels. Files are
written atomically, by the chief only; `metrics.json` is written last, so a
run dir with it is complete (`finished`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from sentiment_dist.runtime.errors import UserError
from sentiment_dist.runtime.io import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    first_difference,
    read_json,
)

if TYPE_CHECKING:  # Keras is imported where a model is loaded: the CLI's cleanup reads RunDir's names first
    import keras


class RunDir:
    CONFIG = "config.yaml"
    VOCABULARY = "vocabulary.txt"
    LABELS = "labels.json"
    MODEL = "model.keras"
    LANGUAGE_MODEL = "language_model.weights.h5"
    HISTORY = "history.json"
    METRICS = "metrics.json"
    TRACKING = "tracking.json"  # the W&B run and artifact the run dir was logged as
    WANDB_RUN = "wandb_run.json"  # the W&B run's id from the start: a resumed run continues it
    CURVES = "training_curves.png"
    CONFUSION = "confusion_matrix.png"
    REPORT = "transfer_report.json"
    REPORT_PLOT = "transfer_report.png"
    REPORT_POINTS = "transfer_report_points.jsonl"  # finished points, appended as they finish (resume)
    CHECKPOINTS = "checkpoints"
    CHECKPOINT_STATE = "checkpoint"  # TensorFlow's state file in CHECKPOINTS: a checkpoint was written
    BEST_WEIGHTS = "best.weights.h5"
    # What makes a failed run's dir worth keeping: a finished stage, a checkpoint to resume from, or a
    # transfer report's finished points.
    RESUMABLE = (METRICS, CHECKPOINT_STATE, REPORT_POINTS)
    # What made the resumable state (RESUMED_AS of the config): rerun with other data, another model
    # or another source, a run dir would continue that state as if it were this run's.
    RESUME_KEY = "resume_key.json"
    RESUMED_AS = ("dataset", "model", "init", "source", "finetune", "lm", "seed")
    # What a W&B model artifact holds, per kind of run.
    CLASSIFIER_FILES = (MODEL, VOCABULARY, LABELS, CONFIG, METRICS)
    LANGUAGE_MODEL_FILES = (LANGUAGE_MODEL, VOCABULARY, CONFIG, METRICS)

    def __init__(self, path: str):
        self.path = str(path)

    def __str__(self) -> str:
        return self.path

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def child(self, name: str) -> RunDir:
        """A stage of a longer job (`source/`, `lm_general/`) inside this run dir."""
        return RunDir(self.file(name))

    @property
    def checkpoint_dir(self) -> str:
        return self.file(self.CHECKPOINTS)

    @property
    def best_weights(self) -> str:
        return os.path.join(self.checkpoint_dir, self.BEST_WEIGHTS)

    @property
    def finished(self) -> bool:
        return os.path.isfile(self.file(self.METRICS))

    @property
    def resumable(self) -> bool:
        """Whether something here would be resumed or read (RESUMABLE, in this dir or a stage's)."""
        return os.path.isdir(self.path) and any(set(self.RESUMABLE) & set(files) for _, _, files in os.walk(self.path))

    def check_resumed_by(self, cfg: DictConfig) -> None:
        """Refuse, in one sentence, to continue this run dir's state with a run of another `cfg`
        (RESUMED_AS); otherwise record `cfg` as what makes it. Starting over (trainer.resume=false)
        discards checkpoints, not a report's finished points."""
        identity = {key: OmegaConf.to_container(cfg[key], resolve=True, enum_to_str=True)
                    if isinstance(cfg[key], DictConfig) else cfg[key] for key in self.RESUMED_AS if key in cfg}
        starting_over = "trainer" in cfg and not cfg.trainer.resume and not os.path.exists(self.file(self.REPORT_POINTS))
        if os.path.isfile(self.file(self.RESUME_KEY)) and self.resumable and not starting_over:
            recorded = read_json(self.file(self.RESUME_KEY))
            if recorded != identity:
                key, mine, theirs = first_difference(identity, recorded, "")
                raise UserError(f"hydra.run.dir={self.path} holds a run made with {key[1:]}={theirs!r}, and this one "
                                f"has {mine!r}; rerun it as it was to resume it, or give this run another hydra.run.dir.")
        os.makedirs(self.path, exist_ok=True)
        atomic_write_json(self.file(self.RESUME_KEY), identity)

    # -- writing (the chief only) ------------------------------------------------
    def write_config(self, cfg: DictConfig) -> None:
        plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        atomic_write_text(self.file(self.CONFIG), OmegaConf.to_yaml(plain))

    def write_vocabulary(self, vocabulary: list[str]) -> None:
        atomic_write_text(self.file(self.VOCABULARY), "\n".join(vocabulary) + "\n")

    def write_labels(self, label_names: list[str], threshold: float = 0.5) -> None:
        """The class names and, for two classes, the decision threshold on P(positive)."""
        data = {"label_names": list(label_names)}
        if len(label_names) == 2:
            data["decision_threshold"] = float(threshold)
        atomic_write_json(self.file(self.LABELS), data)

    def write_model(self, model: keras.Model) -> None:
        atomic_write(self.file(self.MODEL), model.save)

    def write_language_model(self, model: keras.Model) -> None:
        atomic_write(self.file(self.LANGUAGE_MODEL), model.save_weights)

    def write_json(self, name: str, data) -> None:
        atomic_write_json(self.file(name), data)

    def write_metrics(self, metrics: dict) -> None:
        """Last: a run dir with metrics.json is complete."""
        atomic_write_json(self.file(self.METRICS), metrics)

    # -- reading -------------------------------------------------------------------
    def require(self, name: str, kind: str = "training") -> str:
        path = self.file(name)
        if not os.path.isfile(path):
            raise UserError(f"{self.path} has no {name}; point at the run directory of a finished {kind} run.")
        return path

    def read_vocabulary(self) -> list[str]:
        path = self.file(self.VOCABULARY)
        if not os.path.isfile(path):
            raise UserError(f"{path} is missing; point at a complete run directory.")
        with open(path, encoding="utf-8") as handle:
            vocabulary = handle.read().split("\n")[:-1]
        if len(vocabulary) < 3 or vocabulary[:2] != ["", "[UNK]"]:
            raise UserError(f"{path} is not a vocabulary written by sentiment-dist; retrain the run.")
        return vocabulary

    def read_labels(self) -> list[str]:
        try:
            return list(read_json(self.require(self.LABELS))["label_names"])
        except (ValueError, KeyError) as err:
            raise UserError(f"{self.path} has a damaged {self.LABELS}; retrain the run.") from err

    def read_threshold(self) -> float:
        """The decision threshold of a binary classifier (0.5 unless `trainer.tune_threshold` chose one)."""
        return float(read_json(self.require(self.LABELS)).get("decision_threshold", 0.5))

    def read_config(self) -> DictConfig:
        try:
            return OmegaConf.load(self.require(self.CONFIG))
        except ValueError as err:
            raise UserError(f"{self.path} has a damaged {self.CONFIG}; retrain the run.") from err

    def read_metrics(self) -> dict:
        return read_json(self.require(self.METRICS))

    def read_tracking(self) -> dict | None:
        try:
            return read_json(self.file(self.TRACKING))
        except (OSError, ValueError):
            return None

    def load_classifier(self) -> ClassifierRun:
        """A finished classifier run: its model (Keras safe mode), label names and config."""
        if os.path.isfile(self.path):
            raise UserError(f"{self.path} is a file, not a run directory; pass the directory training printed "
                            f"(it holds {self.MODEL}).")
        if not os.path.isdir(self.path):
            raise UserError(f"run directory {self.path} does not exist; pass the path printed by training.")
        model_path = self.require(self.MODEL)
        label_names, config, vocabulary = self.read_labels(), self.read_config(), self.read_vocabulary()
        import keras

        try:
            model = keras.models.load_model(model_path, safe_mode=True, compile=False)
        except Exception as err:  # zip / h5 / config errors: a damaged file
            raise UserError(f"{model_path} cannot be loaded ({type(err).__name__}); it is damaged, retrain the run.") from err
        run = ClassifierRun(self, model, label_names, config, self.read_threshold())
        if list(run.vectorizer.get_vocabulary()) != vocabulary:
            raise UserError(f"{self.file(self.VOCABULARY)} does not match its {self.MODEL}; the run dir is damaged, retrain it.")
        return run

    def load_language_model(self) -> PretrainedRun:
        """A finished pretrain run: its config, vocabulary and language model (`init.from`)."""
        from sentiment_dist.models.language_model import build_language_model

        if not os.path.isdir(self.path):
            problem = "is a file, not a run directory" if os.path.isfile(self.path) else "does not exist"
            raise UserError(f"init.from={self.path} {problem}; pass the run directory that pretraining printed.")
        weights = self.file(self.LANGUAGE_MODEL)
        if not os.path.isfile(weights) or not os.path.isfile(self.file(self.CONFIG)):
            raise UserError(
                f"init.from={self.path} is not a finished pretrain run (no {self.LANGUAGE_MODEL} or {self.CONFIG}); "
                "point it at a `python -m sentiment_dist.pretrain` run dir (a classifier run goes to finetune.source)."
            )
        vocabulary, config = self.read_vocabulary(), self.read_config()
        model = build_language_model(config.model, len(vocabulary))
        try:
            model.load_weights(weights)
        except Exception as err:  # shapes or file damaged
            raise UserError(
                f"{weights} does not load into the model its {self.CONFIG} and {self.VOCABULARY} describe "
                f"({type(err).__name__}); the run dir is damaged, re-run the pretraining."
            ) from err
        return PretrainedRun(self, config, vocabulary, model)


@dataclass
class ClassifierRun:
    run: RunDir
    model: keras.Model  # raw strings -> probabilities
    label_names: list[str]
    config: DictConfig
    threshold: float = 0.5  # binary: positive when P(positive) >= this

    @property
    def directory(self) -> str:
        return self.run.path

    @property
    def classifier(self) -> keras.Model:
        from sentiment_dist.models.classifier import CLASSIFIER_NAME

        return self.model.get_layer(CLASSIFIER_NAME)

    @property
    def vectorizer(self) -> keras.layers.Layer:
        return self.model.get_layer("vectorizer")

    @property
    def vocabulary(self) -> list[str]:
        return list(self.vectorizer.get_vocabulary())


@dataclass
class PretrainedRun:
    run: RunDir
    config: DictConfig
    vocabulary: list[str]
    model: keras.Model  # a LanguageModel

    @property
    def directory(self) -> str:
        return self.run.path
