"""The synthetic generator: deterministic, balanced, two domains with one
sentiment language, and labels that need word order (negation, contrast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from sentiment_dist.data import synthetic as S

CONF = Path(__file__).resolve().parent.parent / "conf" / "dataset"


def vocabulary(texts: np.ndarray) -> set[str]:
    return {w for t in texts for w in t.replace(",", " ").replace(".", " ").split()}


def config(name: str = "synthetic_movies", **overrides):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def test_same_arguments_same_output_and_other_seeds_differ():
    texts, labels = S.generate("movies", 500, 3, seed=7)
    again_texts, again_labels = S.generate("movies", 500, 3, seed=7)
    assert np.array_equal(texts, again_texts) and np.array_equal(labels, again_labels)
    other_texts, _ = S.generate("movies", 500, 3, seed=8)
    assert len(set(texts) & set(other_texts)) < 10
    assert not np.array_equal(S.generate_unlabeled("movies", 50, 1), S.generate_unlabeled("movies", 50, 2))
    assert np.array_equal(S.generate_unlabeled("ecommerce", 50, 1), S.generate_unlabeled("ecommerce", 50, 1))


def test_output_types_and_lengths():
    texts, labels = S.generate("ecommerce", 1000, 2, seed=0)
    assert texts.shape == labels.shape == (1000,)
    assert texts.dtype == object and all(isinstance(t, str) and t == t.lower() for t in texts)
    assert labels.dtype == np.int32
    lengths = np.array([len(t.split()) for t in texts])
    assert lengths.min() >= 8 and lengths.max() <= 80 and 18 <= np.median(lengths) <= 40
    unlabeled = S.generate_unlabeled("movies", 300, seed=0)
    assert unlabeled.shape == (300,) and unlabeled.dtype == object


def test_domains_share_the_sentiment_language_but_not_the_topics():
    movies, ecommerce = (vocabulary(S.generate(d, 3000, 2, seed=1)[0]) for d in S.DOMAINS)
    assert not S.TOPIC_WORDS["movies"] & S.TOPIC_WORDS["ecommerce"]
    assert S.TOPIC_WORDS["movies"] <= movies and not S.TOPIC_WORDS["movies"] & ecommerce
    assert S.TOPIC_WORDS["ecommerce"] <= ecommerce and not S.TOPIC_WORDS["ecommerce"] & movies
    shared = S.SENTIMENT_WORDS
    assert shared <= movies and shared <= ecommerce
    assert {"good", "wonderful", "boring", "not", "but", "very"} <= shared
    values = list(S.ADJECTIVES.values())
    assert values == [-v for v in reversed(values)]  # the generator flips polarity by mirroring


def test_zero_examples_is_empty_not_an_error():
    texts, labels = S.generate("movies", 0, 5, seed=0)
    assert texts.shape == labels.shape == (0,)


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_classes_are_balanced_and_follow_the_written_rule(num_classes):
    texts, labels = S.generate("movies", 3001, num_classes, seed=3)
    counts = np.bincount(labels, minlength=num_classes)
    assert len(counts) == num_classes and counts.max() - counts.min() <= 1
    scores = np.array([S.score_text(t) for t in texts])
    assert np.array_equal(S.bucket(scores, num_classes), labels)  # the label is a function of the text
    distance = np.abs(scores[:, None] - np.array(S.THRESHOLDS[num_classes])).min(1)
    assert distance.min() >= S.MARGIN - 1e-9  # no review sits on a class boundary
    assert len(S.LABEL_NAMES[num_classes]) == num_classes


def test_negation_flips_the_adjective_after_it():
    score = S.score_text
    assert score("the acting was good.") > 0 > score("the acting was not good.")
    assert score("the acting was not very good.") < 0 < score("the acting was very good.")
    assert score("the acting was bad.") < 0 < score("the acting was not bad.") < score("the acting was good.")
    assert score("i watched it with friends last weekend.") == 0.0


def test_the_clause_after_but_dominates_in_either_order():
    before = "boring at first, but the ending was wonderful."
    after = "wonderful at first, but the ending was boring."
    assert sorted(vocabulary([before])) == sorted(vocabulary([after]))  # same words ...
    assert S.score_text(before) > 0 > S.score_text(after)  # ... opposite sentiment
    assert S.score_text("although the plot was wonderful, the ending was boring.") < 0
    assert S.score_text("the plot was awful, but the ending was good.") > 0


def test_generated_negations_and_contrasts_carry_the_expected_labels():
    texts, labels = S.generate("movies", 20000, 2, seed=11)

    def positive_rate(fragment: str) -> float:
        hits = np.array([fragment in t for t in texts])
        assert hits.sum() >= 30, fragment
        return labels[hits].mean()

    assert positive_rate("was good.") > 0.75 and positive_rate("was not good.") < 0.25
    assert positive_rate("was bad.") < 0.25 and positive_rate("was not bad.") > 0.6
    assert positive_rate("wonderful at first, but") < 0.4 and positive_rate("boring at first, but") > 0.6


def tfidf_accuracy(num_classes: int, ngrams: tuple[int, int]) -> float:
    train_x, train_y = S.generate("movies", 4000, num_classes, seed=1234)
    test_x, test_y = S.generate("movies", 1000, num_classes, seed=1236)
    vectorizer = TfidfVectorizer(ngram_range=ngrams)
    model = LogisticRegression(max_iter=2000).fit(vectorizer.fit_transform(train_x), train_y)
    return model.score(vectorizer.transform(test_x), test_y)


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_a_bag_of_words_falls_short_and_word_order_carries_the_signal(num_classes):
    unigram, bigram = tfidf_accuracy(num_classes, (1, 1)), tfidf_accuracy(num_classes, (1, 2))
    chance = 1 / num_classes
    assert chance + 0.1 < unigram < {2: 0.86, 3: 0.75, 5: 0.65}[num_classes]  # learnable, not solvable
    assert bigram > unigram + 0.04  # adjacent pairs ("not good", "boring at") help: order matters


def test_load_synthetic_builds_three_different_splits():
    data = S.load_synthetic(config("synthetic_ecommerce", num_classes=3))
    assert (len(data.train), len(data.validation), len(data.test)) == (2000, 500, 1000)
    assert data.label_names == ["negative", "neutral", "positive"] and data.num_classes == 3
    train = set(data.train.texts)
    assert sum(t in train for t in data.test.texts) <= 10  # a chance repeat of a short review, no copies
    assert not np.array_equal(data.validation.texts[:100], data.test.texts[:100])
    again = S.load_synthetic(config("synthetic_ecommerce", num_classes=3))
    assert np.array_equal(again.test.texts, data.test.texts)
    assert np.array_equal(S.load_synthetic(config()).train.labels, S.load_synthetic(config()).train.labels)


def test_max_rows_caps_every_split():
    data = S.load_synthetic(config(max_rows=300))
    assert (len(data.train), len(data.validation), len(data.test)) == (300, 300, 300)
