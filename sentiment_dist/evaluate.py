"""`python -m sentiment_dist.evaluate run_dir=<run> [dataset=...]`: test metrics of a saved model."""

from __future__ import annotations

import logging
import os

import numpy as np
from omegaconf import DictConfig

from sentiment_dist.config import hydra_task, run_dir
from sentiment_dist.data import load_dataset
from sentiment_dist.data.pipeline import tokenize_split
from sentiment_dist.distribute import make_distribution
from sentiment_dist.errors import UserError
from sentiment_dist.io import atomic_write_json
from sentiment_dist.report import classification_metrics, format_metrics_table, plot_confusion
from sentiment_dist.runs import METRICS_FILE, load_run
from sentiment_dist.trainer import Evaluator

log = logging.getLogger(__name__)


@hydra_task("evaluate")
def main(cfg: DictConfig) -> dict:
    dist = make_distribution(cfg.strategy)
    with dist.scope():
        run = load_run(cfg.run_dir)
    dataset_cfg = cfg.get("dataset") or run.config.dataset
    data = load_dataset(dataset_cfg)
    if data.label_names != run.label_names:
        raise UserError(
            f"the dataset's classes {data.label_names} differ from the model's {run.label_names}; "
            "evaluate on data with the same label mapping (dataset.label_mapping.classes)."
        )
    test = tokenize_split(run.vectorizer, data.test.texts, data.test.labels)
    evaluator = Evaluator(dist, run.classifier, len(run.label_names), cfg.batch_size * dist.num_replicas)
    metrics = classification_metrics(evaluator.evaluate(test), run.label_names)
    if dist.is_chief:
        directory = run_dir()
        atomic_write_json(os.path.join(directory, METRICS_FILE), {"run_dir": os.path.abspath(cfg.run_dir), "dataset": dataset_cfg.name, "test": metrics})
        plot_confusion(np.array(metrics["confusion_matrix"]), run.label_names, os.path.join(directory, "confusion_matrix.png"), f"{dataset_cfg.name} test set")
        print(f"{dataset_cfg.name} test set ({metrics['examples']} examples):\n{format_metrics_table(metrics)}")
        print(f"Results: {os.path.abspath(directory)}", flush=True)
    return metrics


if __name__ == "__main__":
    main()
