"""Reading a finished run directory back: for evaluate, predict and fine-tune."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import keras
from omegaconf import DictConfig, OmegaConf

from sentiment_dist.data.pipeline import VOCABULARY_FILE, load_vocabulary
from sentiment_dist.errors import UserError
from sentiment_dist.models import CLASSIFIER_NAME

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.json"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"


@dataclass
class Run:
    directory: str
    model: keras.Model  # raw strings -> probabilities
    label_names: list[str]
    config: DictConfig

    @property
    def classifier(self) -> keras.Model:
        return self.model.get_layer(CLASSIFIER_NAME)

    @property
    def vectorizer(self) -> keras.layers.Layer:
        return self.model.get_layer("vectorizer")


def _require(directory: str, name: str) -> str:
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        raise UserError(f"{directory} has no {name}; point at the run directory of a finished training run.")
    return path


def load_run(directory: str) -> Run:
    """Load a run dir's model (Keras safe mode), label names and config."""
    if not os.path.isdir(directory):
        raise UserError(f"run directory {directory} does not exist; pass the path printed by training.")
    model_path = _require(directory, MODEL_FILE)
    labels_path = _require(directory, LABELS_FILE)
    config_path = _require(directory, CONFIG_FILE)
    vocabulary = load_vocabulary(directory)
    try:
        model = keras.models.load_model(model_path, safe_mode=True, compile=False)
    except Exception as err:  # zip / h5 / config errors: a damaged file
        raise UserError(f"{model_path} cannot be loaded ({type(err).__name__}); it is damaged, retrain the run.") from err
    try:
        with open(labels_path, encoding="utf-8") as handle:
            label_names = json.load(handle)["label_names"]
        config = OmegaConf.load(config_path)
    except (ValueError, KeyError) as err:
        raise UserError(f"{directory} has a damaged {LABELS_FILE} or {CONFIG_FILE}; retrain the run.") from err
    run = Run(directory, model, list(label_names), config)
    if list(run.vectorizer.get_vocabulary()) != vocabulary:
        raise UserError(f"{directory}/{VOCABULARY_FILE} does not match its model.keras; the run dir is damaged, retrain it.")
    return run
