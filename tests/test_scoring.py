"""`predict --file` at scale: the file is read, scored and written a chunk at a time, and under
horovodrun or MultiWorker each process scores its chunks while the chief writes one output in
input order, the output a single process writes."""

from __future__ import annotations

import codecs

import numpy as np
import pytest
from conftest import horovodrun, module, multiworker, quiet, run, session_run
from test_equivalence import COMMON, GLOBAL_BATCH

from sentiment_dist.predict import file_chunks
from sentiment_dist.runtime.errors import UserError

TRICKY = ["great phone, love it", "", "   ", "terrible battery\r", "naïve café — ok 👍", "tab\tinside", "a\x0bvertical tab",
          "x" * 5000, "line\u2028separator", "last"]


def reference_lines(data: bytes, encoding: str) -> list[str]:
    return [line for line in data.decode(encoding).splitlines() if line.strip()]


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "latin-1"])
def test_chunks_are_the_file_lines_for_any_block_and_chunk_size(tmp_path, encoding):
    text = "\n".join(TRICKY * 7) + "\r\n\r\nend without newline"
    if encoding == "latin-1":
        text = text.encode("latin-1", "replace").decode("latin-1")
    path = tmp_path / "reviews.txt"
    path.write_bytes(text.encode(encoding))
    expected = reference_lines(path.read_bytes(), encoding)
    for block_bytes in (1, 2, 3, 7, 64, 1 << 20):  # blocks that split a "\r\n" and multi-byte characters
        for lines_per_chunk in (1, 5, 10_000):
            chunks = list(file_chunks(str(path), encoding, lines_per_chunk, block_bytes))
            assert [line for chunk in chunks for line in chunk] == expected, (block_bytes, lines_per_chunk)
            assert all(len(chunk) == lines_per_chunk for chunk in chunks[:-1]) and 0 < len(chunks[-1]) <= lines_per_chunk


def test_a_bad_byte_or_a_nul_is_refused_with_its_offset_in_the_whole_file(tmp_path):
    path = tmp_path / "reviews.txt"
    good = ("fine review\n" * 40).encode()
    path.write_bytes(good + b"caf\xe8 bad\n")
    for block_bytes in (1, 5, 1 << 20):
        with pytest.raises(UserError, match=rf"is not utf-8 text \(byte 0xe8 at offset {len(good) + 3}\)"):
            list(file_chunks(str(path), "utf-8", 4, block_bytes))
    path.write_bytes(good + "naïve\x00".encode())
    with pytest.raises(UserError, match=rf"holds NUL bytes at offset {len(good) + 5}:"):
        list(file_chunks(str(path), "utf-8", 4, 3))
    path.write_bytes(codecs.BOM_UTF8 + b"truncated \xe2\x82")  # a character cut off at the end of the file
    with pytest.raises(UserError, match="is not utf-8 text"):
        list(file_chunks(str(path), "utf-8", 4, 4))


def test_a_byte_order_mark_starting_the_file_is_dropped_and_counted_in_offsets(tmp_path):
    """Windows tools start utf-8 files with one: it was read as part of the first review."""
    path = tmp_path / "reviews.txt"
    path.write_bytes(codecs.BOM_UTF8 + "great movie\r\n\ufeffnot first\n".encode())
    for block_bytes in (1, 2, 4, 1 << 20):  # blocks that split the mark
        assert list(file_chunks(str(path), "UTF8", 10, block_bytes)) == [["great movie", "\ufeffnot first"]]
    path.write_bytes(codecs.BOM_UTF8 + b"\n  \n")
    assert list(file_chunks(str(path), "utf-8", 10, 1)) == []  # no text: not a line holding only the mark
    good = b"fine review\n" * 5
    for data, offset in [(codecs.BOM_UTF8 + good + b"caf\xe8", 3 + len(good) + 3), (codecs.BOM_UTF8[:2] + b"x", 0)]:
        path.write_bytes(data)
        for block_bytes in (1, 2, 5, 1 << 20):
            with pytest.raises(UserError, match=rf"is not utf-8 text \(byte 0x.. at offset {offset}\)"):
                list(file_chunks(str(path), "utf-8", 4, block_bytes))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return session_run(tmp_path_factory, "equivalence_single", module("train", *COMMON, f"trainer.batch_size={GLOBAL_BATCH}"))


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    """53 reviews of varied lengths (so chunks of 5 make 11 rounds, the last one short), blank lines among them."""
    rng = np.random.default_rng(0)
    words = ["good", "bad", "great", "awful", "the", "phone", "battery", "love", "hate", "ok"]
    lines = [" ".join(rng.choice(words, size=rng.integers(1, 40))) for _ in range(53)]
    path = tmp_path_factory.mktemp("reviews") / "reviews.txt"
    path.write_text("\n\n".join(lines) + "\n")
    return path, lines


@pytest.fixture(scope="module")
def one_process(model, reviews, tmp_path_factory):
    """What one process prints for `reviews`, five lines at a time."""
    path, _ = reviews
    return run(module("predict", str(model), "--file", str(path), "--chunk-lines", "5"), cwd=tmp_path_factory.mktemp("one")).stdout


def scored(output: str) -> tuple[list[str], list[float], list[str]]:
    rows = [line.split("\t", 2) for line in output.splitlines()]
    return [r[0] for r in rows], [float(r[1]) for r in rows], [r[2] for r in rows]


def test_a_file_is_scored_chunk_by_chunk_as_the_whole_list_is(model, reviews, one_process):
    from sentiment_dist.jobs.serving import labeled, load_predictor

    _, lines = reviews
    labels, probabilities, texts = scored(one_process)
    predict, label_names, threshold = load_predictor(str(model), 256)
    expected_labels, expected_probabilities = labeled(predict(lines), label_names, threshold)
    assert texts == lines and labels == expected_labels
    np.testing.assert_allclose(probabilities, expected_probabilities, atol=1e-4)  # printed to 4 decimals


@pytest.mark.parametrize("launch", ["horovod", "multiworker"])
def test_under_several_processes_the_chief_writes_what_one_process_writes(model, reviews, one_process, tmp_path, launch,
                                                                           horovod_available):
    path, lines = reviews
    launcher = horovodrun() if launch == "horovod" else multiworker(2)
    out = tmp_path / "out.tsv"
    result = run(launcher + module("predict", str(model), "--file", str(path), "--chunk-lines", "5", "--out", str(out)),
                 cwd=tmp_path)
    assert out.read_text() == one_process and len(one_process.splitlines()) == len(lines)
    assert "\t" not in quiet(result.stdout)  # the output went to the file, from the chief only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tsv"]  # no temporary file left beside it


def test_an_error_mid_file_leaves_no_output(model, tmp_path):
    path = tmp_path / "reviews.txt"
    path.write_bytes(b"good phone\n" * 30 + b"\xff\xfe broken\n")
    result = run(module("predict", str(model), "--file", str(path), "--chunk-lines", "4", "--out", str(tmp_path / "out.tsv")),
                 cwd=tmp_path, check=False)
    assert result.returncode == 2 and "is not utf-8 text (byte 0xff at offset 330)" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reviews.txt"]
    result = run(module("predict", str(model), "--file", str(path), "--out", str(tmp_path / "no" / "out.tsv")), cwd=tmp_path,
                 check=False)
    assert result.returncode == 2 and "its directory does not exist" in result.stderr
