"""Data sources and the one tf.data pipeline that serves every strategy."""

from __future__ import annotations

import importlib

from omegaconf import DictConfig

from sentiment_dist.data.types import LabeledData, Split
from sentiment_dist.runtime.errors import UserError

__all__ = ["LabeledData", "Split", "load_dataset"]


def load_dataset(cfg: DictConfig, labels: bool = True) -> LabeledData:
    """Load the splits described by a `conf/dataset/*.yaml` node (validated by its schema).

    `labels=False`: only the texts are wanted (language-model pretraining),
    so unlabelled text (`source: text`) is accepted too."""
    source = cfg.get("source")
    if source == "mixture":  # labels or not is the mixture's to pass on to its sources
        from sentiment_dist.data.mixture import load_mixture

        return load_mixture(cfg, labels)
    if source == "text" and labels:
        raise UserError(
            f"dataset={cfg.get('name')} is unlabelled text, which only language-model pretraining can use; "
            "give this job a labelled dataset (e.g. dataset=csv) and pretrain on the text with "
            "`python -m sentiment_dist.pretrain dataset=text`."
        )
    # Imported on use: the file loaders need no TensorFlow, the synthetic generator no pandas.
    module, loader = LOADERS[source]
    return getattr(importlib.import_module(f"sentiment_dist.data.{module}"), loader)(cfg)


LOADERS = {
    "synthetic": ("synthetic", "load_synthetic"),
    "files": ("files", "load_files"),
    "imdb": ("imdb", "load_imdb"),
    "text": ("text", "load_text"),
    "mixture": ("mixture", "load_mixture"),
}
