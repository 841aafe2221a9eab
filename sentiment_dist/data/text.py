"""Unlabelled text for language-model pretraining (`dataset=text`, `source: text`).

`dataset.path` is one of
- a plain-text file, one text per line (`.txt`, or any name; `.gz`/`.bz2`/`.xz` are decompressed);
- a directory: every `*.txt` file under it is one text (aclImdb's `unsup/`, a crawl dump);
- a csv / tsv / jsonl / parquet table: its `text_columns` are read, no label column is needed.

Empty texts are dropped and counted. A seeded random share of the texts is
held out (`split.validation_fraction`, `split.test_fraction`) for the
perplexity that early stopping watches and the one reported at the end.
There are no labels, so only `pretrain` (and the language-model stages of
`ulmfit` and the transfer report) accept this source.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from sentiment_dist.data.files import (
    DAMAGED_COMPRESSED,
    EXTENSIONS,
    OPENERS,
    damaged_compressed,
    joined_text,
    read_table,
    sample_rows,
    split_settings,
)
from sentiment_dist.data.types import LabeledData, Split
from sentiment_dist.runtime.errors import UserError


def load_text(cfg: DictConfig | dict) -> LabeledData:
    """Train / validation / test texts of `cfg.path`, every label 0 and no class names."""
    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    split = split_settings(cfg.get("split") or {})
    path = cfg.get("path")
    if not path:
        raise UserError("no input text: set dataset.path to a text file (one text per line), a directory of .txt "
                        "files, or a csv/tsv/jsonl/parquet table.")
    path = os.path.expanduser(str(path))
    texts = _read_texts(path, cfg)
    read = len(texts)
    texts = texts.str.strip()
    present = texts[texts.notna() & (texts != "")]
    stats = {"rows_read": read, "dropped_empty_text": int(len(texts) - len(present))}
    kept = sample_rows(present, cfg.get("max_rows"), split["seed"]).to_numpy(dtype=object)  # at most max_rows texts
    order = np.random.default_rng(split["seed"]).permutation(len(kept))
    bounds = np.cumsum([round(len(kept) * split[f"{role}_fraction"]) for role in ("validation", "test")]).astype(int)
    validation, test, train = (np.sort(part) for part in np.split(order, bounds))
    for role, part in (("validation", validation), ("test", test), ("training", train)):
        if len(part) == 0:
            raise UserError(f"dataset.path={path} has {len(kept)} non-empty texts, which leaves no {role} text with "
                            "dataset.split.validation_fraction and test_fraction as set; add text or change the fractions.")

    def unlabeled(part: np.ndarray) -> Split:
        return Split(texts=kept[part], labels=np.zeros(len(part), np.int32))

    return LabeledData(unlabeled(train), unlabeled(validation), unlabeled(test), label_names=[], stats=stats)


def _read_texts(path: str, cfg: dict) -> pd.Series:
    encoding = cfg.get("encoding") or "utf-8"
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "**", "*.txt"), recursive=True))
        if not files:
            raise UserError(f"dataset.path={path} is a directory without .txt files; point it at a text file, "
                            "a table or a directory of .txt files (one text each).")
        return pd.Series([_read(name, encoding, whole=True) for name in files], dtype="string")
    if not os.path.isfile(path):
        raise UserError(f"dataset.path={path} does not exist; set it to a text file, a table or a directory of .txt files.")
    stem, compression = os.path.splitext(path)
    extension = os.path.splitext(stem)[1] if compression in OPENERS else compression
    if cfg.get("format") or extension in EXTENSIONS:  # a table: its text columns
        table = read_table(path, "path", cfg.get("format"), encoding)
        return joined_text(table, cfg, path).astype("string")
    return pd.Series(_read(path, encoding, whole=False), dtype="string")


def _read(path: str, encoding: str, whole: bool) -> str | list[str]:
    """One file's text (`whole`) or its lines, decompressed by extension."""
    opener = OPENERS.get(os.path.splitext(path)[1], open)
    try:
        with opener(path, "rt", encoding=encoding, newline=None) as handle:
            return handle.read() if whole else handle.read().split("\n")
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not valid {encoding} (byte 0x{err.object[err.start]:02x}); set dataset.encoding "
                        "to the file's encoding (e.g. latin-1).") from None
    except LookupError:
        raise UserError(f"dataset.encoding={encoding!r} is not a known encoding; use e.g. utf-8 or latin-1.") from None
    except DAMAGED_COMPRESSED as err:
        raise damaged_compressed(path, "dataset.path", err) from None
    except OSError as err:
        raise UserError(f"{path} cannot be read ({err.strerror or type(err).__name__}); check the file.") from None
