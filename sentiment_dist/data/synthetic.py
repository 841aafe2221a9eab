"""Deterministic synthetic reviews whose labels depend on word order.

The offline stand-in for IMDB (domain "movies") and product reviews (domain
"ecommerce"). Both domains share one sentiment language (adjectives,
intensifiers, "not", "but", "although") and differ only in topic words and
filler sentences, so a model trained on one domain transfers to the other.

A review is one to four aspect sentences plus fillers. Its score is the mean
of its aspect sentences' scores, and the label buckets that score. Like real
reviews, a review leans one way and most of its sentences agree, which gives
small models a foothold in single words; the rules then make order matter, so
a bag of words stalls well below a sequence model:

* "not" flips and halves the adjective right after it (an intensifier may sit
  between): "not very good" is negative, "not bad" mildly positive;
* in a contrast the conceded clause counts a quarter: "wonderful at first, but
  the ending was boring" and "although the plot was wonderful, the ending was
  boring" are negative, though their words also make a positive review.

`score_text` computes the score from the text alone: it is the written rule,
and the tests check every generated label against it. Labels carry no noise:
reviews whose score lies within `MARGIN` of a class boundary are never drawn,
so each label is decidable from the text with room to spare.
"""

from __future__ import annotations

import numpy as np
from omegaconf import DictConfig

from sentiment_dist.data.types import LabeledData, Split

DOMAINS = ("movies", "ecommerce")
LABEL_NAMES: dict[int, list[str]] = {
    2: ["negative", "positive"],
    3: ["negative", "neutral", "positive"],
    5: ["very negative", "negative", "neutral", "positive", "very positive"],
}
# Class boundaries on the score, near its quantiles, so that the balancing draw
# in `generate` seldom has to sample more.
THRESHOLDS = {2: [0.0], 3: [-0.7, 0.7], 5: [-1.1, -0.5, 0.5, 1.1]}
MARGIN = 0.05

# Ordered so that the k-th adjective from the end mirrors the k-th: `_sample` flips
# a clause's polarity by swapping an adjective for its mirror, keeping "not" and "very".
ADJECTIVES = {
    "wonderful": 2.0, "excellent": 2.0, "superb": 2.0, "brilliant": 2.0, "fantastic": 2.0, "outstanding": 2.0,
    "good": 1.0, "great": 1.0, "enjoyable": 1.0, "solid": 1.0, "nice": 1.0, "impressive": 1.0,
    "decent": 0.5, "fine": 0.4, "okay": 0.2, "average": -0.2, "forgettable": -0.4, "mediocre": -0.5,
    "bad": -1.0, "boring": -1.0, "disappointing": -1.0, "weak": -1.0, "dull": -1.0, "poor": -1.0,
    "awful": -2.0, "terrible": -2.0, "horrible": -2.0, "dreadful": -2.0, "atrocious": -2.0, "unbearable": -2.0,
}  # fmt: skip
MODIFIERS = {"very": 1.5, "really": 1.5, "absolutely": 1.5, "extremely": 1.5, "truly": 1.5,
             "somewhat": 0.5, "fairly": 0.5, "slightly": 0.5}  # fmt: skip
NEGATION = -0.5
WEAK_CLAUSE = 0.25
SENTIMENT_WORDS = frozenset(ADJECTIVES) | frozenset(MODIFIERS) | {"not", "but", "although", "at", "first"}

TOPICS = {
    "movies": ["the plot", "the acting", "the soundtrack", "the director", "the ending", "the cast",
               "the dialogue", "the cinematography", "the pacing", "the script", "the editing",
               "the lead actor", "the villain", "the lighting", "the story", "the opening scene"],
    "ecommerce": ["the battery", "the delivery", "the packaging", "the fabric", "the price", "customer service",
                  "the screen", "the fit", "the build quality", "the manual", "the zipper",
                  "the charger", "the sound quality", "the material", "the checkout", "the warranty"],
}  # fmt: skip
FILLERS = {
    "movies": ["i watched it with friends last weekend.", "we saw it at the cinema on a rainy evening.",
               "it runs for about two hours.", "i had read the book before seeing it.",
               "my sister recommended this film to me.", "it came out last year."],
    "ecommerce": ["i ordered it for my kitchen last month.", "i bought this as a gift for my brother.",
                  "it arrived on a tuesday morning.", "i have used it every day for two weeks.",
                  "i compared a few brands before buying.", "the seller shipped it from another city."],
}  # fmt: skip
# Words only one domain uses: its topic nouns (fillers share function words).
TOPIC_WORDS = {d: frozenset(w for t in TOPICS[d] for w in t.split()) - {"the"} for d in DOMAINS}

# Sentence shapes: {t1}/{p1} is the conceded clause of a contrast, {t2}/{p2} the one that counts.
TEMPLATES = [
    ("{t2} was {p2}.", False), ("{t2} felt {p2}.", False), ("i thought {t2} was {p2}.", False),
    ("honestly, {t2} was {p2}.", False),
    ("{t1} was {p1} at first, but {t2} was {p2}.", True), ("{p1} at first, but {t2} was {p2}.", True),
    ("{t1} was {p1}, but {t2} was {p2}.", True), ("although {t1} was {p1}, {t2} was {p2}.", True),
]  # fmt: skip
TEMPLATE_P = np.array([0.7 / 4] * 4 + [0.3 / 4] * 4)  # plain, contrast
P_NOT = 0.2
AGREE_MIN = 0.8
MODIFIER_P = np.array([0.6] + [0.3 / 5] * 5 + [0.1 / 3] * 3)  # none, intensifiers, downtoners
MIN_SENTENCES, MAX_SENTENCES = 1, 4

_ADJ = list(ADJECTIVES)
_MOD = [""] + [m + " " for m in MODIFIERS]
_PHRASES = np.array([neg + mod + adj for neg in ("", "not ") for mod in _MOD for adj in _ADJ], dtype=object)
_PHRASE_VALUES = np.array([(NEGATION if neg else 1.0) * (MODIFIERS.get(mod.strip(), 1.0)) * ADJECTIVES[adj]
                           for neg in (0, 1) for mod in _MOD for adj in _ADJ])  # fmt: skip
_CONTRAST = np.array([c for _, c in TEMPLATES])


def score_text(text: str) -> float:
    """The review's score from its words: the rule every generated label follows."""
    scores = []
    for sentence in text.split("."):
        words = sentence.replace(",", " ,").split()
        if not any(w in ADJECTIVES for w in words):
            continue  # filler
        cut = words.index("but") if "but" in words else words.index(",") if words[:1] == ["although"] else 0
        scores.append(WEAK_CLAUSE * _phrases_score(words[:cut]) + _phrases_score(words[cut:]))
    return float(np.mean(scores)) if scores else 0.0


def _phrases_score(words: list[str]) -> float:
    total = 0.0
    for i, word in enumerate(words):
        if word in ADJECTIVES:
            value, j = ADJECTIVES[word], i - 1
            if j >= 0 and words[j] in MODIFIERS:
                value, j = value * MODIFIERS[words[j]], j - 1
            total += value * (NEGATION if j >= 0 and words[j] == "not" else 1.0)
    return total


def bucket(scores: np.ndarray, num_classes: int) -> np.ndarray:
    """Class of each score under `THRESHOLDS[num_classes]`."""
    return np.searchsorted(THRESHOLDS[num_classes], scores).astype(np.int32)


def _sample(rng: np.random.Generator, m: int) -> dict[str, np.ndarray]:
    """Structure and score of `m` reviews as index arrays; no strings yet, so it is cheap."""
    slots = (m, MAX_SENTENCES, 2)
    phrase = (
        (rng.random(slots) < P_NOT) * (len(_MOD) * len(_ADJ))
        + rng.choice(len(_MOD), slots, p=MODIFIER_P) * len(_ADJ)
        + rng.integers(0, len(_ADJ), slots)
    )
    template = rng.choice(len(TEMPLATES), slots[:2], p=TEMPLATE_P)
    # A review leans one way: each main clause agrees with its lean with a per-review
    # probability in [AGREE_MIN, 1]; a conceded clause takes the other side.
    lean = rng.choice([-1.0, 1.0], m)[:, None]
    want = np.where(rng.random(slots[:2]) < rng.uniform(AGREE_MIN, 1.0, m)[:, None], lean, -lean)
    want = np.stack([-want, want], axis=-1)
    flip = np.sign(_PHRASE_VALUES[phrase]) != want
    phrase += np.where(flip, len(_ADJ) - 1 - 2 * (phrase % len(_ADJ)), 0)  # swap in the mirror adjective
    value = _PHRASE_VALUES[phrase]
    sentence = np.where(_CONTRAST[template], WEAK_CLAUSE * value[..., 0], 0.0) + value[..., 1]
    count = rng.integers(MIN_SENTENCES, MAX_SENTENCES + 1, m)
    used = np.arange(MAX_SENTENCES) < count[:, None]
    n_fillers = len(FILLERS["movies"])
    filler = rng.integers(-n_fillers, n_fillers, (m, 2))  # opening and closing filler; < 0: none
    filler = np.where(count[:, None] == 1, filler % n_fillers, filler)  # one-sentence reviews get both
    return {
        "phrase": phrase, "template": template, "count": count, "filler": filler,
        "topic": rng.integers(0, len(TOPICS["movies"]), slots),
        "score": (sentence * used).sum(1) / count,
    }  # fmt: skip


def _render(parts: dict[str, np.ndarray], domain: str) -> np.ndarray:
    topics, fillers = TOPICS[domain], FILLERS[domain]
    texts = []
    for phrase, template, count, topic, filler in zip(
        _PHRASES[parts["phrase"]].tolist(), parts["template"].tolist(), parts["count"].tolist(),
        parts["topic"].tolist(), parts["filler"].tolist(), strict=True,
    ):  # fmt: skip
        sentences = [fillers[filler[0]]] if filler[0] >= 0 else []
        for s in range(count):
            sentences.append(
                TEMPLATES[template[s]][0].format(
                    t1=topics[topic[s][0]], p1=phrase[s][0], t2=topics[topic[s][1]], p2=phrase[s][1]
                )
            )
        if filler[1] >= 0:
            sentences.append(fillers[filler[1]])
        texts.append(" ".join(sentences))
    return np.array(texts, dtype=object)


def _rng(domain: str, seed: int, num_classes: int) -> np.random.Generator:
    """One stream per (domain, classes, seed), so domains are not word-swapped copies of each other."""
    return np.random.default_rng([seed, DOMAINS.index(domain), num_classes])


def generate(domain: str, num_examples: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`num_examples` reviews (object array of str) and int32 labels, equally many per class.

    Draws reviews until every class has its quota, skipping those within
    `MARGIN` of a boundary; the kept ones stay in draw order, so classes interleave.
    """
    rng = _rng(domain, seed, num_classes)
    quota = num_examples // num_classes + (np.arange(num_classes) < num_examples % num_classes)
    drawn = [_sample(rng, 0)]  # an empty start, so that zero examples is no special case
    have = np.zeros(num_classes, dtype=int)
    while (have < quota).any():
        chunk = _sample(rng, 2 * num_examples + 64)
        distance = np.abs(chunk["score"][:, None] - np.array(THRESHOLDS[num_classes])).min(1)
        labels = np.where(distance >= MARGIN, bucket(chunk["score"], num_classes), -1)
        keep = np.zeros(len(labels), dtype=bool)
        for c in range(num_classes):
            (rows,) = np.nonzero(labels == c)
            keep[rows[: quota[c] - have[c]]] = True
            have[c] += min(len(rows), quota[c] - have[c])
        drawn.append({k: v[keep] for k, v in chunk.items()})
    parts = {k: np.concatenate([d[k] for d in drawn]) for k in drawn[0]}
    return _render(parts, domain), bucket(parts["score"], num_classes)


def generate_unlabeled(domain: str, num_examples: int, seed: int) -> np.ndarray:
    """Reviews as drawn, unbalanced and unfiltered: text for language-model pretraining."""
    return _render(_sample(_rng(domain, seed, 0), num_examples), domain)


def load_synthetic(cfg: DictConfig) -> LabeledData:
    """Train / validation / test from seeds `seed`, `seed + 1`, `seed + 2`, so the splits differ.

    `max_rows` caps every split (the values' ranges are the config schema's)."""
    cap = cfg.get("max_rows")
    sizes = {split: min(cfg[f"num_{split}"], cap or cfg[f"num_{split}"]) for split in ("train", "validation", "test")}
    splits = {
        split: Split(*generate(cfg.domain, size, cfg.num_classes, cfg.seed + offset))
        for offset, (split, size) in enumerate(sizes.items())
    }
    return LabeledData(**splits, label_names=list(LABEL_NAMES[cfg.num_classes]))
