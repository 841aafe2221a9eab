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
- `finetune_<schedule>`: the source classifier fine-tuned on the N examples, and
  the weights kept as `finetune.*` says (`guard`: the source competes on validation;
  `wise_ft_alphas`: so do interpolations toward it; `l2_sp`): what `finetune` runs (with
  `trainer.tune_threshold`, binary, every fine-tuned row is scored at its validation threshold too);
- free (the same trained weights, chosen otherwise on validation), on the first schedule:
  `:unguarded` (the best epoch alone, as fine-tuning kept before the guard), `:guard`
  (the source against the best epoch), `:wise_ft` (and the interpolations at
  `finetune.wise_ft_alphas`, or `report.wise_ft_alphas`) and `+tfidf` (probabilities
  averaged with source + target TF-IDF's, the weight chosen on validation); on every
  schedule `+threshold` (the decision threshold chosen on validation macro-F1: on
  `frozen`, a head-only fit with its threshold corrected);
- `+augment`, `+class_weight`, `+l2_sp` and `+lm_adapt` (ULMFiT's stage 2: the source's
  embedding and encoder first trained as a language model on the target's training texts),
  for N up to `report.helpers_max_size`, on the first schedule: trained helpers, each alone;
- `lm_finetune_<schedule>` (ULMFiT): from a language model adapted to the target's texts.

Every method sees the same N examples and the same target validation split (at most
`report.validation_size` examples of it, a seeded sample) for early stopping, C,
thresholds, weights and interpolations; the test split is never used to choose.

The headline metric is macro-F1 when the target's classes are imbalanced (the
largest class over 1.5x the smallest in its training split), accuracy
otherwise. Each point keeps its test predictions, so every mean comes with a 95%
interval over both the seeds and the test examples (a bootstrap of both), and so
does every margin. Per N the report names the winner and says plainly by how much
the best fine-tuned method, and the default one, win or lose against the best
baseline and the source as-is. Every finished point is appended to
`transfer_report_points.jsonl`, so a killed report resumes where it stopped.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os

import keras
import numpy as np
from omegaconf import DictConfig, OmegaConf

from sentiment_dist.data import LabeledData, Split
from sentiment_dist.data.augment import augment, embedding_neighbours
from sentiment_dist.data.files import stratified_split
from sentiment_dist.data.inputs import class_weights, labeled_texts
from sentiment_dist.data.tokenizer import VocabularyRequest, build_vocabulary, make_vectorizer
from sentiment_dist.data.tokens import tokenize_split
from sentiment_dist.jobs.plots import figure
from sentiment_dist.jobs.rundir import ClassifierRun, PretrainedRun, RunDir
from sentiment_dist.jobs.transfer import (
    copy_layers,
    language_model_layers,
    pretrained_classifier,
    transferred_classifier,
    vocabulary_for,
)
from sentiment_dist.models.classifier import build_classifier, layer_group
from sentiment_dist.runtime.distribute import Distribution
from sentiment_dist.runtime.errors import UserError
from sentiment_dist.runtime.io import atomic_write
from sentiment_dist.training.callbacks import make_callbacks
from sentiment_dist.training.classification import THRESHOLD_BINS, predict_probabilities
from sentiment_dist.training.loop import Trainer
from sentiment_dist.training.metrics import (
    accuracy,
    best_threshold,
    confusion_matrix,
    headline_metric,
    macro_f1,
    predictions,
    scores_at,
)
from sentiment_dist.training.selection import Selection, resolve_monitors

log = logging.getLogger(__name__)

BASELINES = ("source_as_is", "source_tfidf", "source_plus_target_tfidf", "target_tfidf", "scratch")
HELPERS = ("augment", "class_weight", "threshold", "l2_sp", "tfidf", "lm_adapt")
C_GRID = (0.3, 1.0, 3.0, 10.0)  # logistic regression's inverse regularisation, chosen on validation
ENSEMBLE_WEIGHTS = np.round(np.arange(0.0, 1.01, 0.1), 2)  # TF-IDF's share of the averaged probabilities
BOOTSTRAP = 1000  # resamples of the seeds and the test examples behind each 95% interval


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
    beyond = [size for size in cfg.report.sizes if size != "all" and int(size) > len(data.train)]
    if beyond:
        log.warning("report.sizes %s: the target has %d training examples, so those points use all of them.",
                    beyond, len(data.train))
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


# -- test predictions, kept with each point for the intervals --------------------------------


def pack_predictions(predicted: np.ndarray, num_classes: int) -> str:
    """Predicted classes as text for the points file: one bit each for two classes, a byte otherwise."""
    raw = np.packbits(predicted.astype(bool)) if num_classes == 2 else predicted.astype(np.uint8)
    return base64.b64encode(raw.tobytes()).decode("ascii")


def unpack_predictions(text: str, count: int, num_classes: int) -> np.ndarray:
    raw = np.frombuffer(base64.b64decode(text), np.uint8)
    return (np.unpackbits(raw)[:count] if num_classes == 2 else raw[:count]).astype(np.int64)


def scored(labels: np.ndarray, probabilities: np.ndarray, num_classes: int, threshold: float = 0.5) -> dict:
    """A point's result: its test accuracy and macro-F1, and its predictions (for the intervals)."""
    predicted = predictions(probabilities, num_classes, threshold)
    return {**scores(labels, predicted, num_classes), "predicted": pack_predictions(predicted, num_classes)}


def _resampled_metrics(labels: np.ndarray, predicted: np.ndarray, rows: np.ndarray, num_classes: int) -> np.ndarray:
    """[accuracy, macro-F1] of `predicted` on each resample of test rows (`rows`: [resamples, n])."""
    cells = labels[rows] * num_classes + predicted[rows]
    counts = np.stack([np.bincount(r, minlength=num_classes * num_classes) for r in cells]).reshape(
        len(rows), num_classes, num_classes)
    true_positive = np.diagonal(counts, axis1=1, axis2=2).astype(float)
    predicted_count, actual = counts.sum(axis=1), counts.sum(axis=2)
    precision = np.divide(true_positive, predicted_count, out=np.zeros_like(true_positive), where=predicted_count > 0)
    recall = np.divide(true_positive, actual, out=np.zeros_like(true_positive), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(true_positive), where=precision + recall > 0)
    return np.stack([true_positive.sum(axis=1) / rows.shape[1], f1.mean(axis=1)], axis=1)


def bootstrap(labels: np.ndarray, runs: list[list[np.ndarray]], num_classes: int, seed: int = 0) -> np.ndarray | None:
    """Resampled means of [accuracy, macro-F1] for each of `runs` (each a list of one method's
    predictions over its repeats), the test examples and the repeats resampled together, the same
    resample for every run so that differences are paired. `[runs, resamples, 2]`; None when a
    run has no predictions (points from before they were kept)."""
    if not runs or any(not predicted for predicted in runs):
        return None
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(labels), size=(BOOTSTRAP, len(labels)))
    repeats = max(len(predicted) for predicted in runs)
    picks = rng.integers(0, repeats, size=(BOOTSTRAP, repeats))
    out = np.zeros((len(runs), BOOTSTRAP, 2))
    for index, predicted in enumerate(runs):
        per_repeat = np.stack([_resampled_metrics(labels, p, rows, num_classes) for p in predicted])  # [repeats, B, 2]
        # A method with fewer repeats (a baseline that needs no seed) is the same in every resample.
        chosen = picks % len(predicted)
        out[index] = per_repeat[chosen, np.arange(BOOTSTRAP)[:, None]].mean(axis=1)
    return out


def interval(values: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


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

    def probabilities(self, model, features) -> np.ndarray:
        """In the classifiers' layout: `[n, 1]` P(positive) for two classes, `[n, K]` otherwise."""
        full = np.zeros((features.shape[0], self.num_classes), np.float32)
        full[:, model.classes_] = model.predict_proba(features)
        return full[:, 1:] if self.num_classes == 2 else full


def binned_scores(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """`[true class, bin of P(positive)]` counts, as the evaluator histograms them for `best_threshold`."""
    bins = np.clip((probabilities.reshape(-1) * THRESHOLD_BINS).astype(int), 0, THRESHOLD_BINS - 1)
    counts = np.zeros((2, THRESHOLD_BINS), np.int64)
    np.add.at(counts, (labels, bins), 1)
    return counts


@dataclasses.dataclass
class Held:
    """A split as the transferred classifiers read it, with its texts and labels."""

    texts: np.ndarray
    labels: np.ndarray
    tokens: object  # TokenizedSplit


class Report:
    """One training per (method, N, repeat), all on the same samples."""

    def __init__(self, cfg: DictConfig, dist: Distribution, source: ClassifierRun, data: LabeledData, run: RunDir):
        if cfg.report.validation_size and len(data.validation) > cfg.report.validation_size:
            rows = sample_indices(data.validation.labels, cfg.report.validation_size, cfg.seed)
            data = dataclasses.replace(data, validation=Split(data.validation.texts[rows], data.validation.labels[rows]))
        self.cfg, self.dist, self.source, self.data, self.run_dir = cfg, dist, source, data, run
        self.num_classes = len(data.label_names)
        self.same_labels = data.label_names == source.label_names
        self.reused_head = self.same_labels if cfg.finetune.head == "auto" else cfg.finetune.head == "reuse"
        self.headline = headline_metric(data.train.labels, self.num_classes)
        self.imbalanced = self.headline == "macro_f1"
        vocabulary = vocabulary_for(source.vocabulary, cfg.finetune.vocab, cfg.finetune.extend_max_tokens, dist,
                                    lambda: data.train.texts)
        self.vectorizer = make_vectorizer(source.config.model.sequence_length, vocabulary)
        self.vocab_size = len(vocabulary)
        self.validation = tokenize_split(self.vectorizer, data.validation.texts, data.validation.labels)
        self.test = tokenize_split(self.vectorizer, data.test.texts, data.test.labels)
        self.lm: PretrainedRun | None = None
        self.adapted: PretrainedRun | None = None
        self.skipped: dict[str, str] = {}
        self.points_path = run.file(RunDir.REPORT_POINTS)
        self.rows = self._finished_points()
        self._neighbours = None
        self._tfidf = None
        self._start = None  # the transferred model before training: validation and test probabilities

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

    def all_done(self, methods: list[str], size: int, repeat: int) -> bool:
        return all(self.done(method, size, repeat) for method in methods)

    def add(self, method: str, size: int, repeat: int, result: dict) -> None:
        if self.done(method, size, repeat):  # one training gives several rows; a resumed one only adds the missing
            return
        row = {"method": method, "n": size, "repeat": repeat, **result}
        self.rows.append(row)
        os.makedirs(os.path.dirname(self.points_path), exist_ok=True)
        with open(self.points_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        extra = "".join(f"  {key} {row[key]:g}" for key in ("alpha", "threshold", "tfidf_weight") if key in row)
        log.info("%-38s N=%-6d repeat %d: accuracy %.4f  macro-F1 %.4f%s", method, size, repeat,
                 result["accuracy"], result["macro_f1"], extra)

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

    def use_adapted_encoder(self, adapted: PretrainedRun) -> None:
        """The source's embedding and encoder adapted to the target's texts (the lm_adapt helper)."""
        self.adapted = adapted

    def _trainer_cfg(self, size: int, epochs: int, **changes) -> DictConfig:
        trainer = OmegaConf.merge(self.cfg.trainer, {"epochs": epochs, "verbose": False, "resume": False, **changes})
        trainer.batch_size = min(trainer.batch_size, max(4, size // 4))  # a few steps per epoch even at N=50
        resolve_monitors(trainer, self.headline)  # `auto`: the report's headline, for every method alike
        return trainer

    def _fit(self, classifier, train, trainer_cfg, groups=None, schedule=None, held_out=None,
             selection: Selection | None = None, start_weights=None) -> Trainer:
        """Train (the model ends with its best epoch's weights); with `selection`, the starting weights
        (or `start_weights`) are scored on validation first."""
        validation = (held_out or (self.validation, self.test))[0]
        trainer = Trainer(self.dist, classifier, self.num_classes, trainer_cfg, self.cfg.seed, groups)
        if selection is not None:
            selection.start(trainer, validation, start_weights)
        callbacks = make_callbacks(trainer_cfg, trainer_cfg.learning_rate, trainer.base_learning_rate, 1, self.dist)
        trainer.fit(train, validation, trainer_cfg.epochs, callbacks, verbose=False, schedule=schedule)
        return trainer

    def _scored_model(self, model, held_out=None) -> tuple[dict, np.ndarray, np.ndarray]:
        """Test result (at 0.5) of the weights in `model`, and its validation and test probabilities."""
        validation, test = held_out or (self.validation, self.test)
        probabilities = predict_probabilities(model, test)
        return (scored(self.data.test.labels, probabilities, self.num_classes), predict_probabilities(model, validation),
                probabilities)

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
            result = scored(self.data.test.labels, predict_probabilities(self.source.classifier, test), self.num_classes,
                            self.source.threshold)
            for size in sizes:
                self.add("source_as_is", size, 0, result)
        if not all(self.done("source_tfidf", size, 0) for size in sizes):
            source = self.source_texts()
            models = TfidfModels(source.train.texts, self.num_classes)
            model = models.best(models.features(source.train.texts), source.train.labels,
                                models.features(source.validation.texts), source.validation.labels)
            result = scored(self.data.test.labels, models.probabilities(model, models.features(self.data.test.texts)),
                            self.num_classes)
            for size in sizes:
                self.add("source_tfidf", size, 0, result)

    def source_texts(self) -> LabeledData:
        """The source run's training data, as its config.yaml describes it."""
        data = labeled_texts(self.cfg, self.dist, VocabularyRequest(base=tuple(self.source.vocabulary)),
                             self.source.config.dataset)
        if data.label_names != self.source.label_names:
            raise UserError(f"the source run {self.source.directory}'s dataset now has classes {data.label_names}, "
                            f"its model {self.source.label_names}; point finetune.source at a run of this dataset.")
        return data

    def _source_plus_target(self, texts: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Source + target TF-IDF's validation and test probabilities."""
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
        return models.probabilities(model, validation), models.probabilities(model, test)

    def _target_tfidf(self, texts: np.ndarray, labels: np.ndarray) -> dict:
        models = TfidfModels(texts, self.num_classes)
        model = models.best(models.features(texts), labels, models.features(self.data.validation.texts),
                            self.data.validation.labels)
        return scored(self.data.test.labels, models.probabilities(model, models.features(self.data.test.texts)),
                      self.num_classes)

    def point(self, size: int, repeat: int) -> None:
        settings = self.cfg.report
        seed = self.cfg.seed + 1000 * repeat
        rows = sample_indices(self.data.train.labels, size, seed)
        texts, labels = self.data.train.texts[rows], self.data.train.labels[rows]
        if not self.done("target_tfidf", size, repeat):
            self.add("target_tfidf", size, repeat, self._target_tfidf(texts, labels))
        tfidf = None  # source + target TF-IDF's probabilities, for its row and the +tfidf helper

        def tfidf_probabilities():
            nonlocal tfidf
            if tfidf is None:
                tfidf = self._source_plus_target(texts, labels)
            return tfidf

        if self.same_labels and not self.done("source_plus_target_tfidf", size, repeat):
            self.add("source_plus_target_tfidf", size, repeat, scored(self.data.test.labels, tfidf_probabilities()[1],
                                                                       self.num_classes))
        if not self.done("scratch", size, repeat):
            keras.utils.set_random_seed(seed)
            self.add("scratch", size, repeat, self._scratch(texts, labels, size))
        train = tokenize_split(self.vectorizer, texts, labels)
        for index, schedule in enumerate(settings.schedules):
            method = f"finetune_{schedule}"
            first = index == 0
            helpers = list(settings.helpers) if first else []
            # Free helpers (the same weights, chosen on validation): the threshold on every schedule (on
            # `frozen` it is the head-only fit with its decision threshold corrected), TF-IDF on the first.
            free = [h for h in settings.helpers if h == "threshold" or (first and h == "tfidf")]
            if free and "tfidf" in free and not self.same_labels:
                self.skip(method + "+tfidf", "no source + target TF-IDF: the source classes differ from the target's")
                free.remove("tfidf")
            if free and "threshold" in free and self.num_classes != 2:
                self.skip(method + "+threshold", "a decision threshold needs two classes")
                free.remove("threshold")
            names = self._transfer_rows(method, first, free)
            if not self.all_done(names, size, repeat):
                keras.utils.set_random_seed(seed)
                for name, result in self._finetune(method, schedule, train, size, first, free,
                                                   tfidf_probabilities if "tfidf" in free else None).items():
                    self.add(name, size, repeat, result)
            if size > settings.helpers_max_size:
                continue
            trained = {
                "class_weight": lambda: {"train": tokenize_split(self.vectorizer, texts, labels,
                                                                 class_weights(labels, self.num_classes, "balanced")[labels])},
                "augment": lambda: {"train": tokenize_split(self.vectorizer, *augment(texts, labels, settings.augment,
                                                                                      self.neighbours()))},
                "l2_sp": lambda: {"train": train, "changes": {"l2_sp": float(settings.l2_sp)}},
                "lm_adapt": lambda: {"train": train, "encoder": self.adapted},
            }
            for helper in [h for h in helpers if h in trained]:
                if not self.done(f"{method}+{helper}", size, repeat):
                    keras.utils.set_random_seed(seed)
                    variant = trained[helper]()
                    results = self._finetune(f"{method}+{helper}", schedule, variant["train"], size, False, [], None,
                                             variant.get("changes"), variant.get("encoder"))
                    self.add(f"{method}+{helper}", size, repeat, results[f"{method}+{helper}"])
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
            trainer = self._fit(classifier, train, self._trainer_cfg(size, settings.finetune_epochs), groups, plan,
                                held_out=self.lm_sets)
            self.add(f"lm_finetune_{schedule}", size, repeat, self._scored_model(trainer.model, self.lm_sets)[0])

    def _transfer_rows(self, method: str, first: bool, free: list[str]) -> list[str]:
        """The rows one fine-tune gives: the configured selection and, on the first schedule, the others."""
        names = [method]
        if first and self.reused_head:
            names += [f"{method}:unguarded", f"{method}:guard", f"{method}:wise_ft"]
        return names + [f"{method}+{helper}" for helper in free]

    def _alphas(self) -> list[float]:
        return list(self.cfg.finetune.wise_ft_alphas or self.cfg.report.wise_ft_alphas)

    def _finetune(self, method: str, schedule: str, train, size: int, first: bool, free: list[str],
                  tfidf_probabilities=None, changes: dict | None = None,
                  encoder: PretrainedRun | None = None) -> dict[str, dict]:
        """One fine-tune from the source (with `encoder`'s embedding and encoder in place of the
        source's: the source still competes as it is) and every row it gives (`_transfer_rows`)."""
        finetune = OmegaConf.merge(self.cfg.finetune, {"schedule": schedule, **(changes or {})})
        classifier, groups, plan = transferred_classifier(finetune, self.dist, self.source, self.vocab_size,
                                                          self.data.label_names)
        start_weights = None
        if encoder is not None:
            start_weights = classifier.get_weights()
            copy_layers(language_model_layers(encoder), [layer for layer in classifier.layers
                                                         if layer.weights and layer_group(layer) != "head"],
                        f"the adapted encoder in {encoder.directory}")
            if len(encoder.vocabulary) != self.vocab_size:
                raise UserError("the lm_adapt helper needs finetune.vocab=source (the adapted encoder reads the source's vocabulary).")
        trainer_cfg = self._trainer_cfg(size, self.cfg.report.finetune_epochs)
        # Every interpolation any row may keep is scored on validation once: the rows differ only in
        # which candidates they may choose from.
        selection = Selection(trainer_cfg.best_monitor, self._alphas() if first else list(finetune.wise_ft_alphas)) \
            if self.reused_head else None
        trainer = self._fit(classifier, train, trainer_cfg, groups, plan, selection=selection, start_weights=start_weights)
        if selection is None:
            result, validation, test = self._scored_model(trainer.model)
            return {method: self._as_finetune_scores(result, validation, test),
                    **self._free_rows(method, free, validation, test, tfidf_probabilities)}
        candidates = selection.candidates(trainer, self.validation)
        configured = set(finetune.wise_ft_alphas) | {1.0} | ({0.0} if finetune.guard else set())
        picks = {method: selection.pick([c for c in candidates if c[0] in configured])}
        if first:
            picks.update({f"{method}:unguarded": selection.pick([c for c in candidates if c[0] == 1.0]),
                          f"{method}:guard": selection.pick([c for c in candidates if c[0] in (0.0, 1.0)]),
                          f"{method}:wise_ft": selection.pick(candidates)})
        by_alpha: dict[float, tuple[dict, np.ndarray, np.ndarray]] = {}
        for alpha in sorted({alpha for alpha, _ in picks.values()}):
            if alpha == 0.0:
                by_alpha[alpha] = self._start_scores(selection, trainer)
            else:
                selection.apply(trainer, alpha)
                by_alpha[alpha] = self._scored_model(trainer.model)
        rows = {name: {**self._as_finetune_scores(*by_alpha[alpha]), "alpha": alpha, "validation": value}
                for name, (alpha, value) in picks.items()}
        _, validation, test = by_alpha[picks[method][0]]
        rows.update(self._free_rows(method, free, validation, test, tfidf_probabilities, picks[method][0]))
        return rows

    def _as_finetune_scores(self, result: dict, validation: np.ndarray, test: np.ndarray) -> dict:
        """A fine-tuned row scored as `finetune` would leave the model: with `trainer.tune_threshold`
        (binary), at the decision threshold that maximises the kept weights' validation macro-F1."""
        if not self.cfg.trainer.get("tune_threshold") or self.num_classes != 2:
            return result
        threshold, _ = best_threshold(binned_scores(self.data.validation.labels, validation))
        return {**scored(self.data.test.labels, test, 2, threshold), "threshold": threshold}

    def _start_scores(self, selection: Selection, trainer: Trainer) -> tuple[dict, np.ndarray, np.ndarray]:
        """The transferred model before training, scored once: the same for every point."""
        if self._start is None:
            selection.apply(trainer, 0.0)
            self._start = self._scored_model(trainer.model)
        return self._start

    def _free_rows(self, method: str, free: list[str], validation: np.ndarray, test: np.ndarray,
                   tfidf_probabilities, alpha: float | None = None) -> dict[str, dict]:
        """`+threshold` and `+tfidf`: the kept weights' probabilities, chosen on validation."""
        rows = {}
        labels = self.data.validation.labels
        if "threshold" in free:
            threshold, _ = best_threshold(binned_scores(labels, validation))
            rows[f"{method}+threshold"] = {**scored(self.data.test.labels, test, 2, threshold), "threshold": threshold}
        if "tfidf" in free:
            tfidf_validation, tfidf_test = tfidf_probabilities()
            best = None
            for weight in ENSEMBLE_WEIGHTS:  # ties go to the smaller TF-IDF share
                value = scores_at(labels, (1 - weight) * validation + weight * tfidf_validation, self.num_classes)[self.headline]
                if best is None or value > best[1]:
                    best = (float(weight), value)
            weight = best[0]
            rows[f"{method}+tfidf"] = {**scored(self.data.test.labels, (1 - weight) * test + weight * tfidf_test,
                                                self.num_classes), "tfidf_weight": weight}
        if alpha is not None:
            for row in rows.values():
                row["alpha"] = alpha
        return rows

    def _scratch(self, texts: np.ndarray, labels: np.ndarray, size: int) -> dict:
        """The source's architecture from random weights and its own vocabulary from the N texts,
        as a user without a source model would train it."""
        model_cfg = self.source.config.model
        vectorizer = make_vectorizer(model_cfg.sequence_length, build_vocabulary(texts, model_cfg.vocab_size))
        held_out = (tokenize_split(vectorizer, self.data.validation.texts, self.data.validation.labels),
                    tokenize_split(vectorizer, self.data.test.texts, self.data.test.labels))
        with self.dist.scope():
            scratch = build_classifier(model_cfg, vectorizer.vocabulary_size(), self.num_classes)
        trainer = self._fit(scratch, tokenize_split(vectorizer, texts, labels),
                            self._trainer_cfg(size, self.cfg.report.scratch_epochs), held_out=held_out)
        return self._scored_model(trainer.model, held_out)[0]

    def neighbours(self) -> dict[str, list[str]]:
        if self._neighbours is None:
            augment_cfg = self.cfg.report.augment
            table = self.source.classifier.get_layer("embedding").get_weights()[0]
            self._neighbours = embedding_neighbours(self.source.vocabulary, table, augment_cfg.neighbours,
                                                    augment_cfg.min_similarity)
        return self._neighbours

    # -- the report ---------------------------------------------------------------
    def run(self) -> list[dict]:
        """Every method at every size and repeat; the summary over repeats. Repeats run in the outer loop so
        that a report stopped early has whole curves for its first repeats: rerun it with
        `report.repeats=<finished>` and it summarises them without training again."""
        self.source_baselines()
        for repeat in range(self.cfg.report.repeats):
            for size in self.sizes():
                self.point(size, repeat)
        return self.summary()

    def _predictions(self, method: str, size: int) -> list[np.ndarray]:
        points = sorted((row for row in self.rows if row["method"] == method and row["n"] == size),
                        key=lambda row: row["repeat"])
        if not all("predicted" in row for row in points):
            return []
        return [unpack_predictions(row["predicted"], len(self.data.test.labels), self.num_classes) for row in points]

    def summary(self) -> list[dict]:
        """Mean, spread and 95% interval (seeds and test examples resampled) of each (method, N)."""
        keys = sorted({(row["method"], row["n"]) for row in self.rows}, key=lambda key: (key[1], key[0]))
        table = []
        for method, size in keys:
            points = [row for row in self.rows if row["method"] == method and row["n"] == size]
            entry = {"method": method, "n": size, "repeats": len(points), "baseline": method in BASELINES}
            resampled = bootstrap(self.data.test.labels, [self._predictions(method, size)], self.num_classes)
            for index, metric in enumerate(("accuracy", "macro_f1")):
                values = np.array([row[metric] for row in points])
                entry[metric], entry[f"{metric}_std"] = float(values.mean()), float(values.std())
                low, high = interval(resampled[0, :, index]) if resampled is not None else (None, None)
                entry[f"{metric}_low"], entry[f"{metric}_high"] = low, high
            if points and "alpha" in points[0]:
                entry["kept_source"] = float(np.mean([row["alpha"] == 0.0 for row in points]))
            table.append(entry)
        return table

    def _margin(self, method: str, other: str, size: int) -> tuple[float | None, float | None]:
        """95% interval of `method`'s headline minus `other`'s at `size` (paired resamples)."""
        resampled = bootstrap(self.data.test.labels, [self._predictions(method, size), self._predictions(other, size)],
                              self.num_classes)
        if resampled is None:
            return None, None
        index = ("accuracy", "macro_f1").index(self.headline)
        return interval(resampled[0, :, index] - resampled[1, :, index])

    def verdicts(self, summary: list[dict]) -> list[dict]:
        """Per N: the winner, and the best fine-tuned method against the best baseline, by the headline metric;
        the default fine-tune (the first schedule, as `finetune.*` says) against the best baseline and the source."""
        verdicts = []
        default = f"finetune_{self.cfg.report.schedules[0]}" if getattr(self, "cfg", None) else None
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
            verdict = {"n": size, "headline": self.headline, "winner": winner["method"],
                       "best_finetuned": best_transfer["method"], "best_baseline": best_baseline["method"],
                       "margin": margin, "finetune_wins": wins, "sentence": sentence}
            mine = next((row for row in transfers if row["method"] == default), None)
            if mine is not None:
                verdict.update(self._default_verdict(mine, best_baseline, at, size))
            verdicts.append(verdict)
        return verdicts

    def _default_verdict(self, mine: dict, best_baseline: dict, at: list[dict], size: int) -> dict:
        metric = self.headline
        out = {"default": mine["method"], "default_margin": mine[metric] - best_baseline[metric]}
        out["default_margin_low"], out["default_margin_high"] = self._margin(mine["method"], best_baseline["method"], size)
        source = next((row for row in at if row["method"] == "source_as_is"), None)
        words = (f"{mine['method']} (the default) {metric} {mine[metric]:.4f}: {out['default_margin']:+.4f} against "
                 f"{best_baseline['method']}")
        if out["default_margin_low"] is not None:
            words += f" (95% interval {out['default_margin_low']:+.4f} to {out['default_margin_high']:+.4f})"
        if source is not None:
            out["default_vs_source"] = mine[metric] - source[metric]
            out["default_vs_source_low"], out["default_vs_source_high"] = self._margin(mine["method"], "source_as_is", size)
        if source is not None and source is not best_baseline:
            words += f", {out['default_vs_source']:+.4f} against the source as-is"
            if out["default_vs_source_low"] is not None:
                words += f" ({out['default_vs_source_low']:+.4f} to {out['default_vs_source_high']:+.4f})"
        out["default_sentence"] = f"N={size}: " + words
        return out

    def write(self, run: RunDir) -> dict:
        """`transfer_report.json` (every point, the summary, the verdicts), the plot, and the table in the log."""
        summary = self.summary()
        verdicts = self.verdicts(summary)
        title = f"{self.source.config.dataset.name} -> {self.cfg.dataset.name}"
        points = [{key: value for key, value in row.items() if key != "predicted"} for row in self.rows]
        report = {"source": os.path.abspath(self.source.directory), "target": self.cfg.dataset.name,
                  "headline": self.headline, "imbalanced": bool(self.imbalanced), "test_examples": len(self.data.test),
                  "validation_examples": len(self.data.validation), "summary": summary, "verdicts": verdicts,
                  "skipped": self.skipped, "points": points}
        run.write_json(RunDir.REPORT, report)
        plot(summary, run.file(RunDir.REPORT_PLOT), title, self.headline)
        log.info("Transfer report %s (%s; mean over repeats):\n%s\n%s", title, self.headline,
                 format_table(summary, self.headline),
                 "\n".join(v["sentence"] + ("\n" + v["default_sentence"] if "default_sentence" in v else "")
                           for v in verdicts))
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
