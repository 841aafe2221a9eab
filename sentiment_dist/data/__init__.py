"""Data sources and the one tf.data pipeline that serves every strategy."""

from __future__ import annotations

from omegaconf import DictConfig

from sentiment_dist.data.types import LabeledData, Split
from sentiment_dist.errors import UserError

__all__ = ["LabeledData", "Split", "load_dataset"]


def load_dataset(cfg: DictConfig, labels: bool = True) -> LabeledData:
    """Load the splits described by a `conf/dataset/*.yaml` node.

    `labels=False`: only the texts are wanted (language-model pretraining),
    so unlabelled text (`source: text`) is accepted too."""
    source = cfg.get("source")
    if source == "text":
        if labels:
            raise UserError(
                f"dataset={cfg.get('name')} is unlabelled text, which only language-model pretraining can use; "
                "give this job a labelled dataset (e.g. dataset=csv) and pretrain on the text with "
                "`python -m sentiment_dist.pretrain dataset=text`."
            )
        from sentiment_dist.data.text import load_text

        return load_text(cfg)
    if source == "synthetic":
        from sentiment_dist.data.synthetic import load_synthetic

        return load_synthetic(cfg)
    if source == "files":
        from sentiment_dist.data.files import load_files

        return load_files(cfg)
    if source == "imdb":
        from sentiment_dist.data.imdb import load_imdb

        return load_imdb(cfg)
    raise UserError(
        f"dataset.source={source!r} is not a known source; use one of synthetic, files, imdb, text."
    )
