"""Data sources, the tokenizer, prepared stores and the one tf.data pipeline that serves every strategy.

`resolve_dataset` reads a `conf/dataset/*.yaml` source and decides its splits as row numbers,
handing every row's text to a sink; `load_dataset` keeps the texts in memory. A prepared
store (`data/store.py`) is the same decision with its texts tokenized once, on disk.
"""

from __future__ import annotations

import importlib
import logging

from omegaconf import DictConfig

from sentiment_dist.data.types import LabeledData, Resolved, Split, TextList, TextSink
from sentiment_dist.runtime.errors import UserError

__all__ = ["LabeledData", "Resolved", "Split", "TextList", "TextSink", "load_dataset", "log_dataset", "resolve_dataset"]

log = logging.getLogger(__name__)


def load_dataset(cfg: DictConfig, labels: bool = True) -> LabeledData:
    """Load the splits described by a `conf/dataset/*.yaml` node (validated by its schema).

    `labels=False`: only the texts are wanted (language-model pretraining),
    so unlabelled text (`source: text`) is accepted too."""
    sink = TextList()
    return resolve_dataset(cfg, sink, labels).gather(sink.texts())


def resolve_dataset(cfg: DictConfig, sink: TextSink, labels: bool = True) -> Resolved:
    """The splits of `cfg` as row numbers of `sink`, which receives every row's text in order.
    Files are read in chunks; the other sources are small and loaded whole."""
    source = cfg.get("source")
    if source == "mixture":  # labels or not is the mixture's to pass on to its sources
        from sentiment_dist.data.mixture import resolve_mixture

        return resolve_mixture(cfg, sink, labels)
    if source == "text" and labels:
        raise UserError(
            f"dataset={cfg.get('name')} is unlabelled text, which only language-model pretraining can use; "
            "give this job a labelled dataset (e.g. dataset=csv) and pretrain on the text with "
            "`python -m sentiment_dist.pretrain dataset=text`."
        )
    if source not in RESOLVERS:
        raise UserError(f"dataset.source={source!r} is not a data source; use one of {sorted([*RESOLVERS, 'mixture'])}.")
    module, name, whole = RESOLVERS[source]
    # Imported on use: the file loaders need no TensorFlow, the synthetic generator no pandas.
    function = getattr(importlib.import_module(f"sentiment_dist.data.{module}"), name)
    return Resolved.of(function(cfg), sink) if whole else function(cfg, sink)


# source -> (module, function, loaded whole): files and the IMDB CSV are read in chunks.
RESOLVERS = {
    "synthetic": ("synthetic", "load_synthetic", True),
    "files": ("files", "scan_files", False),
    "imdb": ("imdb", "resolve_imdb", False),
    "text": ("text", "load_text", True),
}


def log_dataset(name: str, summary: dict, label_names: list[str]) -> None:
    dropped = {k: v for k, v in summary["stats"].items() if k.startswith("dropped") and v}
    mixed = ", ".join(
        f"{source_name} {source['train']} ({source['share']:.0%}{', oversampled' if source['oversampled'] else ''})"
        for source_name, source in summary["sources"].items()
    )
    log.info(
        "Dataset %s: %d train / %d validation / %d test examples, classes %s%s%s%s",
        name, summary["train"], summary["validation"], summary["test"], label_names,
        f", dropped {dropped}" if dropped else "", f"; training examples from {mixed}" if mixed else "",
        f"; memory-mapped from {summary['prepared']}" if summary.get("prepared") else "",
    )
