"""Several datasets as one (`dataset=<mixture>`): multi-domain training sources.

Each source is a dataset config of its own (a file, IMDB, synthetic, ...);
its own `label_mapping` maps its labels to class names (star ratings to
negative / positive, as for a single file), and the mixture takes the
sources whose class names it knows (`classes`, or the first source's). Its
training split draws `weight_i / sum(weights)` of `size` examples from source
i: a seeded sample without replacement when the source has enough, every
example plus a seeded resample when it has fewer (oversampling). With no
weights at all it is the union: every source's training split whole. Validation
and test splits are every source's, whole, so held-out metrics cover each
domain. The draw happens once, in numpy, from a fixed seed: every rank of a
distributed job holds the same arrays, so every strategy trains on the same
global batches.
"""

from __future__ import annotations

import numpy as np
from omegaconf import DictConfig, OmegaConf

from sentiment_dist.data.types import LabeledData, Resolved, TextList, TextSink
from sentiment_dist.runtime.errors import UserError


def load_mixture(cfg: DictConfig, labels: bool = True) -> LabeledData:
    sink = TextList()
    return resolve_mixture(cfg, sink, labels).gather(sink.texts())


def resolve_mixture(cfg: DictConfig, sink: TextSink, labels: bool = True) -> Resolved:
    """Every source read into `sink` in turn, then the draw, as row numbers of `sink`."""
    from sentiment_dist.data import resolve_dataset

    if not cfg.sources:
        raise UserError(f"dataset={cfg.name} is a mixture without sources; list them under dataset.sources.")
    weighted = [source.weight is not None for source in cfg.sources.values()]
    if any(weighted) and not all(weighted):
        raise UserError(f"dataset={cfg.name} weights some sources and not others; give every source a weight, or "
                        "none (each source whole).")
    loaded: dict[str, Resolved] = {}
    for name, source in cfg.sources.items():
        if source.dataset.get("source") == "mixture":
            raise UserError(f"dataset.sources.{name} is itself a mixture; list its sources in this one instead.")
        dataset = source.dataset
        if cfg.get("max_rows") and (dataset.get("max_rows") is None or dataset.max_rows > cfg.max_rows):
            dataset = OmegaConf.merge(dataset, {"max_rows": cfg.max_rows})  # debug modes shrink every source
        loaded[name] = resolve_dataset(dataset, sink, labels)
    classes = list(cfg.classes) if cfg.classes else next(iter(loaded.values())).label_names
    available = {name: len(data.rows["train"]) for name, data in loaded.items()}
    weights = {name: float(source.weight) if all(weighted) else float(available[name])
               for name, source in cfg.sources.items()}
    size = cfg.size if all(weighted) and cfg.size else sum(available.values())
    rng = np.random.default_rng(cfg.seed)
    rows: dict[str, list[np.ndarray]] = {"train": [], "validation": [], "test": []}
    codes_of: dict[str, list[np.ndarray]] = {"train": [], "validation": [], "test": []}
    sources = {}
    for index, (name, data) in enumerate(loaded.items()):
        codes = _class_codes(name, data, classes) if labels else None
        take = int(round(size * weights[name] / sum(weights.values())))
        chosen = _draw(available[name], take, rng)
        for role in ("train", "validation", "test"):
            picked = chosen if role == "train" else slice(None)
            rows[role].append(data.rows[role][picked])
            split_labels = data.labels[role][picked]
            codes_of[role].append(codes[split_labels] if codes is not None else split_labels)
        sources[name] = {"train": take, "train_available": available[name], "validation": len(data.rows["validation"]),
                         "test": len(data.rows["test"]), "weight": weights[name], "share": take / max(size, 1),
                         "oversampled": take > available[name], "position": index}
    return Resolved(rows={role: np.concatenate(parts) for role, parts in rows.items()},
                    labels={role: np.concatenate(parts).astype(np.int32) for role, parts in codes_of.items()},
                    label_names=classes if labels else [], sources=sources)


def _class_codes(name: str, data: Resolved, classes: list[str]) -> np.ndarray:
    """Mixture class index of each of the source's classes, or one sentence when one has none."""
    known = {label.casefold(): index for index, label in enumerate(classes)}
    unmapped = [label for label in data.label_names if label.casefold() not in known]
    if unmapped:
        raise UserError(
            f"dataset.sources.{name} has classes {data.label_names}, and {unmapped} are not among the mixture's "
            f"classes {classes}; map them with dataset.sources.{name}.dataset.label_mapping (e.g. ratings to "
            "negative/positive) or set dataset.classes."
        )
    return np.array([known[label.casefold()] for label in data.label_names], np.int32)


def _draw(available: int, take: int, rng: np.random.Generator) -> np.ndarray:
    """`take` row positions of `available`: a sample without replacement, or, past `available`, every
    row once and the rest resampled."""
    if take <= available:
        return np.sort(rng.choice(available, size=take, replace=False))
    return np.sort(np.concatenate([np.arange(available), rng.choice(available, size=take - available, replace=True)]))
