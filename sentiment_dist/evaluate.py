"""`python -m sentiment_dist.evaluate run_dir=<run> [dataset=...]`: test metrics of a saved model."""

from __future__ import annotations

import os

from omegaconf import DictConfig

from sentiment_dist.config.hydra_task import hydra_task, run_dir
from sentiment_dist.runtime.errors import UserError


@hydra_task("evaluate")
def main(cfg: DictConfig) -> dict:
    import numpy as np

    from sentiment_dist.data import load_dataset
    from sentiment_dist.data.inputs import prepared_store
    from sentiment_dist.data.tokenizer import VocabularyRequest
    from sentiment_dist.data.tokens import tokenize_split
    from sentiment_dist.jobs.plots import format_metrics_table, plot_confusion
    from sentiment_dist.jobs.rundir import RunDir
    from sentiment_dist.runtime.distribute import make_distribution
    from sentiment_dist.training.classification import Evaluator

    dist = make_distribution(cfg.strategy)
    with dist.scope():
        run = RunDir(cfg.run_dir).load_classifier()
    dataset_cfg = cfg.get("dataset") or run.config.dataset
    if dataset_cfg.get("prepared"):  # memory-mapped: each rank reads its slice of every batch
        store = prepared_store(cfg, dist, VocabularyRequest(base=tuple(run.vocabulary)), dataset=dataset_cfg)
        label_names, test = store.label_names, store.split("test", run.vectorizer.get_config()["output_sequence_length"])
    else:
        data = load_dataset(dataset_cfg)
        label_names, test = data.label_names, tokenize_split(run.vectorizer, data.test.texts, data.test.labels)
    if label_names != run.label_names:
        raise UserError(
            f"the dataset's classes {label_names} differ from the model's {run.label_names}; "
            "evaluate on data with the same label mapping (dataset.label_mapping.classes)."
        )
    evaluator = Evaluator(dist, run.classifier, len(run.label_names), cfg.batch_size * dist.num_replicas)
    metrics = evaluator.evaluate(test, run.threshold).metrics(run.label_names)
    if dist.is_chief:
        out = RunDir(run_dir())
        out.write_metrics({"run_dir": os.path.abspath(cfg.run_dir), "dataset": dataset_cfg.name, "test": metrics})
        plot_confusion(np.array(metrics["confusion_matrix"]), run.label_names, out.file(RunDir.CONFUSION),
                       f"{dataset_cfg.name} test set")
        print(f"{dataset_cfg.name} test set ({metrics['examples']} examples):\n{format_metrics_table(metrics)}")
        print(f"Results: {os.path.abspath(out.path)}", flush=True)
    return metrics


if __name__ == "__main__":
    main()
