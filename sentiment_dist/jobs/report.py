"""The transfer report's library: does transfer pay off, and when?

For each number N of labelled target examples (`report.sizes`) and each
repeat (a different seeded sample of N), on the full target test set:

- `source_as_is`: the source model applied unchanged (when the label sets match);
- `scratch`: the same architecture trained on the N examples alone;
- `tfidf_logreg`: TF-IDF (1-2 grams) + logistic regression on the N examples;
- `finetune_<schedule>`: the source model fine-tuned on the N examples;
- `lm_finetune_<schedule>` (ULMFiT): a language model pretrained on the source
  run's texts with its architecture (or `init.from`), adapted to the target's unlabeled train texts, then
  fine-tuned into a classifier on the N examples (`report.lm_schedules`).

Every method sees the same N examples and the same (full) target validation
split for early stopping. Runs in one process (strategy=single).
"""

from __future__ import annotations

import logging
import os

import keras
import numpy as np
from omegaconf import DictConfig, OmegaConf

from sentiment_dist.data import LabeledData
from sentiment_dist.data.files import stratified_split
from sentiment_dist.data.pipeline import build_vocabulary, make_vectorizer, tokenize_split
from sentiment_dist.jobs.plots import figure
from sentiment_dist.jobs.rundir import ClassifierRun, PretrainedRun, RunDir
from sentiment_dist.jobs.transfer import pretrained_classifier, transferred_classifier, vocabulary_for
from sentiment_dist.models.classifier import build_classifier
from sentiment_dist.runtime.distribute import Distribution
from sentiment_dist.runtime.io import atomic_write
from sentiment_dist.training.callbacks import make_callbacks
from sentiment_dist.training.classification import Evaluator
from sentiment_dist.training.loop import Trainer
from sentiment_dist.training.metrics import macro_f1

log = logging.getLogger(__name__)


def sample_indices(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A seeded, class-stratified sample of `size` rows (all rows if size >= n)."""
    if size >= len(labels):
        return np.arange(len(labels))
    chosen, _ = stratified_split(labels, [size / len(labels)], seed)
    return chosen


def tfidf_scores(train_texts, train_labels, test_texts, test_labels) -> dict[str, float]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    features = vectorizer.fit_transform(train_texts.astype(str))
    model = LogisticRegression(C=10.0, max_iter=2000).fit(features, train_labels)
    predicted = model.predict(vectorizer.transform(test_texts.astype(str)))
    return {"accuracy": float(accuracy_score(test_labels, predicted)), "macro_f1": float(f1_score(test_labels, predicted, average="macro"))}


class Report:
    """One training per (method, N, repeat), all on the same samples."""

    def __init__(self, cfg: DictConfig, dist: Distribution, source: ClassifierRun, data: LabeledData):
        self.cfg, self.dist, self.source, self.data = cfg, dist, source, data
        vocabulary = vocabulary_for(source.vocabulary, cfg.finetune.vocab, cfg.finetune.extend_max_tokens, dist,
                                    lambda: data.train.texts)
        self.vectorizer = make_vectorizer(source.config.model.sequence_length, vocabulary)
        self.vocab_size = len(vocabulary)
        self.validation = tokenize_split(self.vectorizer, data.validation.texts, data.validation.labels)
        self.test = tokenize_split(self.vectorizer, data.test.texts, data.test.labels)
        self.rows: list[dict] = []
        self.lm: PretrainedRun | None = None

    def use_language_model(self, pretrained: PretrainedRun) -> None:
        """The target-adapted language model the lm_finetune_* methods start from (its own vocabulary)."""
        self.lm = pretrained
        self.lm_vectorizer = make_vectorizer(pretrained.config.model.sequence_length, pretrained.vocabulary)
        self.lm_sets = (
            tokenize_split(self.lm_vectorizer, self.data.validation.texts, self.data.validation.labels),
            tokenize_split(self.lm_vectorizer, self.data.test.texts, self.data.test.labels),
        )

    def _trainer_cfg(self, size: int, epochs: int) -> DictConfig:
        trainer = OmegaConf.merge(self.cfg.trainer, {"epochs": epochs, "verbose": False, "resume": False})
        trainer.batch_size = min(trainer.batch_size, max(4, size // 4))  # a few steps per epoch even at N=50
        return trainer

    def _fit_and_score(self, classifier, train, trainer_cfg, groups=None, schedule=None, test=None) -> dict[str, float]:
        num_classes = len(self.data.label_names)
        trainer = Trainer(self.dist, classifier, num_classes, trainer_cfg, self.cfg.seed, groups)
        callbacks = make_callbacks(trainer_cfg, trainer_cfg.learning_rate, trainer.base_learning_rate, 1, self.dist)
        trainer.fit(train, self.validation if test is None else test[0], trainer_cfg.epochs, callbacks, verbose=False, schedule=schedule)
        result = trainer.evaluate(self.test if test is None else test[1])
        return {"accuracy": result.accuracy, "macro_f1": macro_f1(result.confusion)}

    def add(self, method: str, size: int, repeat: int, scores: dict[str, float]) -> None:
        self.rows.append({"method": method, "n": size, "repeat": repeat, **scores})
        log.info("%-18s N=%-6d repeat %d: accuracy %.4f  macro-F1 %.4f", method, size, repeat, scores["accuracy"], scores["macro_f1"])

    def source_as_is(self) -> None:
        if self.data.label_names != self.source.label_names:
            log.info("source_as_is skipped: the source classes %s differ from the target's", self.source.label_names)
            return
        test = tokenize_split(self.source.vectorizer, self.data.test.texts, self.data.test.labels)
        result = Evaluator(self.dist, self.source.classifier, len(self.data.label_names), 256).evaluate(test)
        for size in self.sizes():
            self.add("source_as_is", size, 0, {"accuracy": result.accuracy, "macro_f1": macro_f1(result.confusion)})

    def sizes(self) -> list[int]:
        total = len(self.data.train)
        return sorted({total if size == "all" else min(int(size), total) for size in self.cfg.report.sizes})

    def point(self, size: int, repeat: int) -> None:
        settings = self.cfg.report
        seed = self.cfg.seed + 1000 * repeat
        keras.utils.set_random_seed(seed)
        rows = sample_indices(self.data.train.labels, size, seed)
        texts, labels = self.data.train.texts[rows], self.data.train.labels[rows]
        self.add("tfidf_logreg", size, repeat, tfidf_scores(texts, labels, self.data.test.texts, self.data.test.labels))
        # From scratch: its own vocabulary from the N texts, as a user without a source model would.
        model_cfg = self.source.config.model
        scratch_vectorizer = make_vectorizer(model_cfg.sequence_length, build_vocabulary(texts, model_cfg.vocab_size))
        scratch_sets = (
            tokenize_split(scratch_vectorizer, self.data.validation.texts, self.data.validation.labels),
            tokenize_split(scratch_vectorizer, self.data.test.texts, self.data.test.labels),
        )
        with self.dist.scope():
            scratch = build_classifier(model_cfg, scratch_vectorizer.vocabulary_size(), len(self.data.label_names))
        train = tokenize_split(scratch_vectorizer, texts, labels)
        self.add("scratch", size, repeat, self._fit_and_score(scratch, train, self._trainer_cfg(size, settings.scratch_epochs), test=scratch_sets))
        train = tokenize_split(self.vectorizer, texts, labels)
        for schedule in settings.schedules:
            keras.utils.set_random_seed(seed)
            finetune = OmegaConf.merge(self.cfg.finetune, {"schedule": schedule})
            classifier, groups, plan = transferred_classifier(finetune, self.dist, self.source, self.vocab_size, self.data.label_names)
            scores = self._fit_and_score(classifier, train, self._trainer_cfg(size, settings.finetune_epochs), groups, plan)
            self.add(f"finetune_{schedule}", size, repeat, scores)
        if self.lm is None:
            return
        train = tokenize_split(self.lm_vectorizer, texts, labels)
        for schedule in settings.lm_schedules:
            keras.utils.set_random_seed(seed)
            finetune = OmegaConf.merge(self.cfg.finetune, {"schedule": schedule})
            classifier, groups, plan = pretrained_classifier(finetune, self.dist, self.lm, len(self.lm.vocabulary), self.data.label_names)
            scores = self._fit_and_score(classifier, train, self._trainer_cfg(size, settings.finetune_epochs), groups, plan, test=self.lm_sets)
            self.add(f"lm_finetune_{schedule}", size, repeat, scores)

    def run(self) -> list[dict]:
        """Every method at every size and repeat; the summary over repeats."""
        self.source_as_is()
        for size in self.sizes():
            for repeat in range(self.cfg.report.repeats):
                self.point(size, repeat)
        return self.summary()

    def write(self, run: RunDir) -> None:
        """`transfer_report.json` (every point and the summary), the plot, and the table in the log."""
        summary = self.summary()
        title = f"{self.source.config.dataset.name} -> {self.cfg.dataset.name}"
        run.write_json(RunDir.REPORT, {"source": os.path.abspath(self.source.directory), "target": self.cfg.dataset.name,
                                       "summary": summary, "points": self.rows})
        plot(summary, run.file(RunDir.REPORT_PLOT), title)
        log.info("Transfer report %s:\n%s", title, format_table(summary))

    def summary(self) -> list[dict]:
        """Mean and spread of each (method, N) over the repeats."""
        keys = sorted({(row["method"], row["n"]) for row in self.rows}, key=lambda key: (key[1], key[0]))
        table = []
        for method, size in keys:
            points = [row for row in self.rows if row["method"] == method and row["n"] == size]
            accuracy = np.array([row["accuracy"] for row in points])
            f1 = np.array([row["macro_f1"] for row in points])
            table.append({"method": method, "n": size, "repeats": len(points), "accuracy": float(accuracy.mean()),
                          "accuracy_std": float(accuracy.std()), "macro_f1": float(f1.mean()), "macro_f1_std": float(f1.std())})
        return table


def format_table(summary: list[dict]) -> str:
    methods = sorted({row["method"] for row in summary})
    sizes = sorted({row["n"] for row in summary})
    cell = {(row["method"], row["n"]): row for row in summary}
    lines = ["accuracy (macro-F1), mean over repeats", f"{'N':>7}  " + "  ".join(f"{m:>20}" for m in methods)]
    for size in sizes:
        values = [f"{cell[(m, size)]['accuracy']:.3f} ({cell[(m, size)]['macro_f1']:.3f})" if (m, size) in cell else "-" for m in methods]
        lines.append(f"{size:>7}  " + "  ".join(f"{v:>20}" for v in values))
    return "\n".join(lines)


def plot(summary: list[dict], path: str, title: str) -> None:
    plt = figure()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in sorted({row["method"] for row in summary}):
        points = sorted((row["n"], row["accuracy"], row["accuracy_std"]) for row in summary if row["method"] == method)
        sizes, accuracy, spread = (np.array(column) for column in zip(*points, strict=True))
        ax.errorbar(sizes, accuracy, yerr=spread, marker="o", capsize=3, label=method, linestyle="--" if method == "source_as_is" else "-")
    ax.set_xscale("log")
    ax.set_xlabel("labelled target examples (N)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda temp: fig.savefig(temp, dpi=110, format="png"))
    plt.close(fig)
