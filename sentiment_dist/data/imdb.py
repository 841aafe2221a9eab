"""The IMDB movie reviews (Maas et al., 2011) in whichever form a user has them.

`dataset.path` may be the extracted `aclImdb/` folder, the `aclImdb_v1.tar.gz`
archive, or the 50k-review CSV (`review`, `sentiment` columns); null downloads
the archive into Keras' cache. The folder and the archive keep the official
25k/25k train/test split; the CSV has none, so it gets a seeded one
(`test_fraction: 0.5` is the usual 50/50). Either way validation is carved out
of the training reviews, so all three forms give splits of the same sizes.
"""

from __future__ import annotations

import os
import re
import tarfile
import zlib

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from sentiment_dist.data.files import assemble, sample_rows, scan_files, split_settings
from sentiment_dist.data.types import LabeledData, Resolved, TextList, TextSink
from sentiment_dist.runtime.errors import UserError

IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_MD5 = "7c2ac02c03563afcf9b574c7e56c153a"
LABEL_NAMES = ["negative", "positive"]
_PARTS, _FOLDERS = ("train", "test"), ("neg", "pos")  # folder index = class index
_MEMBER = re.compile(r"(?:^|/)(train|test)/(neg|pos)/([^/]+\.txt)$")
_USAGE = "set dataset.path to the extracted aclImdb/ folder, aclImdb_v1.tar.gz or the 50k-review IMDB CSV"


def load_imdb(cfg: DictConfig | dict) -> LabeledData:
    sink = TextList()
    return resolve_imdb(cfg, sink).gather(sink.texts())


def resolve_imdb(cfg: DictConfig | dict, sink: TextSink) -> Resolved:
    """The splits as row numbers of `sink` (see `sentiment_dist.data.resolve_dataset`)."""
    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    path = os.path.expanduser(str(cfg["path"])) if cfg.get("path") else _download()
    split = split_settings(cfg.get("split") or {})
    if os.path.isdir(path):
        parts = _read_directory(path)
    elif os.path.isfile(path) and tarfile.is_tarfile(path):
        parts = _read_archive(path)
    elif os.path.isfile(path):
        return _scan_csv(cfg, path, split, sink)
    else:
        raise UserError(f"dataset.path={path} does not exist; {_USAGE}, or null to download it.")
    stats = {"dropped_empty_text": 0}
    kept = {}
    for part, reviews in parts.items():
        stats[f"rows_read_{part}"] = len(reviews)
        reviews = sample_rows(reviews, cfg.get("max_rows"), split["seed"])
        reviews = reviews.assign(text=strip_breaks(reviews["text"]).str.strip())
        empty = reviews["text"] == ""
        stats["dropped_empty_text"] += int(empty.sum())
        reviews = reviews[~empty]
        if reviews.empty:
            raise UserError(f"dataset.path={path} holds no {part}/pos or {part}/neg reviews; {_USAGE}.")
        kept[part] = (sink.rows + np.arange(len(reviews), dtype=np.int64), reviews["label"].to_numpy(np.int32))
        sink.add(reviews["text"].to_numpy(dtype=object))
    return assemble(kept, LABEL_NAMES, split, stats)


def strip_breaks(texts: pd.Series) -> pd.Series:
    """IMDB reviews mark line breaks with `<br />`; left in, they become tokens like `br`.

    Spaces, not `\\s`: pandas hands `\\s` patterns to Python's `re`, which is ten
    times slower on 50k reviews than pyarrow's RE2 path.
    """
    return texts.str.replace(r"(?: *<br */?> *)+", " ", regex=True)


def _download() -> str:
    """The archive, fetched once into Keras' cache (`~/.keras/datasets`) and reused after.

    Not `extract=True`: Keras 3 re-extracts all 100k files on every call, and
    reading the reviews straight out of the archive takes seconds.
    """
    import keras

    try:
        return keras.utils.get_file("aclImdb_v1.tar.gz", IMDB_URL, file_hash=IMDB_MD5, hash_algorithm="md5",
                                    cache_subdir="datasets")
    except Exception as err:  # Keras raises a bare Exception for URL failures
        raise UserError(f"could not download {IMDB_URL} ({err}); fetch it elsewhere and {_USAGE}.") from None


def _scan_csv(cfg: dict, path: str, split: dict, sink: TextSink) -> Resolved:
    """The CSV through the file loader; validation_fraction is converted to a share of all rows."""
    test_fraction = split["test_fraction"]
    files_cfg = {
        "path": path,
        "text_columns": ["review"],
        "label_column": "sentiment",
        "label_mapping": {"type": "names", "classes": LABEL_NAMES},
        "split": {**split, "validation_fraction": split["validation_fraction"] * (1 - test_fraction)},
        "max_rows": cfg.get("max_rows"),
    }
    return scan_files(files_cfg, sink, clean_text=strip_breaks)


def _read_directory(path: str) -> dict[str, pd.DataFrame]:
    """Reviews of `aclImdb/` (or of a folder holding it), in sorted file order."""
    root = path if os.path.isdir(os.path.join(path, "train")) else os.path.join(path, "aclImdb")
    parts = {}
    for part in _PARTS:
        texts, labels = [], []
        for label, folder in enumerate(_FOLDERS):
            directory = os.path.join(root, part, folder)
            if not os.path.isdir(directory):
                raise UserError(f"dataset.path={path} is not an IMDB folder ({directory} is missing); {_USAGE}.")
            names = sorted(name for name in os.listdir(directory) if name.endswith(".txt"))
            texts += [_read_review(os.path.join(directory, name)) for name in names]
            labels += [label] * len(names)
        parts[part] = pd.DataFrame({"text": texts, "label": labels})
    return parts


def _read_review(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read()


def _read_archive(path: str) -> dict[str, pd.DataFrame]:
    """Reviews streamed out of the archive in one pass, ordered as in the extracted folder."""
    rows = []
    try:
        with tarfile.open(path, "r|*") as archive:
            for member in archive:
                match = _MEMBER.search(member.name)
                if match and member.isfile():
                    text = archive.extractfile(member).read().decode("utf-8", errors="replace")
                    rows.append((match[1], _FOLDERS.index(match[2]), match[3], text))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise UserError(f"dataset.path={path} is a damaged archive ({err}); download it again or {_USAGE}.") from None
    reviews = pd.DataFrame(rows, columns=["part", "label", "name", "text"]).sort_values(["part", "label", "name"])
    return {part: reviews.loc[reviews["part"] == part, ["text", "label"]].reset_index(drop=True) for part in _PARTS}
