"""Prepared stores: tokenized once, memory-mapped after, and the very data the in-memory path reads.

The tokenizer gives the ids of the model's own `TextVectorization` layer (no train/serve
skew); a store holds, split by split, the rows, labels, vocabulary and ids the in-memory path
computes, whatever the file format, compression, worker count or vocabulary request; and a
store that is not what a job asks for, or is damaged, is refused in one sentence.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess

import numpy as np
import pandas as pd
import pytest
from conftest import BIN, PYTHON, REPO, cli_env, composed, module, quiet, read_json, run

from sentiment_dist.data import resolve_dataset
from sentiment_dist.data.inputs import classifier_inputs, language_model_inputs
from sentiment_dist.data.pipeline import evaluation_batches, training_batches
from sentiment_dist.data.store import MANIFEST, PreparedStore, prepare
from sentiment_dist.data.tokenizer import VocabularyRequest, build_vocabulary, make_vectorizer
from sentiment_dist.data.tokens import Encoder
from sentiment_dist.runtime.distribute import Distribution, InputShard
from sentiment_dist.runtime.errors import UserError

SINGLE = Distribution(composed("train").strategy)

# What real reviews hold: accents and other scripts (TextVectorization lower-cases ASCII only),
# emoji, punctuation inside and around words, every kind of line break and space, and texts
# longer than the model reads.
TRICKY = np.array([
    "Ça marche TRÈS bien!!! Straße, ÉCOLE & naïve café",
    "great 👍👍 product... 10/10 would buy again :-)",
    "line one\nline two\r\nline three\ttabbed\x85next\u2028sep\u00a0nbsp  double  spaces",
    "don't won't it's  \"quoted\" (parens) [brackets] {braces} a-b_c.d@e#f$g%h^i&j*k+l=m",
    "中文 评论 很好 日本語 のレビュー 한국어 리뷰",
    "",
    "!!! ??? ...",
    " ".join(f"word{i % 37}" for i in range(500)),  # far longer than the model reads
    "combining e\u0301 versus \u00e9, ligature ﬁne, fullwidth ＡＢＣ",
    "UPPER lower MiXeD",
    "  leading and trailing  ", "\x0bvertical\x0cform\x1cfile\x1dgroup\x1erecord\x1funit\x00nul end",
    "\u3000ideographic\u3000space zero\u200bwidth",
    " ".join(chr(code) for code in range(1, 128)),  # every ASCII character
], dtype=object)


def test_ids_are_the_ids_the_models_vectorizer_gives():
    vocabulary = build_vocabulary(np.concatenate([TRICKY, TRICKY[:3]]), vocab_size=60)
    assert len(vocabulary) == 60 and vocabulary[:2] == ["", "[UNK]"]
    layer = make_vectorizer(24, vocabulary)
    split = Encoder(vocabulary).split(TRICKY, np.zeros(len(TRICKY), np.int32), width=24)
    np.testing.assert_array_equal(split.tokens, layer(TRICKY.astype(str)).numpy())
    # every token, as the ragged layer gives them (a language model reads them all)
    ragged = make_vectorizer(None, vocabulary)(TRICKY.astype(str))
    np.testing.assert_array_equal(np.asarray(split.lengths), ragged.row_lengths().numpy())
    np.testing.assert_array_equal(split.ids, ragged.flat_values.numpy())
    assert split.lengths[7] == 500 and split.row_lengths[7] == 24  # read cut to the model's length


def write_reviews(path, rows: int = 300, seed: int = 0):
    """Labelled reviews with repeated and rare words, written as the path's format says."""
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(400)] + ["good", "bad", "Great!", "awful...", "café"], dtype=object)
    texts = [" ".join(rng.choice(words, size=rng.integers(0, 30), p=None)) for _ in range(rows)]
    frame = pd.DataFrame({"text": texts, "label": rng.choice(["neg", "pos", "meh"], size=rows)})
    name = str(path)
    if ".parquet" in name:
        frame.to_parquet(path, index=False)
    elif ".jsonl" in name:
        frame.to_json(path, orient="records", lines=True, compression="infer")
    else:
        frame.to_csv(path, index=False, sep="\t" if ".tsv" in name else ",", compression="infer")
    return path


def train_cfg(*overrides: str):
    return composed("train", "trainer.verbose=false", "model.vocab_size=300", "model.sequence_length=12", *overrides)


def prepared(cfg, tmp_path, workers: int = 1, request: VocabularyRequest | None = None, labels: bool = True):
    request = request or VocabularyRequest(size=cfg.model.vocab_size)
    path, reused = prepare(cfg.dataset, request, None, str(tmp_path / "stores"), workers,
                           lambda dataset, sink: resolve_dataset(dataset, sink, labels), labels)
    return path, reused


def assert_same_inputs(memory, store):
    assert memory.vocabulary == store.vocabulary and memory.label_names == store.label_names
    for role in ("train", "validation", "test"):
        a, b = getattr(memory.splits, role), getattr(store.splits, role)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.tokens, b.tokens)
        np.testing.assert_array_equal(np.asarray(a.lengths), np.asarray(b.lengths))
    assert memory.summary["stats"] == store.summary["stats"]


@pytest.mark.parametrize("name", ["reviews.csv.gz", "reviews.tsv", "reviews.jsonl.bz2", "reviews.parquet"])
def test_a_store_holds_what_the_in_memory_path_reads(tmp_path, name):
    path = write_reviews(tmp_path / name)
    cfg = train_cfg("dataset=csv", f"dataset.path={path}", "dataset.max_rows=250")
    memory = classifier_inputs(cfg, SINGLE)
    store_path, reused = prepared(cfg, tmp_path)
    assert not reused
    store = classifier_inputs(composed_with_store(cfg, store_path), SINGLE)
    assert_same_inputs(memory, store)
    dropped = store.summary["stats"]["dropped_empty_text"]
    assert store.summary["prepared"] == store_path and dropped > 0
    assert sum(store.summary[role] for role in ("train", "validation", "test")) == 250 - dropped
    np.testing.assert_array_equal(PreparedStore.open(store_path).texts("test"), memory.data.test.texts)
    assert prepared(cfg, tmp_path) == (store_path, True)  # the same data and vocabulary: reused
    assert not list((tmp_path / "stores").glob("*.tmp-*"))


def composed_with_store(cfg, path: str):
    cfg = cfg.copy()
    cfg.dataset.prepared = path
    return cfg


def test_parallel_workers_and_a_mixture_give_the_same_store(tmp_path):
    """Two worker processes write what one does; a mixture of files (one source oversampled) too."""
    first, second = write_reviews(tmp_path / "a.csv", 200, seed=1), write_reviews(tmp_path / "b.csv.gz", 120, seed=2)
    cfg = train_cfg("dataset=synthetic_mixture", "dataset.size=500", "dataset.classes=[meh,neg,pos]",
                    "dataset.sources.movies.dataset=${dataset.sources.ecommerce.dataset}",
                    "dataset.sources.ecommerce.weight=3")
    for name, path in (("movies", first), ("ecommerce", second)):
        cfg.dataset.sources[name].dataset = composed("train", "dataset=csv", f"dataset.path={path}").dataset
    memory = classifier_inputs(cfg, SINGLE)
    assert memory.summary["sources"]["ecommerce"]["oversampled"]
    one, _ = prepared(cfg, tmp_path / "one", workers=1)
    two, _ = prepared(cfg, tmp_path / "two", workers=2)
    assert read_json(os.path.join(one, MANIFEST))["files"] == read_json(os.path.join(two, MANIFEST))["files"]
    assert_same_inputs(memory, classifier_inputs(composed_with_store(cfg, two), SINGLE))


def test_a_fine_tune_target_is_tokenized_against_the_extended_source_vocabulary(tmp_path):
    path = write_reviews(tmp_path / "target.csv")
    cfg = train_cfg("dataset=csv", f"dataset.path={path}")
    source = ["", "[UNK]", "good", "bad", "w1", "w2", "movie"]
    request = VocabularyRequest(base=tuple(source), extend=50)
    memory = classifier_inputs(cfg, SINGLE, request)
    assert memory.vocabulary[: len(source)] == source and len(memory.vocabulary) == len(source) + 50
    store_path, _ = prepared(cfg, tmp_path, request=request)
    assert_same_inputs(memory, classifier_inputs(composed_with_store(cfg, store_path), SINGLE, request))
    with pytest.raises(UserError, match="holds ids of another vocabulary .*extended by up to 50.* extended by up to 10"):
        classifier_inputs(composed_with_store(cfg, store_path), SINGLE, VocabularyRequest(base=tuple(source), extend=10))


def test_the_transfer_reports_texts_come_from_the_store_as_read_from_the_file(tmp_path):
    """The report's baselines need raw texts: a store gives back the texts and labels the file gives."""
    from sentiment_dist.data.inputs import labeled_texts

    path = write_reviews(tmp_path / "target.csv.gz")
    cfg = train_cfg("dataset=csv", f"dataset.path={path}")
    request = VocabularyRequest(base=("", "[UNK]", "good", "bad"), extend=20)
    store_path, _ = prepared(cfg, tmp_path, request=request)
    memory, store = labeled_texts(cfg, SINGLE, request), labeled_texts(composed_with_store(cfg, store_path), SINGLE, request)
    assert memory.label_names == store.label_names and memory.stats == store.stats
    for role in ("train", "validation", "test"):
        np.testing.assert_array_equal(getattr(memory, role).texts, getattr(store, role).texts)
        np.testing.assert_array_equal(getattr(memory, role).labels, getattr(store, role).labels)


def test_a_language_model_reads_the_same_windows_from_a_store(tmp_path):
    cfg = composed("pretrain", "dataset=synthetic_movies", "dataset.max_rows=200", "model.vocab_size=200",
                   "model.sequence_length=7", "lm.eval_texts=30")
    memory = language_model_inputs(cfg, SINGLE)
    store_path, _ = prepared(cfg, tmp_path, labels=False)
    store = language_model_inputs(composed_with_store(cfg, store_path), SINGLE)
    assert memory.vocabulary == store.vocabulary and memory.held_out_texts == store.held_out_texts == {
        "validation": 30, "test": 30}
    for role in ("train", "validation", "test"):
        np.testing.assert_array_equal(getattr(memory.splits, role).tokens, getattr(store.splits, role).tokens)


@pytest.mark.parametrize("by_length", [False, True])
def test_batches_from_a_store_are_the_in_memory_batches_also_resumed_mid_epoch(tmp_path, by_length):
    cfg = train_cfg("dataset=csv", f"dataset.path={write_reviews(tmp_path / 'r.csv', 400)}")
    memory = classifier_inputs(cfg, SINGLE).splits
    store = classifier_inputs(composed_with_store(cfg, prepared(cfg, tmp_path)[0]), SINGLE).splits

    def batches(split, shard, start=0):
        return [tuple(c.numpy() for c in b) for b in training_batches(split, 16, 3, 1, shard, by_length, start)]

    for shard in (InputShard(0, 1, 1), InputShard(1, 2, 2)):
        for start in (0, 5 * 16):
            for a, b in zip(batches(memory.train, shard, start), batches(store.train, shard, start), strict=True):
                for column_a, column_b in zip(a, b, strict=True):
                    np.testing.assert_array_equal(column_a, column_b)
    evaluated = [(b[1].numpy(), b[2].numpy()) for b in evaluation_batches(store.test, 16, InputShard(0, 1, 1), by_length)]
    real = np.concatenate([labels[weights > 0] for labels, weights in evaluated])
    assert sorted(real.tolist()) == sorted(memory.test.labels.tolist())  # every example once, padding weighs 0


def test_a_store_that_is_not_what_the_job_reads_is_refused_in_one_sentence(tmp_path):
    path = write_reviews(tmp_path / "r.csv")
    cfg = train_cfg("dataset=csv", f"dataset.path={path}")
    store_path, _ = prepared(cfg, tmp_path)

    def refusal(job_cfg, request=None) -> str:
        with pytest.raises(UserError) as info:
            classifier_inputs(composed_with_store(job_cfg, store_path), SINGLE, request)
        return str(info.value)

    assert "another vocabulary (one built from the training split with model.vocab_size=300), and this run needs " \
           "one built from the training split with model.vocab_size=100;" in refusal(
        train_cfg("dataset=csv", f"dataset.path={path}", "model.vocab_size=100"))
    assert "another dataset config: dataset.split.seed is 42 there and 7 here" in refusal(
        train_cfg("dataset=csv", f"dataset.path={path}", "dataset.split.seed=7"))
    os.utime(path, (1, 1))  # the input changed after the store was made
    assert f"{path} changed since the store" in refusal(cfg)


@pytest.mark.parametrize("from_store", [False, True])
def test_training_data_of_one_class_is_refused_in_one_sentence(tmp_path, from_store):
    path = tmp_path / "r.csv"
    pd.DataFrame({"text": [f"fine review {i}" for i in range(60)], "label": "pos"}).to_csv(path, index=False)
    cfg = train_cfg("dataset=csv", f"dataset.path={path}")
    if from_store:
        cfg = composed_with_store(cfg, prepared(cfg, tmp_path)[0])
    with pytest.raises(UserError, match=re.escape("the training data holds only class ['pos']; a classifier needs two")):
        classifier_inputs(cfg, SINGLE)


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "no manifest", "edited manifest", "not a manifest",
                                    "missing", "a file"])
def test_a_damaged_store_is_found_before_training(tmp_path, damage):
    cfg = train_cfg("dataset=csv", f"dataset.path={write_reviews(tmp_path / 'r.csv')}")
    store_path, _ = prepared(cfg, tmp_path)
    ids = os.path.join(store_path, "train.ids.npy")
    if damage == "truncated":
        os.truncate(ids, os.path.getsize(ids) - 2)
        expected = "damaged: train.ids.npy has"
    elif damage == "flipped byte":
        with open(ids, "r+b") as handle:
            handle.seek(-1, os.SEEK_END)
            last = handle.read(1)
            handle.seek(-1, os.SEEK_END)
            handle.write(bytes([last[0] ^ 1]))
        expected = "damaged: train.ids.npy does not match the SHA-256 its manifest records"
    elif damage == "no manifest":  # what a killed prepare looks like, were it renamed
        os.remove(os.path.join(store_path, MANIFEST))
        expected = "is not a finished prepared store"
    elif damage == "edited manifest":  # by hand: a third class would train a three-way head on two-class labels
        manifest = read_json(os.path.join(store_path, MANIFEST))
        manifest["label_names"].append("neutral")
        with open(os.path.join(store_path, MANIFEST), "w") as handle:
            json.dump(manifest, handle)
        expected = f"damaged: {MANIFEST} was changed after prepare wrote it"
    elif damage == "not a manifest":
        with open(os.path.join(store_path, MANIFEST), "w") as handle:
            json.dump([1, 2], handle)
        expected = "is not a prepared store's manifest \\(it holds a list\\)"
    elif damage == "a file":
        store_path = str(tmp_path / "r.csv")
        expected = "is a file; set it to the directory"
    else:
        store_path += "-elsewhere"
        expected = "does not exist; run `python -m sentiment_dist.prepare`"
    with pytest.raises(UserError, match=expected):
        classifier_inputs(composed_with_store(cfg, store_path), SINGLE)


def test_prepare_and_train_from_the_command_line_and_a_full_disk(tmp_path):
    """The two commands as a user runs them; then a disk that fills up while preparing."""
    data = write_reviews(tmp_path / "r.csv", 600)
    common = ["dataset=csv", f"dataset.path={data}", "model.vocab_size=300"]
    result = run(module("prepare", *common, "prepare.workers=2", f"prepare.out={tmp_path}/store"), cwd=tmp_path)
    assert f"Prepared store: {tmp_path}/store" in result.stdout
    manifest = read_json(tmp_path / "store" / MANIFEST)
    kept = 600 - manifest["stats"]["dropped_empty_text"]
    sizes = [manifest["splits"][role]["examples"] for role in ("train", "validation", "test")]
    assert sum(sizes) == kept and sizes[1] == round(kept * 0.1) and sizes[2] == round(kept * 0.2)
    assert f"Prepared {kept} examples (train {sizes[0]}, validation {sizes[1]}, test {sizes[2]}) in " in result.stdout
    assert 600 > kept and f"dropped {{'dropped_empty_text': {600 - kept}}}" in result.stdout  # said, not only recorded
    again = run(module("prepare", *common, f"prepare.out={tmp_path}/store"), cwd=tmp_path)
    assert "Reusing the store prepared before" in again.stdout
    run(module("train", "debug=tiny", "trainer.verbose=false", *common, f"dataset.prepared={tmp_path}/store",
               "dataset.max_rows=null", "trainer.max_steps=5", f"hydra.run.dir={tmp_path}/run"), cwd=tmp_path)
    history = read_json(tmp_path / "run" / "history.json")
    assert history["epoch"] == [1]  # trainer.max_steps=5 ended the first epoch (13 steps) early
    metrics = read_json(tmp_path / "run" / "metrics.json")
    assert metrics["data"]["prepared"] == f"{tmp_path}/store"
    # evaluate maps the same store (its vocabulary is the model's) and scores what training scored
    run(module("evaluate", f"run_dir={tmp_path}/run", "dataset=csv", f"dataset.path={data}",
               f"dataset.prepared={tmp_path}/store", f"hydra.run.dir={tmp_path}/evaluation"), cwd=tmp_path)
    evaluated = read_json(tmp_path / "evaluation" / "metrics.json")["test"]
    assert evaluated["confusion_matrix"] == metrics["test"]["confusion_matrix"]

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    command = module("prepare", *common, "model.vocab_size=200", f"prepare.out={tmp_path}/full")
    result = subprocess.run(command, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300,
                            preexec_fn=small_files)
    assert result.returncode == 2, quiet(result.stderr)[-3000:]
    assert "Traceback" not in result.stderr
    assert f"error: cannot write the prepared store {tmp_path}/full (File too large); free space" in result.stderr
    assert not list(tmp_path.glob("full*"))  # nothing that looks finished, no scratch left


def test_a_store_some_ranks_cannot_see_stops_every_rank_in_one_sentence(tmp_path, horovod_available):
    """Rank 0 finds the store, rank 1 looks where there is none (an unshared disk)."""
    data = write_reviews(tmp_path / "r.csv", 300)
    common = ["dataset=csv", f"dataset.path={data}", "model.vocab_size=300"]
    run(module("prepare", *common, f"prepare.out={tmp_path}/store0"), cwd=tmp_path)
    command = [str(REPO / "launch" / "horovodrun.sh"), "-np", "2", "-H", "localhost:2", "debug=tiny", *common,
               "dataset.max_rows=null", f"dataset.prepared={tmp_path}/store" + "${oc.env:HOROVOD_RANK}",
               f"hydra.run.dir={tmp_path}/run"]
    result = run(command, cwd=tmp_path, check=False, env=cli_env(PYTHON=PYTHON, PATH=f"{BIN}:{os.environ['PATH']}"))
    output = quiet(result.stdout + result.stderr)
    assert result.returncode == 2, output[-3000:]  # the job's own code (horovodrun.sh), not horovodrun's 1
    assert f'File "{REPO}/sentiment_dist' not in output  # no traceback through our code
    assert f"error: dataset.prepared={tmp_path}/store1 does not exist" in output  # the rank that cannot see it
    assert f"error: dataset.prepared={tmp_path}/store0 cannot be used on every rank; put the store on a filesystem " \
           "every node mounts, or copy it to that path on each node (rank 1 failed)." in output  # and the chief
    assert not (tmp_path / "run").exists()


def test_prepare_never_writes_into_a_directory_that_is_not_a_store(tmp_path):
    cfg = train_cfg("dataset=csv", f"dataset.path={write_reviews(tmp_path / 'r.csv')}")
    request = VocabularyRequest(size=cfg.model.vocab_size)

    def prepare_into(out):
        return prepare(cfg.dataset, request, str(out), str(tmp_path / "stores"), 1,
                       lambda dataset, sink: resolve_dataset(dataset, sink, True))

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    (tmp_path / "a_file").write_text("keep")
    for taken in ("mine", "a_file"):
        with pytest.raises(UserError, match=f"{tmp_path}/{taken} already exists and is not a prepared store; set "
                                            "prepare.out to a new directory"):
            prepare_into(tmp_path / taken)
    with pytest.raises(UserError, match=f"cannot write the prepared store {tmp_path}/a_file/store \\(a file stands where "
                                        "a directory must be\\); move the file out of the way or set prepare.out"):
        prepare_into(tmp_path / "a_file" / "store")  # a path through a file
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep" and (tmp_path / "a_file").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "mine", "r.csv"]  # no scratch left either
    (tmp_path / "empty").mkdir()  # an empty directory, as `mkdir` before a job makes it, is used
    assert prepare_into(tmp_path / "empty") == (str(tmp_path / "empty"), False)
    assert (tmp_path / "empty" / MANIFEST).is_file()


def test_the_manifest_says_what_the_store_was_made_from(tmp_path):
    path = write_reviews(tmp_path / "r.csv")
    cfg = train_cfg("dataset=csv", f"dataset.path={path}")
    store_path, _ = prepared(cfg, tmp_path)
    manifest = json.loads(open(os.path.join(store_path, MANIFEST)).read())
    assert manifest["dataset"]["path"] == str(path) and manifest["vocabulary"]["request"] == {
        "built_from": "train", "vocab_size": 300}
    assert manifest["inputs"][0]["bytes"] == os.path.getsize(path) and len(manifest["inputs"][0]["sha256"]) == 64
    examples = sum(manifest["splits"][role]["examples"] for role in ("train", "validation", "test"))
    assert examples == 300 - manifest["stats"]["dropped_empty_text"] and manifest["project_version"]
    assert set(manifest["files"]) >= {"vocabulary.txt", "train.ids.npy", "train.offsets.npy", "test.text.npy"}
    assert np.load(os.path.join(store_path, "train.ids.npy")).dtype == np.uint16  # 300 ids fit in 16 bits


def test_a_mixture_prepared_for_a_classifier_is_refused_to_a_language_model(tmp_path):
    cfg = composed("pretrain", "dataset=synthetic_mixture", "dataset.max_rows=100", "model.vocab_size=100")
    store_path, _ = prepared(cfg, tmp_path, labels=True)
    with pytest.raises(UserError, match=r"was prepared for a classifier \(prepare.labels=true\), this job trains a "
                                        r"language model; prepare it again with prepare.labels=false"):
        language_model_inputs(composed_with_store(cfg, store_path), SINGLE)
