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
import zlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from sentiment_dist.data.types import LabeledData, Resolved, TextList, TextSink
from sentiment_dist.runtime.errors import UserError

FORMATS = ("csv", "tsv", "jsonl", "parquet")
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
              ".parquet": "parquet", ".pq": "parquet"}
# pandas decompresses these by extension; the openers let a decode error report a true byte offset.
OPENERS: dict[str, Callable] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
# What a compressed file cut short or corrupted raises while it is read (a damaged .bz2 raises a plain OSError).
DAMAGED_COMPRESSED = (EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)
_ROLES = ("train", "validation", "test")
CHUNK_ROWS = 65536  # rows read at a time: a file of millions of reviews is never in memory at once


def load_files(cfg: DictConfig | dict, clean_text: Callable[[pd.Series], pd.Series] | None = None) -> LabeledData:
    """Read the configured file(s), map labels to classes and split, texts in memory."""
    sink = TextList()
    return scan_files(cfg, sink, clean_text).gather(sink.texts())


def scan_files(cfg: DictConfig | dict, sink: TextSink,
               clean_text: Callable[[pd.Series], pd.Series] | None = None) -> Resolved:
    """Read the configured file(s) in chunks of CHUNK_ROWS rows, hand every row's text to `sink`
    and keep only what deciding the splits needs (per row: empty or not, its label's code), so
    a file of millions of reviews is never in memory at once; then map labels to classes and split.

    `clean_text` (a vectorised Series -> Series step, e.g. stripping HTML) runs on the joined
    text before empty rows are dropped, so they are counted right."""
    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    split = split_settings(cfg.get("split") or {})
    stats = dict.fromkeys(("dropped_empty_text", "dropped_missing_label", "dropped_unknown_label",
                           "dropped_unmapped_rating"), 0)
    files, raw_labels, kept = _configured_files(cfg), RawLabels(), []
    for role, key, path in files:
        first, empty, codes = sink.rows, [], []
        for table in read_chunks(path, key, cfg.get("format"), cfg.get("encoding") or "utf-8"):
            rows = _text_and_label(table, cfg, path, clean_text)
            sink.add(rows["text"].to_numpy(dtype=object))
            empty.append((rows["text"] == "").to_numpy(dtype=bool))
            codes.append(raw_labels.encode(rows["label"]))
        count = sink.rows - first
        positions = sample_positions(count, cfg.get("max_rows"), split["seed"])
        empty = np.concatenate(empty or [np.zeros(0, bool)])[positions]
        codes = np.concatenate(codes or [np.zeros(0, np.int64)])[positions]
        stats["rows_read" if key == "path" else f"rows_read_{role}"] = len(positions)
        unlabeled = ~empty & (codes < 0)
        stats["dropped_empty_text"] += int(empty.sum())
        stats["dropped_missing_label"] += int(unlabeled.sum())
        keep = ~empty & ~unlabeled
        if not keep.any():
            raise UserError(f"dataset.{key}={path} has no rows with both text and a label; "
                            "check dataset.text_columns and dataset.label_column.")
        kept.append((role, key, path, first + positions[keep], codes[keep]))
    counts = np.bincount(np.concatenate([codes for *_, codes in kept]), minlength=len(raw_labels.values))
    label_names, classes = _map_labels(raw_labels.series(), counts, cfg.get("label_mapping") or {},
                                       cfg.get("label_column"), stats)
    by_role = {}
    for role, key, path, rows, codes in kept:
        labels = classes[codes]
        mapped = ~np.isnan(labels)
        if not mapped.any():
            raise UserError(f"no row of dataset.{key}={path} has a label in the mapping; check "
                            "dataset.label_column and dataset.label_mapping.")
        by_role[role] = (rows[mapped], labels[mapped].astype(np.int32))
    return assemble(by_role, label_names, split, stats)


class RawLabels:
    """Every distinct raw label string seen, numbered; a row's label is kept as that number
    (-1: no label), so labels are mapped to classes once all rows are read."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}

    def encode(self, labels: pd.Series) -> np.ndarray:
        codes, uniques = pd.factorize(labels, use_na_sentinel=True)
        numbers = np.array([self.values.setdefault(str(value), len(self.values)) for value in uniques], np.int64)
        return np.where(codes < 0, -1, numbers[np.maximum(codes, 0)] if len(numbers) else -1)

    def series(self) -> pd.Series:
        return pd.Series(list(self.values), dtype="string")


def split_settings(split_cfg: dict) -> dict:
    """`dataset.split` with its defaults; each fraction's range is the schema's, their sum is checked here."""
    settings = {"validation_fraction": split_cfg.get("validation_fraction", 0.1),
                "test_fraction": split_cfg.get("test_fraction", 0.2), "seed": split_cfg.get("seed", 42)}
    if settings["validation_fraction"] + settings["test_fraction"] >= 1:
        raise UserError("dataset.split.validation_fraction + test_fraction must be below 1 to leave training rows.")
    return settings


def sample_positions(count: int, max_rows: int | None, seed: int) -> np.ndarray:
    """Positions of a seeded sample of at most `max_rows` of `count` rows, in file order (files are
    often sorted by label); the draw pandas' `DataFrame.sample(n, random_state=seed)` makes."""
    if max_rows is None or count <= max_rows:
        return np.arange(count)
    return np.sort(np.random.RandomState(seed).choice(count, size=max_rows, replace=False))


def sample_rows(frame: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    """A seeded sample of at most `max_rows` rows of a table in memory, in file order."""
    return frame.iloc[sample_positions(len(frame), max_rows, seed)]


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


def assemble(parts: dict[str, tuple[np.ndarray, np.ndarray]], label_names: list[str], split: dict,
             stats: dict[str, int]) -> Resolved:
    """Splits from `parts` (role -> (row numbers, labels)); missing validation/test rows come out of
    train, a stratified seeded share each, every split keeping its rows in file order."""
    parts, (train_rows, train_labels) = dict(parts), parts["train"]
    carve = [role for role in ("validation", "test") if role not in parts]
    pieces = stratified_split(train_labels, [split[f"{role}_fraction"] for role in carve], split["seed"])
    for role, piece in zip(carve, pieces, strict=False):
        if len(piece) == 0:
            raise UserError(f"dataset.split.{role}_fraction={split[f'{role}_fraction']} leaves the {role} split "
                            f"empty ({len(train_rows)} rows to split); increase it.")
        parts[role] = (train_rows[piece], train_labels[piece])
    if len(pieces[-1]) == 0:
        raise UserError("dataset.split.validation_fraction and test_fraction leave no training rows; lower them.")
    parts["train"] = (train_rows[pieces[-1]], train_labels[pieces[-1]])
    return Resolved(rows={role: np.asarray(parts[role][0], np.int64) for role in _ROLES},
                    labels={role: np.asarray(parts[role][1], np.int32) for role in _ROLES},
                    label_names=label_names, stats=stats)


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
    """The whole table in memory (small files: the text source's tables)."""
    return pd.concat(list(read_chunks(path, key, fmt, encoding)), ignore_index=True)


def read_chunks(path: str, key: str, fmt: str | None, encoding: str,
                chunk_rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """The file's rows, `chunk_rows` at a time (at least one frame, with the file's columns, even
    when it has no rows). Compressed files (.gz, .bz2, .xz) are decompressed as they are read."""
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
            import pyarrow.parquet as pq

            table = pq.ParquetFile(path)
            empty = table.schema_arrow.empty_table().to_pandas()
            chunks = (batch.to_pandas() for batch in table.iter_batches(batch_size=chunk_rows))
        elif fmt == "jsonl":
            empty = pd.DataFrame()
            chunks = pd.read_json(path, lines=True, dtype=False, convert_dates=False, encoding=encoding,
                                  chunksize=chunk_rows)
        else:
            separator = "\t" if fmt == "tsv" else ","
            empty = pd.read_csv(path, sep=separator, dtype=str, encoding=encoding, index_col=False, nrows=0)
            chunks = _read_delimited(path, key, separator, encoding, chunk_rows)
        given = False
        for chunk in chunks:
            given = True
            yield chunk
        if not given:
            yield empty
    except UnicodeDecodeError as err:
        raise _decode_error(path, key, encoding, err) from None
    except LookupError:
        raise UserError(f"dataset.encoding={encoding!r} is not a known encoding; use e.g. utf-8 or latin-1.") from None
    except DAMAGED_COMPRESSED as err:
        raise damaged_compressed(path, f"dataset.{key}", err) from None
    except (ValueError, OSError) as err:  # pandas ParserError/EmptyDataError, bad JSON, ArrowInvalid
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"dataset.{key}={path} cannot be read as {fmt} ({reason}); fix the file or set "
                        "dataset.format.") from None


def damaged_compressed(path: str, setting: str, err: BaseException) -> UserError:
    return UserError(f"{setting}={path} is a damaged or cut-short compressed file ({str(err) or type(err).__name__}); "
                     "copy or download it again, or point the setting at the uncompressed file.")


def _read_delimited(path: str, key: str, separator: str, encoding: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """A CSV / TSV whose every row has the header's fields, or one sentence naming the first row that has more.

    pandas refuses a row longer than the first data row ("Expected 2 fields in line 3"), but when
    the first data row itself is longer than the header it silently makes the extra leading field
    the index, and every column shifts by one (the label column then holds the text)."""
    reader = pd.read_csv(path, sep=separator, dtype=str, keep_default_na=False, encoding=encoding, index_col=False,
                         chunksize=chunk_rows)
    with reader:
        while True:
            with warnings.catch_warnings():  # per chunk: the filter must not outlive pandas' parsing
                warnings.simplefilter("error", pd.errors.ParserWarning)  # what pandas says, with index_col=False
                try:
                    chunk = next(reader)
                except StopIteration:
                    return
                except (pd.errors.ParserWarning, pd.errors.ParserError) as err:
                    line, fields, header = _first_long_row(path, separator, encoding)
                    if line is None:
                        raise ValueError(str(err)) from None
                    raise UserError(f"dataset.{key}={path} line {line} has {fields} fields but the header has "
                                    f"{len(header)} ({', '.join(header)}); quote fields that hold a '{separator}' or "
                                    "fix that row.") from None
            yield chunk


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
    """Decode the file again from its start, a block at a time: pandas decodes in chunks, so its
    offset is chunk-relative."""
    import codecs

    decoder, offset = codecs.getincrementaldecoder(encoding)(), 0
    with OPENERS.get(os.path.splitext(path)[1], open)(path, "rb") as handle:
        while block := handle.read(1 << 20):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as found:
                # The decoder keeps an incomplete character from the block before: count it back.
                pending = len(found.object) - len(block)
                err = UnicodeDecodeError(found.encoding, found.object, found.start, found.end, found.reason)
                offset -= pending
                break
            offset += len(block)
    return UserError(f"dataset.{key}={path} is not valid {encoding}: byte 0x{err.object[err.start]:02x} at offset "
                     f"{offset + err.start}; set dataset.encoding to the file's encoding (e.g. latin-1).")


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


def _map_labels(values: pd.Series, counts: np.ndarray, mapping: dict, column: str,
                stats: dict[str, int]) -> tuple[list[str], np.ndarray]:
    """Class names and a float class per distinct raw label (`values`, seen on `counts` kept rows),
    NaN for labels whose rows are dropped (counted) or an error for unknown labels."""
    present = counts > 0
    labels, rows = values[present].reset_index(drop=True), counts[present]
    kind, classes = mapping.get("type", "names"), mapping.get("classes")
    codes = None
    if kind == "integers":
        numbers = _numbers(labels, rows, kind, column)
        if (numbers % 1 != 0).any():
            raise UserError(f"dataset.label_mapping.type=integers but column {column!r} holds "
                            f"{_examples(labels, rows, numbers % 1 != 0)}; use type=ratings or type=names.")
        size = len(classes) if classes else int(numbers.max()) + 1
        names = [str(c) for c in classes] if classes else [str(i) for i in range(size)]
        codes = numbers.where((numbers >= 0) & (numbers < size))
    elif kind == "ratings":
        names, codes = _map_ratings(_numbers(labels, rows, kind, column), classes)
        stats["dropped_unmapped_rating"] += int(rows[codes.isna().to_numpy()].sum())
    else:
        names, codes = _map_names(labels, classes)
        codes = codes.astype(float)
    unknown = codes.isna().to_numpy()
    if kind != "ratings":
        if unknown.any() and not mapping.get("drop_unknown", False):
            raise UserError(f"column {column!r} has labels outside the mapping: {_examples(labels, rows, unknown)}; "
                            "list them in dataset.label_mapping.classes or set dataset.label_mapping.drop_unknown=true "
                            "to drop them.")
        stats["dropped_unknown_label"] += int(rows[unknown].sum())
    classes_of = np.full(len(values), np.nan)
    classes_of[np.flatnonzero(present)] = codes.to_numpy(dtype=float)
    return names, classes_of


def _map_names(labels: pd.Series, classes: list | dict | None) -> tuple[list[str], pd.Series]:
    """Names match case-insensitively; a dict also accepts its listed aliases (`{positive: [pos, 1]}`)."""
    if classes is None:
        names = sorted(labels.unique())
        spelled: dict[str, str] = {}
        for name in names:  # "Positive" beside "positive" is a typo, not a third class
            if spelled.setdefault(name.casefold(), name) != name:
                raise UserError(f"labels {spelled[name.casefold()]!r} and {name!r} differ only in case; list the classes "
                                f"in dataset.label_mapping.classes (e.g. [{', '.join(sorted(spelled))}]), which match "
                                "case-insensitively.")
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


def _numbers(labels: pd.Series, rows: np.ndarray, kind: str, column: str) -> pd.Series:
    numbers = pd.to_numeric(labels.astype(object), errors="coerce")
    if numbers.isna().any():
        raise UserError(f"dataset.label_mapping.type={kind} needs numbers but column {column!r} holds "
                        f"{_examples(labels, rows, numbers.isna())}; use type=names for text labels.")
    return numbers


def _examples(labels: pd.Series, rows: np.ndarray, chosen, limit: int = 10) -> str:
    """The chosen distinct labels, most frequent first, quoted, for an error message."""
    chosen = np.asarray(chosen, bool)
    order = np.argsort(-rows[chosen], kind="stable")
    values = labels[chosen].to_numpy()[order]
    shown = ", ".join(repr(str(v)) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")
