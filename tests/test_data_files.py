"""Local-file and IMDB loaders: every format, every label mapping, every bad input.

Configs start from the real `conf/dataset/*.yaml` files, so a renamed key breaks
these tests too. Files are tiny and written per test; no network, no TensorFlow.
"""

from __future__ import annotations

import gzip
import io
import lzma
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from sentiment_dist.data import load_dataset
from sentiment_dist.data.files import load_files, stratified_split
from sentiment_dist.data.imdb import load_imdb
from sentiment_dist.runtime.errors import UserError

CONF = Path(__file__).resolve().parents[1] / "conf" / "dataset"


def config(name: str = "csv", **overrides):
    """`conf/dataset/<name>.yaml` with dotted-key overrides, as Hydra would compose it."""
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    for key, value in overrides.items():
        OmegaConf.update(cfg, key.replace("__", "."), value, merge=False)
    return cfg


def reviews(n: int = 40, labels=("negative", "positive")) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"review number {i}" for i in range(n)],
                         "label": [labels[i % len(labels)] for i in range(n)]})


def write(frame: pd.DataFrame, path: Path) -> Path:
    name = path.name
    if name.endswith(".parquet"):
        frame.to_parquet(path, index=False)
    elif name.endswith(".jsonl"):
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_csv(path, index=False, sep="\t" if name.endswith(".tsv") else ",")
    return path


def all_texts(data) -> list[str]:
    return sorted(np.concatenate([data.train.texts, data.validation.texts, data.test.texts]).tolist())


def error(cfg, loader=load_files) -> str:
    with pytest.raises(UserError) as info:
        loader(cfg)
    return str(info.value)


# --- formats and files --------------------------------------------------------


@pytest.mark.parametrize("name", ["data.csv", "data.tsv", "data.jsonl", "data.parquet", "data.csv.gz"])
def test_every_format_loads_from_its_extension(tmp_path, name):
    frame = reviews(40)
    frame.loc[0, "text"] = 'quotes "inside", commas\tand tabs'
    data = load_files(config(path=str(write(frame, tmp_path / name))))
    assert data.label_names == ["negative", "positive"]
    assert all_texts(data) == sorted(frame["text"].str.strip())
    assert (len(data.train), len(data.validation), len(data.test)) == (28, 4, 8)
    assert data.train.labels.dtype == np.int32 and data.train.texts.dtype == object
    assert data.stats["rows_read"] == 40


def test_format_key_overrides_the_extension(tmp_path):
    path = write(reviews(), tmp_path / "data.txt")
    assert "dataset.format" in error(config(path=str(path)))
    assert len(load_files(config(path=str(path), format="csv")).train) == 28


def test_dispatcher_reaches_the_file_and_imdb_loaders(tmp_path):
    assert load_dataset(config(path=str(write(reviews(), tmp_path / "d.csv")))).num_classes == 2
    fake = tmp_path / "imdb.csv"
    pd.DataFrame({"review": ["good", "bad"] * 10, "sentiment": ["positive", "negative"] * 10}).to_csv(fake)
    assert load_dataset(config("imdb", path=str(fake))).label_names == ["negative", "positive"]


def test_missing_file_names_path_and_key(tmp_path):
    missing = tmp_path / "nope.csv"
    message = error(config(path=str(missing)))
    assert message == f"dataset.path={missing} does not exist; set dataset.path to a csv, tsv, jsonl or parquet file."
    train = write(reviews(), tmp_path / "train.csv")
    assert f"dataset.test_path={missing} does not exist" in error(config(train_path=str(train), test_path=str(missing)))
    assert f"dataset.path={tmp_path} is a directory" in error(config(path=str(tmp_path)))


def test_no_input_file_or_two_kinds_of_input(tmp_path):
    assert "set dataset.path=FILE" in error(config())
    path = str(write(reviews(), tmp_path / "d.csv"))
    assert "not both" in error(config(path=path, train_path=path))


def test_missing_columns_list_what_exists(tmp_path):
    path = str(write(reviews(), tmp_path / "d.csv"))
    message = error(config(path=path, text_columns=["title", "text"]))
    assert "no column 'title'" in message and "['text', 'label']" in message and "dataset.text_columns" in message
    message = error(config(path=path, label_column="stars"))
    assert "no column 'stars'" in message and "['text', 'label']" in message and "dataset.label_column" in message


def test_non_utf8_bytes_report_file_offset_and_encoding_key(tmp_path):
    prefix = b"text,label\n" + b"a fine review,positive\nplain bad,negative\n" * 20_000  # past pandas' read chunk
    path = tmp_path / "latin.csv"
    path.write_bytes(prefix + "caf\u00e9 au lait,positive\n".encode("latin-1"))
    message = error(config(path=str(path)))
    offset = len(prefix) + 3
    assert message == (f"dataset.path={path} is not valid utf-8: byte 0xe9 at offset {offset}; "
                       "set dataset.encoding to the file's encoding (e.g. latin-1).")
    data = load_files(config(path=str(path), encoding="latin-1"))
    assert "caf\u00e9 au lait" in all_texts(data)
    assert "not a known encoding" in error(config(path=str(path), encoding="klingon"))


def test_non_utf8_jsonl_is_a_user_error(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "ok", "label": "a"}\n{"text": "caf\xe9", "label": "b"}\n')
    assert "byte 0xe9 at offset 42" in error(config(path=str(path)))


@pytest.mark.parametrize("name, content, reason", [
    ("bad.jsonl", b'{"text": "ok", "label": "a"}\n{"text": oops}\n', ""),
    ("bad.parquet", b"not parquet at all", ""),
    ("empty.csv", b"", "No columns to parse"),
])
def test_unparseable_files_are_user_errors(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    message = error(config(path=str(path)))
    assert message.startswith(f"dataset.path={path} cannot be read as ") and reason in message


def damaged(tmp_path: Path, name: str, data: bytes) -> Path:
    """`data` compressed by `name`'s extension, cut in half ("cut") or with bytes flipped in the
    middle ("corrupt"), as a broken download or copy leaves it."""
    packed = bytearray(lzma.compress(data) if name.endswith(".xz") else gzip.compress(data))
    if name.startswith("cut"):
        packed = packed[:len(packed) // 2]
    else:
        middle = len(packed) // 2
        packed[middle:middle + 64] = bytes(b ^ 0xFF for b in packed[middle:middle + 64])
    path = tmp_path / name
    path.write_bytes(bytes(packed))
    return path


@pytest.mark.parametrize("name", ["cut.csv.gz", "corrupt.csv.gz", "cut.csv.xz", "cut.jsonl.gz"])
def test_a_damaged_compressed_file_is_one_sentence(tmp_path, name):
    frame = reviews(4000)
    data = (frame.to_json(orient="records", lines=True) if "jsonl" in name else frame.to_csv(index=False)).encode()
    path = damaged(tmp_path, name, data)
    assert error(config(path=str(path))).startswith(f"dataset.path={path} is a damaged or cut-short compressed file (")


@pytest.mark.parametrize("content, line, fields", [
    (b"text,label\nfine,positive\nthis,has,too,many\n", 3, 4),
    # The first data row longer than the header: pandas would have made its first field the
    # index and shifted every column, so the labels column held the texts.
    (b"text,label\ngood, very good,positive\nbad,negative\n", 2, 3),
    (b'text,label\n"good, very good",positive\nbad,negative\nfine,positive,\n', 4, 3),
])
def test_a_row_with_more_fields_than_the_header_is_refused_by_line(tmp_path, content, line, fields):
    path = tmp_path / "extra.csv"
    path.write_bytes(content)
    assert error(config(path=str(path))) == (
        f"dataset.path={path} line {line} has {fields} fields but the header has 2 (text, label); "
        "quote fields that hold a ',' or fix that row.")


# --- text columns and dropped rows ---------------------------------------------


def test_text_columns_are_joined_and_missing_parts_skipped(tmp_path):
    frame = pd.DataFrame({"title": ["Great", None, "Meh", "  "], "body": ["loved it", "works", None, "fine"],
                          "label": ["pos", "pos", "neg", "neg"]})
    cfg = config(path=str(write(frame, tmp_path / "d.jsonl")), text_columns=["title", "body"], text_separator=" | ",
                 split__validation_fraction=0.25, split__test_fraction=0.25)
    assert all_texts(load_files(cfg)) == sorted(["Great | loved it", "works", "Meh", "fine"])


def test_optional_title_is_prepended_when_present(tmp_path):
    with_title = pd.DataFrame({"title": ["Nice", "Broken"] * 4, "review": ["works well", "died fast"] * 4,
                               "rating": [5, 1] * 4})
    cfg = config("ecommerce", path=str(write(with_title, tmp_path / "t.csv")), split__validation_fraction=0.25,
                 split__test_fraction=0.25)
    assert set(all_texts(load_files(cfg))) == {"Nice. works well", "Broken. died fast"}
    cfg.path = str(write(with_title.drop(columns="title"), tmp_path / "no_title.csv"))
    assert set(all_texts(load_files(cfg))) == {"works well", "died fast"}
    cfg.path = str(write(with_title.drop(columns="review"), tmp_path / "no_review.csv"))
    assert "no column 'review'" in error(cfg)


def test_empty_text_and_missing_labels_are_dropped_and_counted(tmp_path):
    frame = reviews(40)
    frame.loc[[0, 1, 2], "text"] = ["", "   \t", None]
    frame.loc[[3, 4], "label"] = [None, "  "]
    frame.loc[5, "text"] = "12345"  # numbers are text too
    for name in ("d.csv", "d.jsonl", "d.parquet"):
        data = load_files(config(path=str(write(frame, tmp_path / name))))
        assert data.stats["dropped_empty_text"] == 3 and data.stats["dropped_missing_label"] == 2
        assert len(all_texts(data)) == 35 and "12345" in all_texts(data)


def test_file_without_usable_rows(tmp_path):
    train = write(reviews(), tmp_path / "train.csv")
    test = write(pd.DataFrame({"text": ["", " "], "label": ["positive", "negative"]}), tmp_path / "test.csv")
    assert "has no rows with both text and a label" in error(config(train_path=str(train), test_path=str(test)))


def test_max_rows_is_a_seeded_sample(tmp_path):
    cfg = config(path=str(write(reviews(400), tmp_path / "d.csv")), max_rows=100)
    first, second = load_files(cfg), load_files(cfg)
    assert len(all_texts(first)) == 100 and all_texts(first) == all_texts(second)
    assert set(first.train.labels) == {0, 1}
    assert first.stats["rows_read"] == 100


# --- label mappings ------------------------------------------------------------


def test_names_default_to_sorted_distinct_values(tmp_path):
    data = load_files(config(path=str(write(reviews(60, ("pos", "neg", "neutral")), tmp_path / "d.csv"))))
    assert data.label_names == ["neg", "neutral", "pos"]


def test_labels_that_differ_only_in_case_are_refused_unless_the_classes_are_listed(tmp_path):
    path = str(write(reviews(30, ("negative", "positive", "Positive")), tmp_path / "d.csv"))
    assert error(config(path=path)) == ("labels 'Positive' and 'positive' differ only in case; list the classes in "
                                        "dataset.label_mapping.classes (e.g. [negative, positive]), which match "
                                        "case-insensitively.")
    data = load_files(config(path=path, label_mapping__classes=["negative", "positive"]))
    assert data.label_names == ["negative", "positive"]


def test_names_list_sets_order_and_matches_case_insensitively(tmp_path):
    frame = reviews(40, ("Positive", " NEGATIVE "))
    data = load_files(config(path=str(write(frame, tmp_path / "d.csv")),
                             label_mapping__classes=["positive", "negative"]))
    assert data.label_names == ["positive", "negative"]
    texts = np.concatenate([data.train.texts, data.validation.texts, data.test.texts])
    labels = np.concatenate([data.train.labels, data.validation.labels, data.test.labels])
    expected = {f"review number {i}": i % 2 for i in range(40)}
    assert all(expected[t] == label for t, label in zip(texts, labels, strict=True))


def test_names_dict_accepts_aliases(tmp_path):
    frame = reviews(60, ("pos", "1", "negative", "0", "Neg", "POSITIVE"))
    cfg = config(path=str(write(frame, tmp_path / "d.csv")),
                 label_mapping__classes={"negative": ["neg", 0], "positive": ["pos", 1]})
    data = load_files(cfg)
    assert data.label_names == ["negative", "positive"]
    assert np.bincount(np.concatenate([data.train.labels, data.validation.labels, data.test.labels])).tolist() == [30, 30]
    cfg.label_mapping.classes = {"negative": ["neg", "meh"], "positive": ["pos", "meh"]}
    assert "gives 'meh' to both 'negative' and 'positive'" in error(cfg)


def test_unknown_labels_fail_with_examples_or_are_dropped(tmp_path):
    frame = reviews(60)
    frame.loc[:11, "label"] = [f"odd{i}" for i in range(12)]
    frame.loc[12:14, "label"] = "maybe"
    cfg = config(path=str(write(frame, tmp_path / "d.csv")), label_mapping__classes=["negative", "positive"])
    message = error(cfg)
    assert message.startswith("column 'label' has labels outside the mapping: 'maybe', ")
    assert message.endswith("and 3 more; list them in dataset.label_mapping.classes or set "
                            "dataset.label_mapping.drop_unknown=true to drop them.")
    cfg.label_mapping.drop_unknown = True
    data = load_files(cfg)
    assert data.stats["dropped_unknown_label"] == 15 and len(all_texts(data)) == 45


def test_integer_labels(tmp_path):
    frame = reviews(60, (0, 1, 2))
    path = str(write(frame, tmp_path / "d.parquet"))
    data = load_files(config(path=path, label_mapping__type="integers", label_mapping__classes=["neg", "neu", "pos"]))
    assert data.label_names == ["neg", "neu", "pos"] and set(data.train.labels) == {0, 1, 2}
    assert load_files(config(path=path, label_mapping__type="integers")).label_names == ["0", "1", "2"]
    assert "outside the mapping: '2'" in error(config(path=path, label_mapping__type="integers",
                                                      label_mapping__classes=["neg", "pos"]))
    frame["label"] = frame["label"].astype(float)
    frame.loc[0, "label"] = 1.5
    assert "holds '1.5'; use type=ratings" in error(config(path=str(write(frame, tmp_path / "f.csv")),
                                                            label_mapping__type="integers"))


def star_reviews(tmp_path, name="stars.csv") -> str:
    frame = pd.DataFrame({"review": [f"review {i}" for i in range(100)], "rating": [i % 5 + 1 for i in range(100)]})
    return str(write(frame, tmp_path / name))


def test_ratings_binary_drops_three_stars(tmp_path):
    data = load_files(config("ecommerce", path=star_reviews(tmp_path, "stars.jsonl")))
    assert data.label_names == ["negative", "positive"]
    assert data.stats["dropped_unmapped_rating"] == 20 and len(all_texts(data)) == 80
    assert data.stats["dropped_unknown_label"] == 0


@pytest.mark.parametrize("classes, names", [
    ({"negative": [1, 2], "neutral": [3, 3], "positive": [4, 5]}, ["negative", "neutral", "positive"]),
    ({"1": [1, 1], "2": [2, 2], "3": [3, 3], "4": [4, 4], "5": [5, 5]}, ["1", "2", "3", "4", "5"]),
])
def test_ratings_three_and_five_classes(tmp_path, classes, names):
    data = load_files(config("ecommerce", path=star_reviews(tmp_path), label_mapping__classes=classes))
    assert data.label_names == names and data.stats["dropped_unmapped_rating"] == 0
    labels = np.concatenate([data.train.labels, data.validation.labels, data.test.labels])
    assert np.bincount(labels).tolist() == ([40, 20, 40] if len(names) == 3 else [20] * 5)


def test_ratings_errors(tmp_path):
    path = star_reviews(tmp_path)
    assert "overlap" in error(config("ecommerce", path=path,
                                     label_mapping__classes={"negative": [1, 3], "positive": [3, 5]}))
    assert "inclusive range" in error(config("ecommerce", path=path, label_mapping__classes={"negative": [2, 1]}))
    assert "needs classes as {name: [low, high]}" in error(config("ecommerce", path=path, label_mapping__classes=None))
    frame = pd.read_csv(path)
    frame["rating"] = frame["rating"].astype(str)
    frame.loc[0, "rating"] = "five stars"
    message = error(config("ecommerce", path=str(write(frame, tmp_path / "words.csv"))))
    assert message == ("dataset.label_mapping.type=ratings needs numbers but column 'rating' holds 'five stars'; "
                       "use type=names for text labels.")


def test_one_class_loads_for_evaluation(tmp_path):
    """Scoring a file of one class is fine; training on one is refused where a classifier's inputs are
    built (test_store: test_training_data_of_one_class_is_refused_in_one_sentence)."""
    path = str(write(reviews(40, ("positive",)), tmp_path / "d.csv"))
    data = load_files(config(path=path, label_mapping__classes=["negative", "positive"]))
    assert data.label_names == ["negative", "positive"] and set(data.test.labels) == {1}


# --- splits --------------------------------------------------------------------


def test_split_is_deterministic_stratified_and_complete(tmp_path):
    path = str(write(reviews(200, ("a", "b", "b", "b")), tmp_path / "d.csv"))
    first, again = load_files(config(path=path)), load_files(config(path=path))
    other = load_files(config(path=path, split__seed=7))
    for split in ("train", "validation", "test"):
        assert getattr(first, split).texts.tolist() == getattr(again, split).texts.tolist()
    assert first.test.texts.tolist() != other.test.texts.tolist()
    assert (len(first.train), len(first.validation), len(first.test)) == (140, 20, 40)
    assert np.bincount(first.validation.labels).tolist() == [5, 15]  # class shares kept
    assert np.bincount(first.test.labels).tolist() == [10, 30]
    assert len(set(all_texts(first))) == 200


def test_stratified_split_keeps_rare_classes_in_every_part():
    labels = np.array([0] * 90 + [1] * 10)
    test, validation, train = stratified_split(labels, [0.2, 0.1], seed=0)
    assert [len(test), len(validation), len(train)] == [20, 10, 70]
    assert [int(labels[part].sum()) for part in (test, validation, train)] == [2, 1, 7]
    assert sorted(np.concatenate([test, validation, train]).tolist()) == list(range(100))


def test_fractions_that_leave_no_training_rows(tmp_path):
    """Each fraction's range is the schema's (tests/test_configs.py); their sum is checked here."""
    overrides = {"split__test_fraction": 0.6, "split__validation_fraction": 0.4}
    assert "must be below 1" in error(config(path=str(write(reviews(), tmp_path / "d.csv")), **overrides))


def test_empty_split_names_the_fraction_to_increase(tmp_path):
    path = str(write(reviews(8), tmp_path / "d.csv"))
    assert error(config(path=path, split__validation_fraction=0.0)) == (
        "dataset.split.validation_fraction=0.0 leaves the validation split empty (8 rows to split); increase it.")
    assert "dataset.split.test_fraction=0.05 leaves the test split empty" in error(
        config(path=path, split__test_fraction=0.05))
    assert error(config(path=path, split__validation_fraction=0.45, split__test_fraction=0.45)) == (
        "dataset.split.validation_fraction and test_fraction leave no training rows; lower them.")


def test_explicit_split_files_are_used_as_given(tmp_path):
    train = write(reviews(30), tmp_path / "train.csv")
    validation = write(reviews(6).assign(text=lambda f: "val " + f["text"]), tmp_path / "val.jsonl")
    test = write(reviews(10).assign(text=lambda f: "test " + f["text"]), tmp_path / "test.parquet")
    data = load_files(config(train_path=str(train), validation_path=str(validation), test_path=str(test)))
    assert (len(data.train), len(data.validation), len(data.test)) == (30, 6, 10)
    assert all(t.startswith("val ") for t in data.validation.texts)
    assert all(t.startswith("test ") for t in data.test.texts)
    assert data.stats == {"dropped_empty_text": 0, "dropped_missing_label": 0, "dropped_unknown_label": 0,
                          "dropped_unmapped_rating": 0, "rows_read_train": 30, "rows_read_validation": 6,
                          "rows_read_test": 10}


def test_missing_split_files_are_carved_from_train(tmp_path):
    train = write(reviews(40), tmp_path / "train.csv")
    test = write(reviews(10).assign(text=lambda f: "test " + f["text"]), tmp_path / "test.csv")
    data = load_files(config(train_path=str(train), test_path=str(test)))
    assert (len(data.train), len(data.validation), len(data.test)) == (36, 4, 10)  # 10% of train
    assert not any(t.startswith("test ") for t in data.validation.texts)
    data = load_files(config(train_path=str(train)))
    assert (len(data.train), len(data.validation), len(data.test)) == (28, 4, 8)


# --- IMDB ----------------------------------------------------------------------

IMDB_REVIEWS = {
    ("train", "pos"): ["A gem.<br /><br />Loved it", "Great cast", "Superb", "Wonderful"],
    ("train", "neg"): ["Dull<br/>and long", "Awful", "Boring", "Terrible plot", "Weak"],
    ("test", "pos"): ["Brilliant", "Moving<br />story"],
    ("test", "neg"): ["Bad", "Poor", "<br />"],
    ("unsup", ""): ["unlabelled review"],
}


def write_imdb_dir(root: Path) -> Path:
    for (part, label), texts in IMDB_REVIEWS.items():
        folder = root / "aclImdb" / part / label
        folder.mkdir(parents=True)
        for i, text in enumerate(texts):
            (folder / f"{i}_{7 if label == 'pos' else 2}.txt").write_text(text, encoding="utf-8")
    (root / "aclImdb" / "README").write_text("not a review")
    return root / "aclImdb"


def write_imdb_tar(directory: Path, path: Path) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        archive.add(directory, arcname="aclImdb")
    return path


def imdb_cfg(path, **overrides):
    return config("imdb", path=str(path), split__validation_fraction=0.25, **overrides)


def test_imdb_directory_keeps_official_split_and_strips_breaks(tmp_path):
    data = load_imdb(imdb_cfg(write_imdb_dir(tmp_path)))
    assert data.label_names == ["negative", "positive"]
    assert (len(data.train), len(data.validation), len(data.test)) == (7, 2, 4)
    assert sorted(data.test.texts.tolist()) == ["Bad", "Brilliant", "Moving story", "Poor"]
    assert data.stats == {"dropped_empty_text": 1, "rows_read_train": 9, "rows_read_test": 5}
    train_texts = set(data.train.texts) | set(data.validation.texts)
    assert "A gem. Loved it" in train_texts and "Dull and long" in train_texts
    assert "unlabelled review" not in train_texts
    labels = dict(zip(data.test.texts, data.test.labels, strict=True))
    assert labels["Brilliant"] == 1 and labels["Bad"] == 0
    assert np.bincount(data.validation.labels).tolist() == [1, 1]


def test_imdb_parent_directory_and_archive_give_the_same_data(tmp_path):
    directory = write_imdb_dir(tmp_path / "extracted")
    from_dir = load_imdb(imdb_cfg(directory))
    for path in (tmp_path / "extracted", write_imdb_tar(directory, tmp_path / "aclImdb_v1.tar.gz")):
        other = load_imdb(imdb_cfg(path))
        for split in ("train", "validation", "test"):
            assert getattr(other, split).texts.tolist() == getattr(from_dir, split).texts.tolist()
            assert getattr(other, split).labels.tolist() == getattr(from_dir, split).labels.tolist()


def test_imdb_csv_gets_a_seeded_half_split(tmp_path):
    path = tmp_path / "IMDB Dataset.csv"
    pd.DataFrame({"review": [f"Review {i}.<br /><br />The end" for i in range(80)],
                  "sentiment": ["positive", "negative"] * 40}).to_csv(path, index=False)
    data = load_imdb(config("imdb", path=str(path)))
    assert (len(data.train), len(data.validation), len(data.test)) == (36, 4, 40)
    assert data.label_names == ["negative", "positive"]
    assert all("<br" not in t and t.endswith(". The end") for t in all_texts(data))
    assert all_texts(load_imdb(config("imdb", path=str(path), max_rows=20))).__len__() == 20


def test_imdb_bad_inputs(tmp_path):
    missing = tmp_path / "nowhere"
    assert error(imdb_cfg(missing), load_imdb).startswith(f"dataset.path={missing} does not exist; set dataset.path")
    directory = write_imdb_dir(tmp_path / "x")
    (directory / "test" / "neg").rename(directory / "test" / "negative")
    assert "is not an IMDB folder" in error(imdb_cfg(directory), load_imdb)
    damaged = tmp_path / "damaged.tar.gz"
    good = write_imdb_tar(write_imdb_dir(tmp_path / "y"), tmp_path / "good.tar.gz").read_bytes()
    damaged.write_bytes(good[: len(good) // 2])
    assert "is a damaged archive" in error(imdb_cfg(damaged), load_imdb)
    no_test = tmp_path / "no_test.tar"
    with tarfile.open(no_test, "w") as archive:
        data = b"fine movie"
        member = tarfile.TarInfo("aclImdb/train/pos/0_9.txt")
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data))
    assert "holds no test/pos or test/neg reviews" in error(imdb_cfg(no_test), load_imdb)


def test_loaders_do_not_import_tensorflow():
    """Loading data must not pay TensorFlow's start-up (the download path imports Keras lazily)."""
    code = ("import sys, sentiment_dist.data.files, sentiment_dist.data.imdb; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
