"""Prepared stores: a dataset tokenized once, memory-mapped by every rank of every job after.

`python -m sentiment_dist.prepare` (or `dataset.prepared=auto`) reads the dataset's files in
chunks, tokenizes them in parallel worker processes and writes a directory:

    manifest.json            counts, label names, what it was made from (the dataset config, the
                             vocabulary request, each input file's size, time and SHA-256), the
                             SHA-256 and size of every file below, the project version
    vocabulary.txt           the vocabulary the ids index (as the model's TextVectorization holds it)
    <split>.ids.npy          every token id of every text, concatenated (uint16 when they fit)
    <split>.offsets.npy      int64 [n + 1]: text i is ids[offsets[i]:offsets[i + 1]] (its length)
    <split>.labels.npy       int32 [n]
    <split>.text.npy         the texts' UTF-8 bytes, concatenated (for TF-IDF baselines and
    <split>.text_offsets.npy  augmentation, which need words, not ids)

for the splits `train`, `validation` and `test`. Every token of every text is kept, so any
`model.sequence_length` reads the same store (a row is cut when read). NumPy's `.npy` files are
memory-mapped with `np.load(mmap_mode="r")`: a rank's memory holds the pages of the rows it
gathers, not the corpus (numpy memmap over Arrow or ArrayRecord: the pipeline gathers rows by
index into padded int32 batches, which is one vectorised NumPy gather over flat arrays; Arrow's
list arrays give the same layout with a conversion step, ArrayRecord reads records, not ranges).

The directory is written under a temporary name beside its final one and renamed when whole,
so a killed or disk-full prepare leaves nothing that looks finished. Per-example weights are
not stored: they are class weights (`trainer.class_weight`), a training choice computed from
the labels when a job starts, so one store serves any choice.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig, OmegaConf

from sentiment_dist import __version__
from sentiment_dist.data.tokenizer import (
    PUNCTUATION,
    STANDARDIZE,
    VocabularyRequest,
    WordTable,
    vocabulary_hash,
    words,
)
from sentiment_dist.data.tokens import TokenizedSplit
from sentiment_dist.data.types import Resolved
from sentiment_dist.runtime.errors import UserError
from sentiment_dist.runtime.io import (
    atomic_write_json,
    atomic_write_text,
    disk_error,
    first_difference,
    jsonable,
    remedy,
)

log = logging.getLogger(__name__)

STORE_FORMAT = 2  # 2: the manifest carries its own hash
MANIFEST = "manifest.json"
MANIFEST_HASH = "manifest_sha256"
VOCABULARY = "vocabulary.txt"
SPLITS = ("train", "validation", "test")
TOKENIZER = {"standardize": STANDARDIZE, "punctuation": PUNCTUATION, "split": "whitespace", "lower": "ascii"}
TRAINING_FILES = ("ids", "offsets", "labels")  # what a job maps (texts only when asked for)
PATH_KEYS = ("path", "train_path", "validation_path", "test_path")
_GATHER_ROWS = 1 << 20  # rows gathered at a time when writing the splits: bounded memory


def dataset_identity(cfg: DictConfig | dict) -> dict:
    """A dataset config as a store records it: resolved, paths absolute, `prepared` left out (it
    says where the store is, not what is in it)."""
    plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True) if isinstance(cfg, DictConfig) else dict(cfg)

    def normal(node):
        if isinstance(node, dict):
            return {key: (os.path.abspath(os.path.expanduser(value)) if key in PATH_KEYS and isinstance(value, str)
                          else normal(value)) for key, value in node.items() if key != "prepared"}
        if isinstance(node, list):
            return [normal(value) for value in node]
        return node

    return normal(plain)


def input_files(identity: dict) -> list[str]:
    """Every file or directory a dataset reads (a mixture's sources' too)."""
    found = [identity[key] for key in PATH_KEYS if isinstance(identity.get(key), str)]
    for source in (identity.get("sources") or {}).values():
        found += input_files(source.get("dataset") or {})
    return found


def fingerprint(path: str, content: bool) -> dict:
    """Size and modification time of a file (and, with `content`, its SHA-256), or of every file
    under a directory."""
    if os.path.isdir(path):
        listing = sorted((os.path.relpath(p, path), os.path.getsize(p), int(os.path.getmtime(p)))
                         for p in glob.glob(os.path.join(path, "**", "*"), recursive=True) if os.path.isfile(p))
        return {"path": path, "listing_sha256": hashlib.sha256(json.dumps(listing).encode()).hexdigest()}
    if not os.path.isfile(path):
        return {"path": path, "missing": True}
    stat = os.stat(path)
    found = {"path": path, "bytes": stat.st_size, "mtime": int(stat.st_mtime)}
    if content:
        found["sha256"] = file_sha256(path)
    return found


def file_sha256(path: str) -> str:
    """Read with `read`, not mapped: hashing a store does not make its pages this process's memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def store_key(identity: dict, request: VocabularyRequest, labels: bool, inputs: list[dict]) -> str:
    """What identifies a store's content before it is made: the dataset (read with labels, or as
    texts only for a language model), the vocabulary request, the inputs' bytes (SHA-256) and
    the tokenizer."""
    described = {"format": STORE_FORMAT, "dataset": identity, "labels": labels, "vocabulary": request.describe(),
                 "tokenizer": TOKENIZER,
                 "inputs": [{k: v for k, v in found.items() if k not in ("mtime",)} for found in inputs]}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def labels_matter(cfg: DictConfig | dict, labels: bool) -> bool:
    """Whether the dataset is read with labels: only a mixture (which maps its sources' classes)
    and unlabelled text read differently for a language model; any other source is the same data."""
    return labels or cfg.get("source") not in ("mixture", "text")


# -- writing ----------------------------------------------------------------------------------


class StoreWriter:
    """The `TextSink` of a prepare: each chunk of texts is tokenized (in `workers` processes, in
    order) into word numbers and written, with the texts, to scratch files in `directory`."""

    def __init__(self, directory: str, workers: int):
        self.directory, self.rows = directory, 0
        self.table = WordTable()
        self.word_file = open(os.path.join(directory, "_words.bin"), "wb")
        self.text_file = open(os.path.join(directory, "_texts.bin"), "wb")
        self.word_counts: list[np.ndarray] = []  # words per row, per chunk
        self.text_bytes: list[np.ndarray] = []  # UTF-8 bytes per row, per chunk
        self.pending: deque = deque()
        self.pool = None
        self.workers = workers
        if workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn: the parent may hold TensorFlow's threads, which fork does not copy safely. Each worker
            # is started now, with a word to split, so that it is ready when the first chunk is read.
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            for _ in range(workers):
                self.pool.submit(words, np.array(["ready"], dtype=object))

    def add(self, texts: np.ndarray) -> None:
        import pyarrow as pa

        texts = np.asarray(texts, dtype=object)
        array = pa.array(texts, type=pa.large_string())
        offsets = np.frombuffer(array.buffers()[1], np.int64, len(array) + 1, array.offset * 8)
        data = array.buffers()[2]
        if data is not None and offsets[-1] > offsets[0]:
            self.text_file.write(memoryview(data)[offsets[0] : offsets[-1]])
        self.text_bytes.append(np.diff(offsets))
        self.rows += len(texts)
        if self.pool is None:
            self._write(words(array))
            return
        self.pending.append(self.pool.submit(words, array))  # Arrow: sent as buffers, not as a million str objects
        while len(self.pending) > 2 * self.workers or (self.pending and self.pending[0].done()):
            self._write(self.pending.popleft().result())

    def _write(self, chunk) -> None:
        numbers = self.table.add(chunk)
        if len(self.table) >= 2**32 - 1:
            raise UserError("the corpus has over four billion distinct words; it is not text a vocabulary can cover.")
        self.word_file.write(numbers.astype(np.uint32).tobytes())
        self.word_counts.append(chunk.lengths.astype(np.int64))

    def close(self) -> None:
        while self.pending:
            self._write(self.pending.popleft().result())
        for handle in (self.word_file, self.text_file):
            handle.close()
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None

    def abort(self) -> None:
        for future in self.pending:
            future.cancel()
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None
        for handle in (self.word_file, self.text_file):
            handle.close()

    def finish(self, resolved: Resolved, request: VocabularyRequest) -> tuple[list[str], dict]:
        """Choose the vocabulary from the training rows' words, then write each split's ids, offsets,
        labels and texts in its row order. Returns the vocabulary and each split's counts."""
        word_rows = _Ragged(os.path.join(self.directory, "_words.bin"), np.uint32, _joined(self.word_counts))
        text_rows = _Ragged(os.path.join(self.directory, "_texts.bin"), np.uint8, _joined(self.text_bytes))
        counts = np.zeros(len(self.table), np.int64)
        train = resolved.rows["train"]
        for begin in range(0, len(train), _GATHER_ROWS):
            counts += np.bincount(word_rows.gather(train[begin : begin + _GATHER_ROWS]), minlength=len(self.table))
        vocabulary = request.choose(self.table.words(), counts)
        ids_of = self.table.ids_for(vocabulary)
        dtype = np.uint16 if len(vocabulary) <= np.iinfo(np.uint16).max + 1 else np.int32
        splits = {}
        for role in SPLITS:
            rows = resolved.rows[role]
            tokens = word_rows.write(self.directory, role, "ids", "offsets", rows, dtype, ids_of)
            text_rows.write(self.directory, role, "text", "text_offsets", rows, np.uint8)
            np.save(os.path.join(self.directory, f"{role}.labels.npy"), np.asarray(resolved.labels[role], np.int32))
            splits[role] = {"examples": int(len(rows)), "tokens": int(tokens)}
        for name in ("_words.bin", "_texts.bin"):
            os.remove(os.path.join(self.directory, name))
        return vocabulary, splits


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


class _Ragged:
    """Rows of a scratch file of values, given each row's length in file order: an Arrow list
    array over the memory-mapped file, so gathering rows is Arrow's `take` (no index per value)."""

    def __init__(self, path: str, dtype, lengths: np.ndarray):
        import pyarrow as pa

        self.lengths = np.asarray(lengths, np.int64)
        offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        values = np.memmap(path, dtype=dtype, mode="r", shape=(int(offsets[-1]),)) if offsets[-1] else np.zeros(0, dtype)
        self.rows = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """The values of `rows`, concatenated."""
        import pyarrow as pa

        return self.rows.take(pa.array(np.asarray(rows, np.int64))).flatten().to_numpy()

    def write(self, directory: str, role: str, values_name: str, offsets_name: str, rows: np.ndarray, dtype,
              table: np.ndarray | None = None) -> int:
        """`<role>.<values_name>.npy` (the rows' values, through `table`) and `<role>.<offsets_name>.npy`."""
        lengths = self.lengths[rows]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        np.save(os.path.join(directory, f"{role}.{offsets_name}.npy"), offsets)
        out = np.lib.format.open_memmap(os.path.join(directory, f"{role}.{values_name}.npy"), mode="w+",
                                        dtype=dtype, shape=(int(offsets[-1]),))
        for begin in range(0, len(rows), _GATHER_ROWS):
            values = self.gather(rows[begin : begin + _GATHER_ROWS])
            at = offsets[begin]
            out[at : at + len(values)] = table[values] if table is not None else values
        out.flush()
        del out
        return int(offsets[-1])


def prepare(cfg: DictConfig, request: VocabularyRequest, out: str | None, cache_dir: str, workers: int,
            resolve: Callable[[DictConfig, object], Resolved], labels: bool = True) -> tuple[str, bool]:
    """The store for `cfg` (a dataset config) and `request` at `out` (default: in `cache_dir`, named by
    its key), reused when a finished one with the same key is there. Returns (path, reused).

    `resolve(cfg, sink)` reads the dataset into a sink (`sentiment_dist.data.resolve_dataset`)."""
    identity, labels = dataset_identity(cfg), labels_matter(cfg, labels)
    inputs = [fingerprint(path, content=True) for path in input_files(identity)]
    key = store_key(identity, request, labels, inputs)
    path = out or os.path.join(cache_dir, f"{identity.get('name', 'dataset')}-{key[:16]}")
    if os.path.isfile(os.path.join(path, MANIFEST)):
        existing = read_manifest(path)
        if existing.get("key") == key:
            return path, True
        raise UserError(f"{path} already holds a prepared store of other data or another vocabulary; "
                        "choose another prepare.out, or delete it.")
    if os.path.lexists(path) and not (os.path.isdir(path) and not os.listdir(path)):
        # Refused before the work, not when the finished store cannot be renamed onto it.
        raise UserError(f"{path} already exists and is not a prepared store; set prepare.out to a new directory "
                        "(prepare creates it), or remove that one.")
    parent = os.path.dirname(os.path.abspath(path))
    _remove_abandoned(path)
    temp = f"{os.path.abspath(path)}.tmp-{os.getpid()}"
    started, writer = time.perf_counter(), None
    try:
        os.makedirs(parent, exist_ok=True)
        os.makedirs(temp)
        writer = StoreWriter(temp, workers)
        resolved = resolve(cfg, writer)
        writer.close()
        vocabulary, splits = writer.finish(resolved, request)
        atomic_write_text(os.path.join(temp, VOCABULARY), "\n".join(vocabulary) + "\n")
        files = {name: {"bytes": os.path.getsize(os.path.join(temp, name)), "sha256": file_sha256(os.path.join(temp, name))}
                 for name in sorted(os.listdir(temp)) if name.endswith(".npy") or name == VOCABULARY}
        manifest = {
            "format": STORE_FORMAT, "project_version": __version__, "key": key, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "dataset": identity, "labels": labels, "inputs": inputs, "tokenizer": TOKENIZER,
            "vocabulary": {"request": request.describe(), "size": len(vocabulary), "sha256": vocabulary_hash(vocabulary)},
            "label_names": list(resolved.label_names), "splits": splits, "stats": resolved.stats,
            "sources": resolved.sources, "files": files,
            "content_sha256": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest(),
            "workers": workers, "prepare_seconds": round(time.perf_counter() - started, 2),
        }
        manifest = json.loads(json.dumps(manifest, default=jsonable))  # as it will be read back
        manifest[MANIFEST_HASH] = manifest_sha256(manifest)
        atomic_write_json(os.path.join(temp, MANIFEST), manifest)
        try:
            os.rename(temp, path)
        except OSError as err:  # another prepare of the same key finished first: use it
            if not (err.errno in (errno.ENOTEMPTY, errno.EEXIST) and read_manifest(path).get("key") == key):
                raise
            shutil.rmtree(temp, ignore_errors=True)
            return path, True
    except BaseException as err:
        if writer is not None:
            writer.abort()
        shutil.rmtree(temp, ignore_errors=True)
        reason = disk_error(err)
        if reason:
            raise UserError(f"cannot write the prepared store {path} ({reason}); {remedy(reason)} or set prepare.out "
                            "(or paths.prepared_dir) to another place, then prepare again.") from None
        raise
    return path, False


def _remove_abandoned(path: str) -> None:
    """Scratch dirs of prepares of `path` that were killed (their process is gone)."""
    for temp in glob.glob(f"{os.path.abspath(path)}.tmp-*"):
        try:
            os.kill(int(temp.rsplit("-", 1)[1]), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(temp, ignore_errors=True)
        except PermissionError:
            pass


# -- reading ----------------------------------------------------------------------------------


def read_manifest(path: str) -> dict:
    manifest = os.path.join(path, MANIFEST)
    if os.path.isfile(path):
        raise UserError(f"dataset.prepared={path} is a file; set it to the directory `python -m sentiment_dist.prepare` "
                        "wrote (it prints the path), or to auto.")
    if not os.path.isdir(path):
        raise UserError(f"dataset.prepared={path} does not exist; run `python -m sentiment_dist.prepare` with this "
                        "run's dataset and model settings, or set dataset.prepared=auto.")
    if not os.path.isfile(manifest):
        raise UserError(f"dataset.prepared={path} has no {MANIFEST}: it is not a finished prepared store (a prepare "
                        "that was stopped leaves none); prepare it again.")
    try:
        with open(manifest, encoding="utf-8") as handle:
            found = json.load(handle)
    except (OSError, ValueError) as err:
        raise UserError(f"{manifest} cannot be read ({type(err).__name__}); prepare the store again.") from None
    if not isinstance(found, dict):
        raise UserError(f"{manifest} is not a prepared store's manifest (it holds a {type(found).__name__}); prepare "
                        "the store again.")
    if found.get("format") != STORE_FORMAT:
        raise UserError(f"{path} is a prepared store of format {found.get('format')}, this version reads format "
                        f"{STORE_FORMAT}; prepare it again.")
    if found.get(MANIFEST_HASH) != manifest_sha256(found):
        # Its counts and label names are trusted from here on: an edited one would train a wrong head.
        raise UserError(f"the prepared store {path} is damaged: {MANIFEST} was changed after prepare wrote it (it no "
                        "longer matches its own SHA-256); prepare the store again.")
    return found


def manifest_sha256(manifest: dict) -> str:
    """The SHA-256 of everything in `manifest` but this hash itself."""
    fields = {key: value for key, value in manifest.items() if key != MANIFEST_HASH}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


@dataclass
class PreparedStore:
    path: str
    manifest: dict

    @classmethod
    def open(cls, path: str) -> PreparedStore:
        """The store at `path` with every file of its manifest present at its recorded size (cheap:
        done on every rank); `verify` checks the content."""
        store = cls(os.path.abspath(path), read_manifest(path))
        for name, expected in store.manifest["files"].items():
            file = os.path.join(store.path, name)
            size = os.path.getsize(file) if os.path.isfile(file) else None
            if size != expected["bytes"]:
                found = "is missing" if size is None else f"has {size} bytes, its manifest says {expected['bytes']}"
                raise UserError(f"the prepared store {store.path} is damaged: {name} {found}; prepare it again.")
        return store

    def verify(self, names: list[str] | None = None) -> None:
        """Every file (or `names`) against its manifest's SHA-256: a corrupted store is refused
        before the first step, not found by a crash mid-epoch."""
        for name, expected in self.manifest["files"].items():
            if names is not None and name not in names:
                continue
            if file_sha256(os.path.join(self.path, name)) != expected["sha256"]:
                raise UserError(f"the prepared store {self.path} is damaged: {name} does not match the SHA-256 its "
                                "manifest records; prepare it again.")

    def training_files(self) -> list[str]:
        return [VOCABULARY] + [f"{role}.{kind}.npy" for role in SPLITS for kind in TRAINING_FILES]

    @property
    def vocabulary(self) -> list[str]:
        with open(os.path.join(self.path, VOCABULARY), encoding="utf-8") as handle:
            return handle.read().split("\n")[:-1]

    @property
    def label_names(self) -> list[str]:
        return list(self.manifest["label_names"])

    def _array(self, name: str) -> np.ndarray:
        return np.load(os.path.join(self.path, name), mmap_mode="r")

    def split(self, role: str, width: int) -> TokenizedSplit:
        """The split's rows read at `width`, memory-mapped."""
        offsets = self._array(f"{role}.offsets.npy")
        return TokenizedSplit(self._array(f"{role}.ids.npy"), offsets[:-1], np.diff(offsets).astype(np.int32),
                              np.asarray(self._array(f"{role}.labels.npy")), width)

    def texts(self, role: str) -> np.ndarray:
        """The split's texts as strings (small splits: a transfer report's target)."""
        self.verify([f"{role}.text.npy", f"{role}.text_offsets.npy"])
        import pyarrow as pa

        data, offsets = self._array(f"{role}.text.npy"), self._array(f"{role}.text_offsets.npy")
        array = pa.LargeStringArray.from_buffers(len(offsets) - 1, pa.py_buffer(np.ascontiguousarray(offsets)),
                                                 pa.py_buffer(np.ascontiguousarray(data)))
        return array.to_numpy(zero_copy_only=False).astype(object)

    def check(self, cfg: DictConfig, request: VocabularyRequest, labels: bool = True) -> None:
        """One sentence when this store is not what a job with dataset `cfg` and vocabulary `request`
        would read: another dataset (or the same one configured otherwise), another vocabulary, or
        input files that changed since."""
        identity, recorded = dataset_identity(cfg), self.manifest["dataset"]
        if identity != recorded:
            key, mine, theirs = first_difference(identity, recorded, "dataset")
            raise UserError(f"dataset.prepared={self.path} was prepared from another dataset config: {key} is {theirs!r} "
                            f"there and {mine!r} here; prepare the store again for this dataset, or set "
                            "dataset.prepared=auto.")
        labels = labels_matter(cfg, labels)
        if self.manifest["labels"] != labels:
            made_for, wanted_for = ("a classifier", "a language model") if labels is False else ("a language model", "a classifier")
            raise UserError(f"dataset.prepared={self.path} was prepared for {made_for} (prepare.labels="
                            f"{str(self.manifest['labels']).lower()}), this job trains {wanted_for}; prepare it again "
                            f"with prepare.labels={str(labels).lower()}.")
        wanted, made = request.describe(), self.manifest["vocabulary"]["request"]
        # A given vocabulary, kept as it is, is served by any store whose vocabulary it is (a model
        # evaluated on the store it was trained from).
        same = request.base is not None and not request.extend and \
            self.manifest["vocabulary"]["sha256"] == vocabulary_hash(list(request.base))
        if wanted != made and not same:
            raise UserError(f"dataset.prepared={self.path} holds ids of another vocabulary (one {_describe(made)}), "
                            f"and this run needs one {_describe(wanted)}; prepare the store again with this run's settings, or set "
                            "dataset.prepared=auto.")
        for recorded_input in self.manifest["inputs"]:
            now = fingerprint(recorded_input["path"], content=False)
            if any(now.get(k) != recorded_input.get(k) for k in ("bytes", "mtime", "missing", "listing_sha256")):
                raise UserError(f"{recorded_input['path']} changed since the store {self.path} was prepared from it; "
                                "prepare the store again (or set dataset.prepared=auto).")

    def summary(self) -> dict:
        splits = self.manifest["splits"]
        return {**{role: splits[role]["examples"] for role in SPLITS}, "stats": dict(self.manifest["stats"]),
                "sources": dict(self.manifest["sources"]), "prepared": self.path}


def _describe(request: dict) -> str:
    if request.get("built_from"):
        return f"built from the training split with model.vocab_size={request['vocab_size']}"
    return f"of {request['base_size']} given tokens (sha256 {request['base_sha256'][:12]}) extended by " \
           f"up to {request['extend']}"
