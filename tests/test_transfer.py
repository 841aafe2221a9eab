"""Multi-domain sources (mixtures), text augmentation, the decision threshold and the transfer
report's verdicts: on synthetic data and tiny written files (a clone has no ../shared)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    TINY,
    bilstm_language_model,
    classifier_from_language_model,
    composed,
    module,
    read_json,
    run,
)
from omegaconf import OmegaConf

from sentiment_dist.data import load_dataset
from sentiment_dist.data.augment import augment, embedding_neighbours
from sentiment_dist.jobs.report import Report
from sentiment_dist.training.metrics import best_threshold, confusion_matrix, macro_f1

# --- mixtures --------------------------------------------------------------------


def mixture(*overrides: str):
    return composed("train", "dataset=synthetic_mixture", "dataset.sources.movies.dataset.num_train=600",
                    "dataset.sources.ecommerce.dataset.num_train=300", *overrides).dataset


def test_a_mixture_draws_each_source_by_its_weight_and_says_so():
    data = load_dataset(mixture("dataset.size=800", "dataset.sources.ecommerce.weight=3"))
    sources = data.sources
    assert (sources["movies"]["train"], sources["ecommerce"]["train"]) == (200, 600)
    assert sources["ecommerce"]["share"] == 0.75 and sources["ecommerce"]["oversampled"]  # 600 drawn of 300
    assert not sources["movies"]["oversampled"] and sources["movies"]["train_available"] == 600
    assert len(data.train) == 800 and data.label_names == ["negative", "positive"]
    assert len(data.validation) == 1000 and len(data.test) == 2000  # every source's, whole
    # the ecommerce texts: all 300, and 300 more drawn again
    ecommerce = data.train.texts[200:]
    assert len(set(ecommerce)) <= 300 < len(ecommerce)


def test_a_mixture_is_seeded_and_its_union_takes_every_source_whole():
    once, again = load_dataset(mixture("dataset.size=500")), load_dataset(mixture("dataset.size=500"))
    assert list(once.train.texts) == list(again.train.texts)
    other = load_dataset(mixture("dataset.size=500", "dataset.seed=7"))
    assert list(other.train.texts) != list(once.train.texts)
    union = load_dataset(mixture("dataset.sources.movies.weight=null", "dataset.sources.ecommerce.weight=null"))
    assert {name: source["train"] for name, source in union.sources.items()} == {"movies": 600, "ecommerce": 300}
    assert not any(source["oversampled"] for source in union.sources.values())


def test_a_mixture_maps_each_source_to_its_classes_by_name():
    """A 3-class source joins a 3-class mixture whose classes are listed in another order."""
    data = load_dataset(mixture("dataset.sources.movies.dataset.num_classes=3", "dataset.sources.ecommerce.dataset.num_classes=3",
                                "dataset.classes=[positive,neutral,negative]", "dataset.size=300"))
    assert data.label_names == ["positive", "neutral", "negative"]
    movies = load_dataset(composed("train", "dataset=synthetic_movies", "dataset.num_classes=3", "dataset.num_train=600").dataset)
    first = np.flatnonzero(np.isin(data.train.texts[:150], movies.train.texts))[0]
    original = movies.label_names[movies.train.labels[list(movies.train.texts).index(data.train.texts[first])]]
    assert data.label_names[data.train.labels[first]] == original


def test_a_mixture_run_records_each_source_and_its_share(tmp_path):
    run(module("train", *TINY, "trainer.epochs=1", "dataset=synthetic_mixture", "dataset.sources.ecommerce.weight=3",
               f"hydra.run.dir={tmp_path}/run"), cwd=tmp_path)
    data = read_json(tmp_path / "run" / "metrics.json")["data"]
    assert data["sources"]["ecommerce"]["share"] == 0.75 and data["sources"]["movies"]["train"] == 256
    assert data["train"] == 1024


@pytest.mark.parametrize(
    "overrides,code,message",
    [
        (["dataset.sources.ecommerce.dataset.num_classes=5"], 2,
         "dataset.sources.ecommerce has classes ['very negative', 'negative', 'neutral', 'positive', 'very positive'], and "
         "['very negative', 'neutral', 'very positive'] are not among the mixture's classes ['negative', 'positive']"),
        (["dataset.sources.movies.weight=0"], 2, "dataset.sources.movies.weight=0.0 must be greater than 0"),
        (["dataset.sources.movies.weight=null"], 2, "weights some sources and not others"),
        (["dataset.sources.movies.weight=-1"], 2, "dataset.sources.movies.weight=-1.0 must be greater than 0"),
        (["+dataset@dataset.sources.inner.dataset=synthetic_mixture"], 2,
         "dataset.sources.inner is itself a mixture"),
    ],
)
def test_mixture_mistakes_are_one_sentence_and_leave_no_run_dir(tmp_path, overrides, code, message):
    result = run(module("train", *TINY, "dataset=synthetic_mixture", *overrides), cwd=tmp_path, check=False)
    assert result.returncode == code, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists()


# --- augmentation ------------------------------------------------------------------

VOCABULARY = ["", "[UNK]", "good", "great", "bad", "awful", "movie", "film"]
TABLE = np.array([[0, 0], [0, 0], [1, 0.1], [1, 0.12], [-1, 0.1], [-1, 0.09], [0.1, 1], [0.12, 1]], np.float32)


def eda(**changes):
    return OmegaConf.merge(composed("finetune", "finetune/augment=eda").finetune.augment, changes)


def test_embedding_neighbours_are_the_nearest_words_that_are_alike_enough():
    assert embedding_neighbours(VOCABULARY, TABLE, count=1, min_similarity=0.5) == {
        "good": ["great"], "great": ["good"], "bad": ["awful"], "awful": ["bad"], "movie": ["film"], "film": ["movie"]}
    assert embedding_neighbours(VOCABULARY, TABLE, count=1, min_similarity=0.99999) == {}


def test_augmentation_adds_labelled_copies_the_same_on_every_call():
    texts = np.array(["a good movie indeed , truly good", "an awful film , really bad"], dtype=object)
    labels = np.array([1, 0])
    neighbours = embedding_neighbours(VOCABULARY, TABLE, count=1, min_similarity=0.5)
    more, more_labels = augment(texts, labels, eda(rate=0.3), neighbours)
    assert len(more) == 10 and list(more[:2]) == list(texts) and list(more_labels) == [1, 0] * 5
    again, _ = augment(texts, labels, eda(rate=0.3), neighbours)
    assert list(again) == list(more)  # seeded: every rank makes these same copies
    assert "great" in more[2] or "film" in more[3]  # the synonym copy used an embedding neighbour
    swapped = sorted(more[6].split())
    assert swapped == sorted(texts[0].split())  # a swap keeps the words
    other, _ = augment(texts, labels, eda(rate=0.3, seed=1), neighbours)
    assert list(other) != list(more)


def test_augmentation_without_a_seed_is_refused_before_anything_trains(tmp_path):
    """Unseeded copies would differ between ranks: a null seed is refused in one sentence at compose time."""
    result = run(module("finetune", *TINY, "finetune/augment=eda", "finetune.augment.seed=null"), cwd=tmp_path,
                 check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "finetune.augment.seed=null: every rank of a distributed job must make the same copies" in result.stderr
    assert not (tmp_path / "outputs").exists()


# --- the decision threshold ----------------------------------------------------------------


def test_the_threshold_is_the_one_that_maximises_macro_f1():
    rng = np.random.default_rng(0)
    negative, positive = np.clip(rng.normal(0.2, 0.1, 900), 0, 0.999), np.clip(rng.normal(0.45, 0.12, 100), 0, 0.999)
    scores = np.zeros((2, 100), np.int64)
    np.add.at(scores[0], (negative * 100).astype(int), 1)
    np.add.at(scores[1], (positive * 100).astype(int), 1)
    threshold, score = best_threshold(scores)
    labels = np.concatenate([np.zeros(900, int), np.ones(100, int)])
    probabilities = np.concatenate([negative, positive])

    def f1_at(t):
        return macro_f1(confusion_matrix(labels, (probabilities >= t).astype(int), 2))

    assert score == pytest.approx(f1_at(threshold)) == pytest.approx(max(f1_at(t / 100) for t in range(1, 100)))
    assert threshold < 0.5 and f1_at(threshold) > f1_at(0.5) + 0.05


def test_a_tuned_threshold_is_saved_and_used_by_evaluate(tmp_path):
    run(module("train", *TINY, "trainer.tune_threshold=true", f"hydra.run.dir={tmp_path}/run"), cwd=tmp_path)
    labels, metrics = read_json(tmp_path / "run" / "labels.json"), read_json(tmp_path / "run" / "metrics.json")
    assert labels["decision_threshold"] == metrics["decision_threshold"] != 0.5
    run(module("evaluate", f"run_dir={tmp_path}/run", f"hydra.run.dir={tmp_path}/eval"), cwd=tmp_path)
    assert read_json(tmp_path / "eval" / "metrics.json")["test"]["confusion_matrix"] == metrics["test"]["confusion_matrix"]


# --- the report's verdicts ---------------------------------------------------------------


def verdicts(rows: list[tuple[str, int, float]]) -> list[dict]:
    report = Report.__new__(Report)  # only the summary is needed to judge it
    report.headline = "macro_f1"
    summary = [{"method": m, "n": n, "macro_f1": f, "baseline": m in ("source_tfidf", "target_tfidf")} for m, n, f in rows]
    return report.verdicts(summary)


def test_the_report_says_plainly_when_fine_tuning_loses_and_by_how_much():
    (lost, won) = verdicts([("source_tfidf", 50, 0.80), ("target_tfidf", 50, 0.60), ("finetune_gradual", 50, 0.77),
                            ("source_tfidf", 250, 0.80), ("finetune_gradual", 250, 0.83), ("finetune_frozen", 250, 0.81)])
    assert not lost["finetune_wins"] and lost["winner"] == "source_tfidf" and lost["margin"] == pytest.approx(-0.03)
    assert "fine-tuning LOSES" in lost["sentence"] and "0.0300 below source_tfidf" in lost["sentence"]
    assert won["finetune_wins"] and won["best_finetuned"] == "finetune_gradual" and won["margin"] == pytest.approx(0.03)


def test_fine_tuned_rows_use_the_validation_threshold_when_finetune_would():
    """With trainer.tune_threshold, `finetune` keeps the threshold that maximises validation macro-F1;
    the report's fine-tuned rows are scored the same way, or they would not be what finetune runs."""
    from sentiment_dist.data import LabeledData, Split
    from sentiment_dist.jobs.report import scored

    rng = np.random.default_rng(0)
    labels = {name: (rng.random(n) < 0.9).astype(np.int64) for name, n in (("validation", 400), ("test", 800))}
    # a model that ranks well but is shifted: most negatives and every positive sit above 0.5
    probabilities = {name: np.clip(0.55 + 0.3 * y + rng.normal(0, 0.08, len(y)), 0, 1)[:, None].astype(np.float32)
                     for name, y in labels.items()}
    report = Report.__new__(Report)
    report.num_classes = 2
    report.data = LabeledData(Split(np.array(["x"]), np.array([0])), Split(np.array(["x"] * 400), labels["validation"]),
                              Split(np.array(["x"] * 800), labels["test"]), ["negative", "positive"])
    at_half = scored(labels["test"], probabilities["test"], 2)
    report.cfg = OmegaConf.create({"trainer": {"tune_threshold": False}})
    assert report._as_finetune_scores(at_half, probabilities["validation"], probabilities["test"]) is at_half
    report.cfg = OmegaConf.create({"trainer": {"tune_threshold": True}})
    row = report._as_finetune_scores(at_half, probabilities["validation"], probabilities["test"])
    assert 0.6 < row["threshold"] < 0.9  # between the two classes' scores, not 0.5
    assert row["macro_f1"] > at_half["macro_f1"] + 0.2
    assert row == {**scored(labels["test"], probabilities["test"], 2, row["threshold"]), "threshold": row["threshold"]}


def test_predictions_round_trip_through_the_points_file():
    from sentiment_dist.jobs.report import pack_predictions, unpack_predictions

    rng = np.random.default_rng(0)
    for classes in (2, 5):
        predicted = rng.integers(0, classes, size=1001)
        np.testing.assert_array_equal(unpack_predictions(pack_predictions(predicted, classes), 1001, classes), predicted)


def test_intervals_resample_seeds_and_test_examples_paired():
    from sentiment_dist.jobs.report import bootstrap, interval

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=2000)
    right = np.where(rng.random(2000) < 0.9, labels, 1 - labels)  # about 90% right
    worse = np.where(rng.random(2000) < 0.05, 1 - right, right)  # the same, 5% of it flipped
    resampled = bootstrap(labels, [[right, right], [worse]], 2)
    low, high = interval(resampled[0, :, 0])
    assert low < accuracy_of(labels, right) < high and high - low < 0.04
    difference = interval(resampled[0, :, 0] - resampled[1, :, 0])
    assert 0 < difference[0] < difference[1] < 0.1  # paired: a 4-point gap is clearly above 0
    same = interval(resampled[0, :, 1] - resampled[0, :, 1])
    assert same == (0.0, 0.0)
    assert bootstrap(labels, [[right], []], 2) is None  # points kept before predictions were: no interval


def accuracy_of(labels, predicted) -> float:
    return float((labels == predicted).mean())


def test_a_target_class_missing_from_the_labelled_sample_is_one_sentence(tmp_path):
    """Three classes, one of them rare: a stratified sample of 8 cannot hold all three."""
    rows = [f"review {i} {'good' if i % 2 else 'bad'},{'pos' if i % 2 else 'neg'}" for i in range(400)]
    rows += [f"review {i} fine,mid" for i in range(400, 405)]
    (tmp_path / "target.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    result = run(module("transfer_report", "debug=tiny", "trainer.verbose=false", "dataset=csv", "dataset.path=target.csv",
                        "dataset.split.test_fraction=0.4", "report.sizes=[8]", f"hydra.run.dir={tmp_path}/run"),
                 cwd=tmp_path, check=False, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "report.sizes N=8 leaves the target classes ['mid'] without a labelled example" in result.stderr
    assert not (tmp_path / "run").exists()  # checked before the source trained


# --- the review encoder chain: every stage resumes after a kill --------------------------------


def test_a_language_model_on_a_union_of_sources_resumes_after_a_kill(tmp_path):
    """The chain's first stage (pretrain on a mixture's texts, `weight: null` = each source whole),
    killed after its first epoch, resumes from its checkpoint; the later stages (train, finetune,
    transfer_report) resume as tests/test_resume.py and test_finetune.py show."""
    from test_preemption import ENV, held_at

    command = module("pretrain", *TINY, "trainer.epochs=2", "dataset=synthetic_mixture", "dataset.sources.movies.weight=null",
                     "dataset.sources.ecommerce.weight=null", "trainer.early_stopping.patience=null",
                     f"hydra.run.dir={tmp_path}/lm")
    env, killed = held_at(tmp_path, "kill between_steps rank=0 epoch=2 step=1")  # SIGKILL early in epoch 2
    assert run(command, cwd=tmp_path, env=env, check=False).returncode != 0 and killed()
    assert not (tmp_path / "lm" / "metrics.json").exists()
    result = run(command, cwd=tmp_path, env=ENV)
    assert "Resuming from" in result.stdout + result.stderr
    metrics = read_json(tmp_path / "lm" / "metrics.json")
    assert read_json(tmp_path / "lm" / "history.json")["epoch"] == [1, 2]
    assert set(metrics["data"]["sources"]) == {"movies", "ecommerce"} and metrics["data"]["train"] == 1024


def test_the_report_adapts_the_source_encoder_to_the_target_texts_before_fine_tuning(tmp_path, tmp_path_factory):
    """ULMFiT's stage 2 in the review chain's order: language model -> classifier from it -> the
    classifier's own encoder trained as a language model on the target's texts -> fine-tuned."""
    lm, source = bilstm_language_model(tmp_path_factory), classifier_from_language_model(tmp_path_factory)
    report = [*TINY, f"finetune.source={source}", "report.sizes=[64]", "report.schedules=[gradual]",
              "report.helpers=[lm_adapt]"]
    refused = run(module("transfer_report", *report, f"hydra.run.dir={tmp_path}/refused"), cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "set init.from=<that pretrain run>" in refused.stderr
    run(module("transfer_report", *report, f"init.from={lm}", f"hydra.run.dir={tmp_path}/report"), cwd=tmp_path)
    adapted = read_json(tmp_path / "report" / "lm_source" / "metrics.json")
    target = load_dataset(composed("transfer_report", *TINY).dataset)
    assert adapted["init_from"] == str(lm) and adapted["data"]["train"] == len(target.train)  # its texts only
    # Continued pretraining keeps the language model's trained output biases: a reset to the target's
    # unigram frequencies (what a new language model starts from) would throw away what they learnt.
    from sentiment_dist.data.tokenizer import make_vectorizer
    from sentiment_dist.data.tokens import tokenize_split
    from sentiment_dist.jobs.rundir import RunDir
    from sentiment_dist.models.language_model import unigram_log_frequencies

    general, tuned = (RunDir(str(path)).load_language_model() for path in (lm, tmp_path / "report" / "lm_source"))
    vocab_size = len(general.vocabulary)
    tokens = tokenize_split(make_vectorizer(general.config.model.sequence_length, general.vocabulary), target.train.texts,
                            target.train.labels)
    reset = unigram_log_frequencies(tokens.id_counts(vocab_size))
    for start, end in zip(general.model.heads, tuned.model.heads, strict=True):
        moved, from_reset = (np.abs(end.bias.numpy() - b).mean() for b in (start.bias.numpy(), reset))
        assert moved < from_reset / 2, (moved, from_reset)
    rows = {row["method"]: row for row in read_json(tmp_path / "report" / "transfer_report.json")["points"]}
    assert {"finetune_gradual", "finetune_gradual+lm_adapt"} <= set(rows)
    assert rows["finetune_gradual+lm_adapt"]["alpha"] in (0.0, 0.25, 0.5, 0.75, 1.0)
