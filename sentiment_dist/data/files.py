"""Local-file datasets: CSV, TSV, JSON lines or Parquet with configurable columns.

Every mistake a user can make with a file (wrong path, wrong column, a label
the mapping does not know, bytes in another encoding) ends in a `UserError`
that names the config key to change. Rows that cannot be used (empty text, no
label, a rating outside every class) are dropped and counted in
`LabeledData.stats`, so a run can log what it lost. All row work is vectorised
pandas: the IMDB CSV alone has 50k rows.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import lzma
import os
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from sentiment_dist.data.types import LabeledData, Split
from sentiment_dist.runtime.errors import UserError

FORMATS = ("csv", "tsv", "jsonl", "parquet")
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
              ".parquet": "parquet", ".pq": "parquet"}
# pandas decompresses these by extension; the openers let a decode error report a true byte offset.
OPENERS: dict[str, Callable] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_ROLES = ("train", "validation", "test")


def load_files(cfg: DictConfig | dict, clean_text: Callable[[pd.Series], pd.Series] | None = None) -> LabeledData:
    """Read the configured file(s), map labels to classes and split.

    `clean_text` (a vectorised Series -> Series step, e.g. stripping HTML) runs on
    the joined text before empty rows are dropped, so they are counted right.
    """
    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    split = split_settings(cfg.get("split") or {})
    stats = dict.fromkeys(("dropped_empty_text", "dropped_missing_label", "dropped_unknown_label",
                           "dropped_unmapped_rating"), 0)
    files, frames = _configured_files(cfg), []
    for role, key, path in files:
        table = sample_rows(read_table(path, key, cfg.get("format"), cfg.get("encoding") or "utf-8"),
                            cfg.get("max_rows"), split["seed"])
        stats["rows_read" if key == "path" else f"rows_read_{role}"] = len(table)
        rows = _text_and_label(table, cfg, path, clean_text)
        empty = rows["text"] == ""
        unlabeled = ~empty & rows["label"].isna()
        stats["dropped_empty_text"] += int(empty.sum())
        stats["dropped_missing_label"] += int(unlabeled.sum())
        rows = rows[~empty & ~unlabeled]
        if rows.empty:
            raise UserError(f"dataset.{key}={path} has no rows with both text and a label; "
                            "check dataset.text_columns and dataset.label_column.")
        frames.append(rows.assign(role=role))
    rows = pd.concat(frames, ignore_index=True)
    mapping = cfg.get("label_mapping") or {}
    label_names, codes = _map_labels(rows["label"], mapping, cfg.get("label_column"), stats)
    rows = rows.assign(label=codes)[codes.notna()].astype({"label": "int32"})
    by_role = {}
    for role, key, path in files:
        by_role[role] = rows.loc[rows["role"] == role, ["text", "label"]]
        if by_role[role].empty:
            raise UserError(f"no row of dataset.{key}={path} has a label in the mapping; check "
                            "dataset.label_column and dataset.label_mapping.")
    return assemble(by_role, label_names, split, stats)


def split_settings(split_cfg: dict) -> dict:
    """`dataset.split` with its defaults; each fraction's range is the schema's, their sum is checked here."""
    settings = {"validation_fraction": split_cfg.get("validation_fraction", 0.1),
                "test_fraction": split_cfg.get("test_fraction", 0.2), "seed": split_cfg.get("seed", 42)}
    if settings["validation_fraction"] + settings["test_fraction"] >= 1:
        raise UserError("dataset.split.validation_fraction + test_fraction must be below 1 to leave training rows.")
    return settings


def sample_rows(frame: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    """A seeded sample of at most `max_rows` rows in file order (files are often sorted by label)."""
    if max_rows is None or len(frame) <= max_rows:
        return frame
    return frame.sample(n=max_rows, random_state=seed).sort_index()


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Seeded row positions: one part per fraction (of `len(labels)`), then the rest.

    Each class is spread evenly along a shuffled order before cutting, so every
    part gets its share of every class and rare classes are not lost to chance.
    """
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(labels))
    by_class = shuffled[np.argsort(labels[shuffled], kind="stable")]
    sorted_labels = labels[by_class]
    counts = np.bincount(sorted_labels)
    rank = np.arange(len(labels)) - (np.cumsum(counts) - counts)[sorted_labels]
    spread = by_class[np.argsort((rank + 0.5) / counts[sorted_labels], kind="stable")]
    bounds = np.cumsum([round(len(labels) * f) for f in fractions]).astype(int)
    return [np.sort(part) for part in np.split(spread, bounds)]


def assemble(frames: dict[str, pd.DataFrame], label_names: list[str], split: dict,
             stats: dict[str, int]) -> LabeledData:
    """Splits from `frames` (role -> text/label frame); missing validation/test rows come out of train."""
    frames, train = dict(frames), frames["train"]
    carve = [role for role in ("validation", "test") if role not in frames]
    parts = stratified_split(train["label"].to_numpy(), [split[f"{role}_fraction"] for role in carve], split["seed"])
    for role, part in zip(carve, parts, strict=False):
        if len(part) == 0:
            raise UserError(f"dataset.split.{role}_fraction={split[f'{role}_fraction']} leaves the {role} split "
                            f"empty ({len(train)} rows to split); increase it.")
        frames[role] = train.iloc[part]
    if len(parts[-1]) == 0:
        raise UserError("dataset.split.validation_fraction and test_fraction leave no training rows; lower them.")
    frames["train"] = train.iloc[parts[-1]]
    present = sorted(frames["train"]["label"].unique())
    if len(present) < 2:
        raise UserError(f"the training data holds only class {[label_names[i] for i in present]}; a classifier needs "
                        "two or more, so check dataset.label_column and dataset.label_mapping.")
    splits = {role: Split(texts=frames[role]["text"].to_numpy(dtype=object),
                          labels=frames[role]["label"].to_numpy(dtype=np.int32)) for role in _ROLES}
    return LabeledData(**splits, label_names=label_names, stats=stats)


def _configured_files(cfg: dict) -> list[tuple[str, str, str]]:
    """(role, config key, path) for each file to read; `path` alone is all of train to split."""
    explicit = [(role, f"{role}_path", cfg.get(f"{role}_path")) for role in _ROLES]
    if cfg.get("path"):
        if any(path for _, _, path in explicit):
            raise UserError("set either dataset.path or dataset.train_path (+ validation_path/test_path), not both.")
        return [("train", "path", cfg["path"])]
    if not cfg.get("train_path"):
        raise UserError("no input file: set dataset.path=FILE (split automatically) or dataset.train_path=FILE "
                        "(with optional dataset.validation_path and dataset.test_path).")
    return [(role, key, path) for role, key, path in explicit if path]


def read_table(path: str, key: str, fmt: str | None, encoding: str) -> pd.DataFrame:
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        problem = "is a directory" if os.path.isdir(path) else "does not exist"
        raise UserError(f"dataset.{key}={path} {problem}; set dataset.{key} to a csv, tsv, jsonl or parquet file.")
    stem, compression = os.path.splitext(path)
    fmt = fmt or EXTENSIONS.get(os.path.splitext(stem)[1] if compression in OPENERS else compression)
    if fmt not in FORMATS:
        raise UserError(f"cannot tell the format of dataset.{key}={path}; set dataset.format to one of "
                        f"{', '.join(FORMATS)}.")
    try:
        if fmt == "parquet":
            return pd.read_parquet(path)
        if fmt == "jsonl":
            return pd.read_json(path, lines=True, dtype=False, convert_dates=False, encoding=encoding)
        return _read_delimited(path, key, "\t" if fmt == "tsv" else ",", encoding)
    except UnicodeDecodeError as err:
        raise _decode_error(path, key, encoding, err) from None
    except LookupError:
        raise UserError(f"dataset.encoding={encoding!r} is not a known encoding; use e.g. utf-8 or latin-1.") from None
    except (ValueError, OSError) as err:  # pandas ParserError/EmptyDataError, bad JSON, ArrowInvalid
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"dataset.{key}={path} cannot be read as {fmt} ({reason}); fix the file or set "
                        "dataset.format.") from None


def _read_delimited(path: str, key: str, separator: str, encoding: str) -> pd.DataFrame:
    """A CSV / TSV whose every row has the header's fields, or one sentence naming the first row that has more.

    pandas refuses a row longer than the first data row ("Expected 2 fields in line 3"), but when
    the first data row itself is longer than the header it silently makes the extra leading field
    the index, and every column shifts by one (the label column then holds the text)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)  # what pandas says instead, with index_col=False
        try:
            return pd.read_csv(path, sep=separator, dtype=str, keep_default_na=False, encoding=encoding, index_col=False)
        except (pd.errors.ParserWarning, pd.errors.ParserError) as err:
            line, fields, header = _first_long_row(path, separator, encoding)
            if line is None:
                raise ValueError(str(err)) from None
    raise UserError(f"dataset.{key}={path} line {line} has {fields} fields but the header has {len(header)} "
                    f"({', '.join(header)}); quote fields that hold a '{separator}' or fix that row.")


def _first_long_row(path: str, separator: str, encoding: str) -> tuple[int | None, int, list[str]]:
    """(line number, field count, header) of the first row with more fields than the header;
    read only when pandas has found one, so the common path stays vectorised."""
    opener = OPENERS.get(os.path.splitext(path)[1], open)
    with opener(path, "rt", encoding=encoding, newline="") as handle:
        reader = csv.reader(handle, delimiter=separator)
        header = next(reader, [])
        for row in reader:
            if len(row) > len(header):
                return reader.line_num, len(row), header
    return None, 0, header


def _decode_error(path: str, key: str, encoding: str, err: UnicodeDecodeError) -> UserError:
    """Re-decode the whole file: pandas decodes in chunks, so its offset is chunk-relative."""
    with OPENERS.get(os.path.splitext(path)[1], open)(path, "rb") as handle:
        data = handle.read()
    try:
        data.decode(encoding)
    except UnicodeDecodeError as full:
        err = full
    return UserError(f"dataset.{key}={path} is not valid {encoding}: byte 0x{err.object[err.start]:02x} at offset "
                     f"{err.start}; set dataset.encoding to the file's encoding (e.g. latin-1).")


def _text_and_label(table: pd.DataFrame, cfg: dict, path: str,
                    clean_text: Callable[[pd.Series], pd.Series] | None) -> pd.DataFrame:
    """One `text` column (the text columns joined) and one raw `label` column of stripped strings."""
    text = joined_text(table, cfg, path, clean_text)
    label_column = cfg.get("label_column") or "label"
    if label_column not in table.columns:
        raise UserError(f"{path} has no column {label_column!r} (it has {list(table.columns)}); "
                        "set dataset.label_column to an existing column.")
    return pd.DataFrame({"text": text, "label": _strings(table[label_column])})


def joined_text(table: pd.DataFrame, cfg: dict, path: str,
                clean_text: Callable[[pd.Series], pd.Series] | None = None) -> pd.Series:
    """`dataset.text_columns` (after the present `optional_text_columns`) joined by `text_separator`."""
    required = cfg.get("text_columns") or ["text"]
    required = [required] if isinstance(required, str) else list(required)
    optional = [c for c in cfg.get("optional_text_columns") or [] if c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise UserError(f"{path} has no column {missing[0]!r} (it has {list(table.columns)}); "
                        "set dataset.text_columns to existing columns.")
    separator = cfg.get("text_separator", ". ")
    text = pd.Series("", index=table.index, dtype="string")
    for column in optional + required:
        part = _strings(table[column]).fillna("")
        text = text.where(part == "", text.where(text == "", text + separator) + part)
    if clean_text is not None:
        text = clean_text(text).str.strip()
    return text


def _strings(column: pd.Series) -> pd.Series:
    """Stripped strings, <NA> where missing or blank; whole floats (a number column with gaps) print as ints."""
    if pd.api.types.is_float_dtype(column) and (column.dropna() % 1 == 0).all():
        column = column.astype("Int64")
    strings = column.astype("string").str.strip()
    return strings.mask(strings == "")


def _map_labels(labels: pd.Series, mapping: dict, column: str, stats: dict[str, int]) -> tuple[list[str], pd.Series]:
    """Class names and a float code per row, NaN for rows to drop (counted) or an error for unknown labels."""
    kind, classes = mapping.get("type", "names"), mapping.get("classes")
    if kind == "integers":
        numbers = _numbers(labels, kind, column)
        if (numbers % 1 != 0).any():
            raise UserError(f"dataset.label_mapping.type=integers but column {column!r} holds "
                            f"{_examples(labels[numbers % 1 != 0])}; use type=ratings or type=names.")
        size = len(classes) if classes else int(numbers.max()) + 1
        names = [str(c) for c in classes] if classes else [str(i) for i in range(size)]
        codes = numbers.where((numbers >= 0) & (numbers < size))
    elif kind == "ratings":
        names, codes = _map_ratings(_numbers(labels, kind, column), classes)
        stats["dropped_unmapped_rating"] += int(codes.isna().sum())
        return names, codes
    else:
        names, codes = _map_names(labels, classes)
    unknown = codes.isna()
    if unknown.any() and not mapping.get("drop_unknown", False):
        raise UserError(f"column {column!r} has labels outside the mapping: {_examples(labels[unknown])}; list "
                        "them in dataset.label_mapping.classes or set dataset.label_mapping.drop_unknown=true "
                        "to drop them.")
    stats["dropped_unknown_label"] += int(unknown.sum())
    return names, codes


def _map_names(labels: pd.Series, classes: list | dict | None) -> tuple[list[str], pd.Series]:
    """Names match case-insensitively; a dict also accepts its listed aliases (`{positive: [pos, 1]}`)."""
    if classes is None:
        names = sorted(labels.unique())
        return names, labels.map({name: i for i, name in enumerate(names)})
    accepted = classes if isinstance(classes, dict) else {name: [] for name in classes}
    names = [str(name) for name in accepted]
    lookup: dict[str, int] = {}
    for index, (name, aliases) in enumerate(accepted.items()):
        for value in [name, *(aliases if isinstance(aliases, list) else [aliases])]:
            key = str(value).strip().casefold()
            if lookup.setdefault(key, index) != index:
                raise UserError(f"dataset.label_mapping.classes gives {value!r} to both {names[lookup[key]]!r} "
                                f"and {name!r}; keep it under one class.")
    return names, labels.str.casefold().map(lookup).astype(float)


def _map_ratings(numbers: pd.Series, classes: dict | None) -> tuple[list[str], pd.Series]:
    """`{name: [low, high]}` inclusive ranges; ratings in no range get NaN (dropped, by design)."""
    if not isinstance(classes, dict) or not classes:
        raise UserError("dataset.label_mapping.type=ratings needs classes as {name: [low, high]}, "
                        "e.g. {negative: [1, 2], positive: [4, 5]}.")
    spans = []
    for name, bounds in classes.items():
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, int | float) for b in bounds)
                and bounds[0] <= bounds[1]):
            raise UserError(f"dataset.label_mapping.classes.{name}={bounds!r} must be an inclusive range "
                            "[low, high].")
        spans.append((bounds[0], bounds[1], name))
    spans.sort(key=lambda span: span[:2])
    for (_, high, first), (low, _, second) in zip(spans, spans[1:], strict=False):
        if low <= high:
            raise UserError(f"dataset.label_mapping.classes ranges of {first!r} and {second!r} overlap; "
                            "make them disjoint.")
    codes = pd.Series(np.nan, index=numbers.index)
    for index, (low, high) in enumerate(classes.values()):
        codes[(numbers >= low) & (numbers <= high)] = index
    return [str(name) for name in classes], codes


def _numbers(labels: pd.Series, kind: str, column: str) -> pd.Series:
    numbers = pd.to_numeric(labels.astype(object), errors="coerce")
    if numbers.isna().any():
        raise UserError(f"dataset.label_mapping.type={kind} needs numbers but column {column!r} holds "
                        f"{_examples(labels[numbers.isna()])}; use type=names for text labels.")
    return numbers


def _examples(values: pd.Series, limit: int = 10) -> str:
    """The most frequent distinct values, quoted, for an error message."""
    counts = values.value_counts()
    shown = ", ".join(repr(str(v)) for v in counts.index[:limit])
    return shown + (f" and {len(counts) - limit} more" if len(counts) > limit else "")
