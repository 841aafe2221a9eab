"""The transfer report's library: does transfer pay off, and when, against honest baselines?

For each number N of labelled target examples (`report.sizes`) and each
repeat (a different seeded, class-stratified sample of N), on the full target
test set:

Baselines
- `source_as_is`: the source classifier applied unchanged (when the label sets match);
- `source_tfidf`: TF-IDF (1-2 grams) + logistic regression fit on the source
  run's training texts, applied with no target label (when the label sets match);
- `source_plus_target_tfidf`: the same fit on the source texts plus the N
  target examples, the target rows weighted so they matter (the weight and C
  chosen on the target validation split);
- `target_tfidf`: TF-IDF + LR on the N target examples alone (C on validation);
- `scratch`: the source's architecture trained on the N examples alone.

Transfer
- `finetune_<schedule>`: the source classifier fine-tuned on the N examples;
- `finetune_<schedule>+augment`, `+class_weight`, `+threshold` (for N up to
  `report.helpers_max_size`, on the first schedule): the small-N helpers, each
  alone, so the report shows whether each helps (`+threshold` is the same model
  with its decision threshold chosen on validation macro-F1);
- `lm_finetune_<schedule>` (ULMFiT): from a language model adapted to the target's texts.

Every method sees the same N examples and the same target validation split (at most
`report.validation_size` examples of it, a seeded sample) for early stopping, C and
thresholds; the test split is never used to choose.

The headline metric is macro-F1 when the target's classes are imbalanced (the
largest class over 1.5x the smallest in its training split), accuracy
otherwise. Per N the report names the winner and says plainly by how much
the best fine-tuned method wins or loses against the best baseline. Every
finished point is appended to `transfer_report_points.jsonl`, so a killed
report resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import keras
import numpy as np
from omegaconf import DictConfig, OmegaConf

from sentiment_dist.data import LabeledData, Split, load_dataset
from sentiment_dist.data.augment import augment, embedding_neighbours
from sentiment_dist.data.files import stratified_split
from sentiment_dist.data.inputs import class_weights
from sentiment_dist.data.tokenizer import build_vocabulary, make_vectorizer
from sentiment_dist.data.tokens import tokenize_split
from sentiment_dist.jobs.plots import figure
from sentiment_dist.jobs.rundir import ClassifierRun, PretrainedRun, RunDir
from sentiment_dist.jobs.transfer import pretrained_classifier, transferred_classifier, vocabulary_for
from sentiment_dist.models.classifier import build_classifier
from sentiment_dist.runtime.distribute import Distribution
from sentiment_dist.runtime.errors import UserError
from sentiment_dist.runtime.io import atomic_write
from sentiment_dist.training.callbacks import make_callbacks
from sentiment_dist.training.classification import Evaluator
from sentiment_dist.training.loop import Trainer
from sentiment_dist.training.metrics import accuracy, best_threshold, confusion_matrix, macro_f1

log = logging.getLogger(__name__)

BASELINES = ("source_as_is", "source_tfidf", "source_plus_target_tfidf", "target_tfidf", "scratch")
HELPERS = ("augment", "class_weight", "threshold")
C_GRID = (0.3, 1.0, 3.0, 10.0)  # logistic regression's inverse regularisation, chosen on validation
IMBALANCE = 1.5  # largest class over smallest, in the target's training split, past which macro-F1 leads


def sample_indices(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A seeded, class-stratified sample of `size` rows (all rows if size >= n)."""
    if size >= len(labels):
        return np.arange(len(labels))
    chosen, _ = stratified_split(labels, [size / len(labels)], seed)
    return chosen


def sizes_of(cfg: DictConfig, data: LabeledData) -> list[int]:
    total = len(data.train)
    return sorted({total if size == "all" else min(int(size), total) for size in cfg.report.sizes})


def check_samples(cfg: DictConfig, data: LabeledData) -> None:
    """Every class in every sample of N labelled examples, or one sentence (before anything trains)."""
    for size in sizes_of(cfg, data):
        for repeat in range(cfg.report.repeats):
            labels = data.train.labels[sample_indices(data.train.labels, size, cfg.seed + 1000 * repeat)]
            missing = sorted(set(range(len(data.label_names))) - set(labels.tolist()))
            if missing:
                raise UserError(
                    f"report.sizes N={size} leaves the target classes {[data.label_names[i] for i in missing]} without "
                    "a labelled example; use larger sizes, or a dataset with more examples of those classes."
                )


def scores(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> dict[str, float]:
    confusion = confusion_matrix(labels, predicted, num_classes)
    return {"accuracy": accuracy(confusion), "macro_f1": macro_f1(confusion)}


class TfidfModels:
    """TF-IDF (1-2 grams, sublinear tf) + logistic regression, C (and a target weight) chosen on
    validation macro-F1. Matrices are computed once per vectorizer and reused for every fit."""

    def __init__(self, texts: np.ndarray, num_classes: int):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, dtype=np.float32)
        self.vectorizer.fit(texts.astype(str))
        self.num_classes = num_classes

    def features(self, texts: np.ndarray):
        return self.vectorizer.transform(texts.astype(str))

    def best(self, features, labels, validation, validation_labels, weights_grid=((None, 1.0),)):
        """The fit that scores best on validation, over C and (name, sample weights) choices."""
        from sklearn.linear_model import LogisticRegression

        best = None
        for _name, weights in weights_grid:
            for c in C_GRID:
                model = LogisticRegression(C=c, max_iter=2000).fit(features, labels, sample_weight=weights)
                score = scores(validation_labels, model.predict(validation), self.num_classes)["macro_f1"]
                if best is None or score > best[0]:
                    best = (score, model)
        return best[1]


class Report:
    """One training per (method, N, repeat), all on the same samples."""

    def __init__(self, cfg: DictConfig, dist: Distribution, source: ClassifierRun, data: LabeledData, run: RunDir):
        if cfg.report.validation_size and len(data.validation) > cfg.report.validation_size:
            rows = sample_indices(data.validation.labels, cfg.report.validation_size, cfg.seed)
            data = dataclasses.replace(data, validation=Split(data.validation.texts[rows], data.validation.labels[rows]))
        self.cfg, self.dist, self.source, self.data, self.run_dir = cfg, dist, source, data, run
        self.num_classes = len(data.label_names)
        self.same_labels = data.label_names == source.label_names
        counts = np.bincount(data.train.labels, minlength=self.num_classes)
        self.imbalanced = counts.max() > IMBALANCE * max(counts.min(), 1)
        self.headline = "macro_f1" if self.imbalanced else "accuracy"
        vocabulary = vocabulary_for(source.vocabulary, cfg.finetune.vocab, cfg.finetune.extend_max_tokens, dist,
                                    lambda: data.train.texts)
        self.vectorizer = make_vectorizer(source.config.model.sequence_length, vocabulary)
        self.vocab_size = len(vocabulary)
        self.validation = tokenize_split(self.vectorizer, data.validation.texts, data.validation.labels)
        self.test = tokenize_split(self.vectorizer, data.test.texts, data.test.labels)
        self.lm: PretrainedRun | None = None
        self.skipped: dict[str, str] = {}
        self.points_path = run.file(RunDir.REPORT_POINTS)
        self.rows = self._finished_points()
        self._neighbours = None
        self._tfidf = None

    # -- bookkeeping --------------------------------------------------------
    def _finished_points(self) -> list[dict]:
        """The points an interrupted report already finished (one JSON object per line)."""
        if not os.path.exists(self.points_path):
            return []
        rows = []
        with open(self.points_path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    break  # a line cut short by the kill: that point runs again
        if rows:
            log.info("Resuming the transfer report: %d points already finished in %s.", len(rows), self.points_path)
        return rows

    def done(self, method: str, size: int, repeat: int) -> bool:
        return any(row["method"] == method and row["n"] == size and row["repeat"] == repeat for row in self.rows)

    def add(self, method: str, size: int, repeat: int, result: dict[str, float]) -> None:
        row = {"method": method, "n": size, "repeat": repeat, **result}
        self.rows.append(row)
        os.makedirs(os.path.dirname(self.points_path), exist_ok=True)
        with open(self.points_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        log.info("%-34s N=%-6d repeat %d: accuracy %.4f  macro-F1 %.4f", method, size, repeat,
                 result["accuracy"], result["macro_f1"])

    def skip(self, method: str, reason: str) -> None:
        if method not in self.skipped:
            self.skipped[method] = reason
            log.info("%s skipped: %s", method, reason)

    def sizes(self) -> list[int]:
        return sizes_of(self.cfg, self.data)

    # -- the methods -----------------------------------------------------------
    def use_language_model(self, pretrained: PretrainedRun) -> None:
        """The target-adapted language model the lm_finetune_* methods start from (its own vocabulary)."""
        self.lm = pretrained
        self.lm_vectorizer = make_vectorizer(pretrained.config.model.sequence_length, pretrained.vocabulary)
        self.lm_sets = (
            tokenize_split(self.lm_vectorizer, self.data.validation.texts, self.data.validation.labels),
            tokenize_split(self.lm_vectorizer, self.data.test.texts, self.data.test.labels),
        )

    def _trainer_cfg(self, size: int, epochs: int, **changes) -> DictConfig:
        trainer = OmegaConf.merge(self.cfg.trainer, {"epochs": epochs, "verbose": False, "resume": False, **changes})
        trainer.batch_size = min(trainer.batch_size, max(4, size // 4))  # a few steps per epoch even at N=50
        return trainer

    def _fit_and_score(self, classifier, train, trainer_cfg, groups=None, schedule=None, held_out=None) -> dict:
        """Train, then test at 0.5 and (binary) at the threshold chosen on validation macro-F1."""
        validation, test = held_out or (self.validation, self.test)
        trainer = Trainer(self.dist, classifier, self.num_classes, trainer_cfg, self.cfg.seed, groups)
        callbacks = make_callbacks(trainer_cfg, trainer_cfg.learning_rate, trainer.base_learning_rate, 1, self.dist)
        trainer.fit(train, validation, trainer_cfg.epochs, callbacks, verbose=False, schedule=schedule)
        result = trainer.evaluate(test)
        scored = {"accuracy": result.accuracy, "macro_f1": macro_f1(result.confusion)}
        if self.num_classes == 2:
            threshold, _ = best_threshold(trainer.evaluate(validation).scores)
            tuned = trainer.evaluate(test, threshold)
            scored["tuned"] = {"accuracy": tuned.accuracy, "macro_f1": macro_f1(tuned.confusion), "threshold": threshold}
        return scored

    def source_baselines(self) -> None:
        """The source classifier and the source TF-IDF on the target test set: no target label used."""
        if not self.same_labels:
            reason = f"the source classes {self.source.label_names} differ from the target's {self.data.label_names}"
            for method in ("source_as_is", "source_tfidf", "source_plus_target_tfidf"):
                self.skip(method, reason)
            return
        sizes = self.sizes()
        if not all(self.done("source_as_is", size, 0) for size in sizes):
            test = tokenize_split(self.source.vectorizer, self.data.test.texts, self.data.test.labels)
            result = Evaluator(self.dist, self.source.classifier, self.num_classes, 256).evaluate(test, self.source.threshold)
            for size in sizes:
                if not self.done("source_as_is", size, 0):
                    self.add("source_as_is", size, 0, {"accuracy": result.accuracy, "macro_f1": macro_f1(result.confusion)})
        if not all(self.done("source_tfidf", size, 0) for size in sizes):
            source = self.source_texts()
            models = TfidfModels(source.train.texts, self.num_classes)
            model = models.best(models.features(source.train.texts), source.train.labels,
                                models.features(source.validation.texts), source.validation.labels)
            result = scores(self.data.test.labels, model.predict(models.features(self.data.test.texts)), self.num_classes)
            for size in sizes:
                if not self.done("source_tfidf", size, 0):
                    self.add("source_tfidf", size, 0, result)

    def source_texts(self) -> LabeledData:
        """The source run's training data, as its config.yaml describes it."""
        data = load_dataset(self.source.config.dataset)
        if data.label_names != self.source.label_names:
            raise UserError(f"the source run {self.source.directory}'s dataset now has classes {data.label_names}, "
                            f"its model {self.source.label_names}; point finetune.source at a run of this dataset.")
        return data

    def _source_plus_target(self, texts: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        if self._tfidf is None:  # fit once: source texts plus the target's (unlabelled) training texts
            source = self.source_texts()
            models = TfidfModels(np.concatenate([source.train.texts, self.data.train.texts]), self.num_classes)
            self._tfidf = (models, models.features(source.train.texts), source.train.labels,
                           models.features(self.data.validation.texts), models.features(self.data.test.texts))
        models, source_features, source_labels, validation, test = self._tfidf
        from scipy.sparse import vstack

        features = vstack([source_features, models.features(texts)])
        both = np.concatenate([source_labels, labels])
        ratio = len(source_labels) / len(labels)
        grid = [(name, np.concatenate([np.ones(len(source_labels)), np.full(len(labels), weight)]))
                for name, weight in (("1x", 1.0), ("sqrt", np.sqrt(ratio)), ("balanced", ratio))]
        model = models.best(features, both, validation, self.data.validation.labels, grid)
        return scores(self.data.test.labels, model.predict(test), self.num_classes)

    def _target_tfidf(self, texts: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        models = TfidfModels(texts, self.num_classes)
        model = models.best(models.features(texts), labels, models.features(self.data.validation.texts),
                            self.data.validation.labels)
        return scores(self.data.test.labels, model.predict(models.features(self.data.test.texts)), self.num_classes)

    def point(self, size: int, repeat: int) -> None:
        settings = self.cfg.report
        seed = self.cfg.seed + 1000 * repeat
        rows = sample_indices(self.data.train.labels, size, seed)
        texts, labels = self.data.train.texts[rows], self.data.train.labels[rows]
        if not self.done("target_tfidf", size, repeat):
            self.add("target_tfidf", size, repeat, self._target_tfidf(texts, labels))
        if self.same_labels and not self.done("source_plus_target_tfidf", size, repeat):
            self.add("source_plus_target_tfidf", size, repeat, self._source_plus_target(texts, labels))
        if not self.done("scratch", size, repeat):
            keras.utils.set_random_seed(seed)
            self.add("scratch", size, repeat, self._scratch(texts, labels, size))
        train = tokenize_split(self.vectorizer, texts, labels)
        for index, schedule in enumerate(settings.schedules):
            method = f"finetune_{schedule}"
            helpers = [h for h in settings.helpers if index == 0 and size <= settings.helpers_max_size]
            if not self.done(method, size, repeat) or ("threshold" in helpers and not self.done(method + "+threshold", size, repeat)):
                result = self._finetune(schedule, train, size, seed)
                self.add(method, size, repeat, {k: v for k, v in result.items() if k != "tuned"})
                if "threshold" in helpers and "tuned" in result:
                    tuned = result["tuned"]
                    self.add(method + "+threshold", size, repeat, {k: tuned[k] for k in ("accuracy", "macro_f1")}
                             | {"threshold": tuned["threshold"]})
            if "class_weight" in helpers and not self.done(method + "+class_weight", size, repeat):
                weights = class_weights(labels, self.num_classes, "balanced")
                weighted = tokenize_split(self.vectorizer, texts, labels, weights[labels])
                result = self._finetune(schedule, weighted, size, seed)
                self.add(method + "+class_weight", size, repeat, {k: v for k, v in result.items() if k != "tuned"})
            if "augment" in helpers and not self.done(method + "+augment", size, repeat):
                more_texts, more_labels = augment(texts, labels, settings.augment, self.neighbours())
                result = self._finetune(schedule, tokenize_split(self.vectorizer, more_texts, more_labels), size, seed)
                self.add(method + "+augment", size, repeat, {k: v for k, v in result.items() if k != "tuned"})
        if self.lm is None:
            return
        train = tokenize_split(self.lm_vectorizer, texts, labels)
        for schedule in settings.lm_schedules:
            if self.done(f"lm_finetune_{schedule}", size, repeat):
                continue
            keras.utils.set_random_seed(seed)
            finetune = OmegaConf.merge(self.cfg.finetune, {"schedule": schedule})
            classifier, groups, plan = pretrained_classifier(finetune, self.dist, self.lm, len(self.lm.vocabulary),
                                                             self.data.label_names)
            result = self._fit_and_score(classifier, train, self._trainer_cfg(size, settings.finetune_epochs), groups,
                                         plan, held_out=self.lm_sets)
            self.add(f"lm_finetune_{schedule}", size, repeat, {k: v for k, v in result.items() if k != "tuned"})

    def _finetune(self, schedule: str, train, size: int, seed: int) -> dict:
        keras.utils.set_random_seed(seed)
        finetune = OmegaConf.merge(self.cfg.finetune, {"schedule": schedule})
        classifier, groups, plan = transferred_classifier(finetune, self.dist, self.source, self.vocab_size,
                                                          self.data.label_names)
        return self._fit_and_score(classifier, train, self._trainer_cfg(size, self.cfg.report.finetune_epochs), groups, plan)

    def _scratch(self, texts: np.ndarray, labels: np.ndarray, size: int) -> dict:
        """The source's architecture from random weights and its own vocabulary from the N texts,
        as a user without a source model would train it."""
        model_cfg = self.source.config.model
        vectorizer = make_vectorizer(model_cfg.sequence_length, build_vocabulary(texts, model_cfg.vocab_size))
        held_out = (tokenize_split(vectorizer, self.data.validation.texts, self.data.validation.labels),
                    tokenize_split(vectorizer, self.data.test.texts, self.data.test.labels))
        with self.dist.scope():
            scratch = build_classifier(model_cfg, vectorizer.vocabulary_size(), self.num_classes)
        result = self._fit_and_score(scratch, tokenize_split(vectorizer, texts, labels),
                                     self._trainer_cfg(size, self.cfg.report.scratch_epochs), held_out=held_out)
        return {k: v for k, v in result.items() if k != "tuned"}

    def neighbours(self) -> dict[str, list[str]]:
        if self._neighbours is None:
            augment_cfg = self.cfg.report.augment
            table = self.source.classifier.get_layer("embedding").get_weights()[0]
            self._neighbours = embedding_neighbours(self.source.vocabulary, table, augment_cfg.neighbours,
                                                    augment_cfg.min_similarity)
        return self._neighbours

    # -- the report ---------------------------------------------------------------
    def run(self) -> list[dict]:
        """Every method at every size and repeat; the summary over repeats."""
        self.source_baselines()
        for size in self.sizes():
            for repeat in range(self.cfg.report.repeats):
                self.point(size, repeat)
        return self.summary()

    def summary(self) -> list[dict]:
        """Mean and spread of each (method, N) over the repeats."""
        keys = sorted({(row["method"], row["n"]) for row in self.rows}, key=lambda key: (key[1], key[0]))
        table = []
        for method, size in keys:
            points = [row for row in self.rows if row["method"] == method and row["n"] == size]
            entry = {"method": method, "n": size, "repeats": len(points), "baseline": method in BASELINES}
            for metric in ("accuracy", "macro_f1"):
                values = np.array([row[metric] for row in points])
                entry[metric], entry[f"{metric}_std"] = float(values.mean()), float(values.std())
            table.append(entry)
        return table

    def verdicts(self, summary: list[dict]) -> list[dict]:
        """Per N: the winner, and the best fine-tuned method against the best baseline, by the headline metric."""
        verdicts = []
        for size in sorted({row["n"] for row in summary}):
            at = [row for row in summary if row["n"] == size]
            winner = max(at, key=lambda row: row[self.headline])
            baselines = [row for row in at if row["baseline"]]
            transfers = [row for row in at if not row["baseline"]]
            if not baselines or not transfers:
                continue
            best_baseline = max(baselines, key=lambda row: row[self.headline])
            best_transfer = max(transfers, key=lambda row: row[self.headline])
            margin = best_transfer[self.headline] - best_baseline[self.headline]
            wins = margin > 0
            sentence = (
                f"N={size}: {best_transfer['method']} wins, {self.headline} {best_transfer[self.headline]:.4f} against "
                f"{best_baseline['method']}'s {best_baseline[self.headline]:.4f} (+{margin:.4f})"
                if wins else
                f"N={size}: fine-tuning LOSES: the best fine-tuned method, {best_transfer['method']}, scores "
                f"{self.headline} {best_transfer[self.headline]:.4f}, {-margin:.4f} below {best_baseline['method']}'s "
                f"{best_baseline[self.headline]:.4f}"
            )
            verdicts.append({"n": size, "headline": self.headline, "winner": winner["method"],
                             "best_finetuned": best_transfer["method"], "best_baseline": best_baseline["method"],
                             "margin": margin, "finetune_wins": wins, "sentence": sentence})
        return verdicts

    def write(self, run: RunDir) -> dict:
        """`transfer_report.json` (every point, the summary, the verdicts), the plot, and the table in the log."""
        summary = self.summary()
        verdicts = self.verdicts(summary)
        title = f"{self.source.config.dataset.name} -> {self.cfg.dataset.name}"
        report = {"source": os.path.abspath(self.source.directory), "target": self.cfg.dataset.name,
                  "headline": self.headline, "imbalanced": bool(self.imbalanced), "summary": summary,
                  "verdicts": verdicts, "skipped": self.skipped, "points": self.rows}
        run.write_json(RunDir.REPORT, report)
        plot(summary, run.file(RunDir.REPORT_PLOT), title, self.headline)
        log.info("Transfer report %s (%s; mean over repeats):\n%s\n%s", title, self.headline,
                 format_table(summary, self.headline), "\n".join(v["sentence"] for v in verdicts))
        return report


def format_table(summary: list[dict], headline: str) -> str:
    """Methods down, N across: the headline metric's mean ± std over repeats (baselines marked *)."""
    methods = sorted({row["method"] for row in summary}, key=lambda m: (m not in BASELINES, m))
    sizes = sorted({row["n"] for row in summary})
    cell = {(row["method"], row["n"]): row for row in summary}
    width = max(len(m) for m in methods) + 2
    lines = [f"{'method':<{width}}" + "".join(f"{'N=' + str(n):>16}" for n in sizes)]
    for method in methods:
        values = [f"{cell[(method, n)][headline]:.3f}±{cell[(method, n)][headline + '_std']:.3f}"
                  if (method, n) in cell else "-" for n in sizes]
        lines.append(f"{(method + ('*' if method in BASELINES else '')):<{width}}" + "".join(f"{v:>16}" for v in values))
    return "\n".join(lines)


def plot(summary: list[dict], path: str, title: str, headline: str) -> None:
    plt = figure()
    fig, ax = plt.subplots(figsize=(8, 5))
    for method in sorted({row["method"] for row in summary}):
        points = sorted((row["n"], row[headline], row[f"{headline}_std"]) for row in summary if row["method"] == method)
        sizes, values, spread = (np.array(column) for column in zip(*points, strict=True))
        ax.errorbar(sizes, values, yerr=spread, marker="o", capsize=3, label=method,
                    linestyle="--" if method in BASELINES else "-")
    ax.set_xscale("log")
    ax.set_xlabel("labelled target examples (N)")
    ax.set_ylabel(f"test {headline}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda temp: fig.savefig(temp, dpi=110, format="png"))
    plt.close(fig)
