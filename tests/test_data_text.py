"""Unlabelled text for language-model pretraining (`dataset=text`): a file with
one text per line (plain or compressed), a directory of .txt files, a table's
text columns; seeded disjoint held-out splits; one sentence for every bad input,
and for a classifier job given text without labels."""

from __future__ import annotations

import gzip
import re

import pandas as pd
import pytest
from conftest import module, run
from test_data_files import config

from sentiment_dist.data import load_dataset
from sentiment_dist.runtime.errors import UserError

LINES = [f"unlabelled review number {i} about a kettle" for i in range(100)]


def every_text(data) -> list[str]:
    return [t for split in (data.train, data.validation, data.test) for t in split.texts]


def test_a_text_file_gives_one_text_per_line_and_drops_empty_ones(tmp_path):
    path = tmp_path / "reviews.txt"
    path.write_text("\n".join(LINES[:50] + ["", "   "] + LINES[50:]) + "\n", encoding="utf-8")
    data = load_dataset(config("text", path=str(path)), labels=False)
    assert sorted(every_text(data)) == sorted(LINES)
    assert (len(data.train), len(data.validation), len(data.test)) == (90, 5, 5)
    assert data.stats == {"rows_read": 103, "dropped_empty_text": 3}  # two blank lines and the final newline
    assert data.label_names == [] and not data.train.labels.any()
    assert not set(data.train.texts) & set(data.validation.texts) and not set(data.train.texts) & set(data.test.texts)
    assert not set(data.validation.texts) & set(data.test.texts)
    again = load_dataset(config("text", path=str(path)), labels=False)
    assert list(again.test.texts) == list(data.test.texts)  # seeded
    other = load_dataset(config("text", path=str(path), split__seed=7), labels=False)
    assert list(other.test.texts) != list(data.test.texts)


def test_compressed_files_directories_and_tables(tmp_path):
    with gzip.open(tmp_path / "reviews.txt.gz", "wt", encoding="utf-8") as handle:
        handle.write("\n".join(LINES))
    folder = tmp_path / "unsup" / "part"
    folder.mkdir(parents=True)
    for i, line in enumerate(LINES[:40]):  # one review per file, line breaks inside kept
        (folder / f"{i}_0.txt").write_text(f"{line}\nsecond line")
    (folder / "notes.md").write_text("not a review")
    pd.DataFrame({"title": ["Great"] * 40, "body": LINES[:40]}).to_json(tmp_path / "reviews.jsonl", orient="records", lines=True)

    assert sorted(every_text(load_dataset(config("text", path=str(tmp_path / "reviews.txt.gz")), labels=False))) == sorted(LINES)
    from_folder = every_text(load_dataset(config("text", path=str(tmp_path / "unsup")), labels=False))
    assert sorted(from_folder) == sorted(f"{line}\nsecond line" for line in LINES[:40])
    table = config("text", path=str(tmp_path / "reviews.jsonl"), text_columns=["title", "body"], text_separator=" - ")
    assert sorted(every_text(load_dataset(table, labels=False))) == sorted(f"Great - {line}" for line in LINES[:40])


@pytest.mark.parametrize(
    "setup,overrides,message",
    [
        (None, {"path": None}, "no input text: set dataset.path"),
        (None, {"path": "missing.txt"}, "missing.txt does not exist"),
        ("empty_dir", {}, "is a directory without .txt files"),
        ("latin1", {}, "is not valid utf-8 (byte 0xe9); set dataset.encoding"),
        ("jsonl", {"text_columns": ["review"]}, "has no column 'review'"),
        ("three_lines", {}, "leaves no validation text"),
        ("cut_gz", {}, "is a damaged or cut-short compressed file (Compressed file ended"),
    ],
)
def test_bad_text_input_is_one_sentence(tmp_path, setup, overrides, message):
    path = tmp_path / "input"
    if setup == "empty_dir":
        path.mkdir()
    elif setup == "latin1":
        path = tmp_path / "r.txt"
        path.write_bytes("caf\u00e9 au lait\n".encode("latin-1"))
    elif setup == "jsonl":
        path = tmp_path / "r.jsonl"
        pd.DataFrame({"text": LINES[:5]}).to_json(path, orient="records", lines=True)
    elif setup == "three_lines":
        path = tmp_path / "r.txt"
        path.write_text("\n".join(LINES[:3]))
    elif setup == "cut_gz":  # a download cut short
        path = tmp_path / "r.txt.gz"
        packed = gzip.compress("\n".join(LINES * 50).encode())
        path.write_bytes(packed[:len(packed) // 2])
    cfg = config("text", path=str(path))
    for key, value in overrides.items():
        cfg[key] = str(tmp_path / value) if key == "path" and value else value
    with pytest.raises(UserError, match=re.escape(message)):
        load_dataset(cfg, labels=False)


def test_a_classifier_refuses_unlabelled_text_in_one_sentence(tmp_path):
    (tmp_path / "r.txt").write_text("\n".join(LINES))
    with pytest.raises(UserError, match="unlabelled text, which only language-model pretraining can use"):
        load_dataset(config("text", path=str(tmp_path / "r.txt")))
    result = run(module("train", "debug=tiny", "dataset=text", f"dataset.path={tmp_path}/r.txt"), cwd=tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "pretrain on the text with `python -m sentiment_dist.pretrain dataset=text`" in result.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.json"))
