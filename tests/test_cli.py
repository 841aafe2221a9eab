"""The real CLIs end to end on tiny synthetic data: train, evaluate, predict,
export, and what a user sees when the input is wrong."""

from __future__ import annotations

import codecs
import re
import subprocess

import numpy as np
import pandas as pd
import pytest
from conftest import PYTHON, TINY, cli_env, module, quiet, read_json, run, trained_classifier

RUN_FILES = ("config.yaml", "model.keras", "vocabulary.txt", "labels.json", "metrics.json", "history.json",
             "confusion_matrix.png", "training_curves.png")
SAMPLE = ["the acting was not good at all", "boring at first, but the ending was wonderful", "an absolutely superb film"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The session's small trained classifier (test_finetune's strong source too); read, never changed."""
    run_dir = trained_classifier(tmp_path_factory)
    assert f"Run directory: {run_dir}" in (run_dir.parent / "output.txt").read_text()
    return run_dir


def test_train_writes_a_complete_run_dir(trained):
    for name in RUN_FILES:
        assert (trained / name).is_file(), name
    metrics = read_json(trained / "metrics.json")
    test = metrics["test"]
    assert test["examples"] == 1000 and set(test["per_class"]) == {"negative", "positive"}
    assert sum(sum(row) for row in test["confusion_matrix"]) == 1000
    assert 0 <= test["macro_f1"] <= 1 and test["accuracy"] > 0.75  # well above chance (0.5)
    assert read_json(trained / "history.json")["epoch"][-1] >= 1
    assert not list(trained.rglob(".tmp-*"))


def test_same_seed_same_config_same_metrics(trained, tmp_path):
    run(module("train", *TINY, "model=bilstm", "dataset.max_rows=2048", f"hydra.run.dir={tmp_path}/again"), cwd=tmp_path)
    first, second = read_json(trained / "metrics.json")["test"], read_json(tmp_path / "again" / "metrics.json")["test"]
    assert first["confusion_matrix"] == second["confusion_matrix"]
    assert first["loss"] == pytest.approx(second["loss"], abs=1e-6)


def test_evaluate_reproduces_the_test_metrics(trained, tmp_path):
    result = run(module("evaluate", f"run_dir={trained}"), cwd=tmp_path)
    (out,) = (tmp_path / "outputs" / "evaluate").iterdir()
    evaluated = read_json(out / "metrics.json")["test"]
    assert evaluated["confusion_matrix"] == read_json(trained / "metrics.json")["test"]["confusion_matrix"]
    assert "macro-F1" in result.stdout


def test_evaluate_on_data_with_other_labels_is_a_user_error(trained, tmp_path):
    result = run(module("evaluate", f"run_dir={trained}", "dataset=synthetic_ecommerce", "dataset.num_classes=3"), cwd=tmp_path, check=False)
    assert result.returncode == 2 and "differ from the model's" in result.stderr


def test_evaluate_scores_a_file_of_one_class(trained, tmp_path):
    """A held-out file of positive reviews only: its test split is scored (refusing one class is for training)."""
    reviews = pd.DataFrame({"text": [f"a wonderful film, loved it {i}" for i in range(50)], "label": "positive"})
    reviews.to_csv(tmp_path / "positive.csv", index=False)
    run(module("evaluate", f"run_dir={trained}", "dataset=csv", f"dataset.path={tmp_path}/positive.csv",
               "dataset.label_mapping.classes=[negative,positive]", f"hydra.run.dir={tmp_path}/evaluation"), cwd=tmp_path)
    test = read_json(tmp_path / "evaluation" / "metrics.json")["test"]
    assert test["examples"] == 10 and test["per_class"]["negative"]["support"] == 0  # the 20% test split


def predicted_labels(stdout: str) -> list[str]:
    return [line.split("\t")[0] for line in stdout.splitlines() if "\t" in line]


def test_predict_from_arguments_file_and_stdin(trained, tmp_path):
    from_args = run(module("predict", str(trained), *SAMPLE), cwd=tmp_path).stdout
    rows = [line.split("\t") for line in from_args.splitlines()]
    assert [row[2] for row in rows] == SAMPLE
    assert all(row[0] in ("negative", "positive") and 0.5 <= float(row[1]) <= 1 for row in rows)
    (tmp_path / "reviews.txt").write_text("\n".join(SAMPLE) + "\n")
    from_file = run(module("predict", str(trained), "--file", str(tmp_path / "reviews.txt")), cwd=tmp_path).stdout
    from_stdin = subprocess.run(module("predict", str(trained)), input="\n".join(SAMPLE), capture_output=True, text=True, env=cli_env(), cwd=tmp_path).stdout
    assert from_args == from_file == from_stdin


def test_predicting_in_batches_by_length_gives_what_the_saved_model_gives(trained):
    """Reviews are scored longest first in batches cut to their longest one, and come back in order."""
    import numpy as np
    import tensorflow as tf

    from sentiment_dist.jobs.rundir import RunDir
    from sentiment_dist.jobs.serving import load_predictor

    texts = [" ".join([SAMPLE[i % 3]] * (1 + i % 7)) for i in range(37)]  # 7 to 70 words, mixed
    predict, _, _ = load_predictor(str(trained), batch_size=8)
    expected = RunDir(str(trained)).load_classifier().model(tf.constant(texts)[:, None], training=False).numpy()
    np.testing.assert_allclose(predict(texts), expected, rtol=0, atol=1e-5)


def test_export_savedmodel_and_tflite_give_the_same_labels(trained, tmp_path):
    out = tmp_path / "export"
    run(module("export", str(trained), "--out", str(out), "--tflite"), cwd=tmp_path)
    reference = run(module("predict", str(trained), *SAMPLE), cwd=tmp_path).stdout
    for model in (out / "saved_model", out / "model.tflite", out / "model_dynamic_range.tflite"):
        assert predicted_labels(run(module("predict", str(model), *SAMPLE), cwd=tmp_path).stdout) == predicted_labels(reference), model


def test_saved_model_takes_raw_strings_and_loads_in_safe_mode(trained):
    script = (
        "import keras, tensorflow as tf, sys;"
        f"m = keras.models.load_model('{trained}/model.keras', safe_mode=True);"
        "print(m(tf.constant([['a fine film'], ['awful']])).shape)"
    )
    assert "(2, 1)" in run([PYTHON, "-c", script], cwd=trained).stdout


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["dataset=csv", "dataset.path=nowhere.csv"], "nowhere.csv does not exist"),
        (["dataset.num_train=8", "trainer.batch_size=32"], "fewer than one global batch"),
    ],
)
def test_bad_input_is_one_sentence_and_leaves_no_run_dir(tmp_path, overrides, message):
    result = run(module("train", *TINY, *overrides), cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert not (tmp_path / "outputs").exists()  # not even empty outputs/train/


def test_a_csv_with_missing_column_names_the_columns_that_exist(tmp_path):
    (tmp_path / "reviews.csv").write_text("body,stars\nlovely,5\nawful,1\n")
    result = run(module("train", *TINY, "dataset=csv", "dataset.path=reviews.csv"), cwd=tmp_path, check=False)
    assert result.returncode == 2 and "has no column 'text'" in result.stderr and "'body'" in result.stderr


def test_predict_errors_are_one_sentence(tmp_path):
    result = run(module("predict", str(tmp_path / "missing"), "a review"), cwd=tmp_path, check=False)
    assert result.returncode == 2 and "does not exist" in result.stderr


def one_sentence(result: subprocess.CompletedProcess) -> str:
    """The error line of a command that failed the way bad input must: exit code 2, one line
    starting `error:` on stderr, no traceback."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in quiet(result.stderr).splitlines() if line.strip()]  # TensorFlow's start-up lines aside
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


def room_for(size: int):
    """A disk with room for `size` bytes a file: files can be created, larger ones not written
    (RLIMIT_FSIZE: EFBIG, as ENOSPC on a full disk). In the child, before it starts."""
    def limit():
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return limit


# Output locations that cannot be written: (path, why: a regex). /sys/kernel exists and no one may
# create files or dirs in it (sysfs), root included (EPERM for a dir, EACCES for a file; EACCES for
# anyone else); /proc/nope cannot be made; "full" is run with `room_for`.
LOCATIONS = {
    "missing": ("/proc/nope/{name}", "No such file or directory"),
    "read-only": ("/sys/kernel{slash_name}", "Permission denied|Operation not permitted"),
    "full": ("{tmp}/full/{name}", "File too large"),
}


def location(kind: str, tmp_path, name: str, is_parent: bool = False) -> str:
    path, _ = LOCATIONS[kind]
    slash_name = f"/{name}" if is_parent else ""  # read-only: the dir itself, or a new one inside it
    return path.format(name=name, tmp=tmp_path, slash_name=slash_name)


@pytest.mark.parametrize("kind", sorted(LOCATIONS))
@pytest.mark.parametrize("setting", ["hydra.run.dir", "hydra.sweep.dir"])
def test_an_output_dir_that_cannot_be_written_is_one_sentence_and_leaves_nothing(tmp_path, setting, kind):
    _, why = LOCATIONS[kind]
    setup = room_for(0) if kind == "full" else None  # not a byte: the disk is full before the run starts
    directory = location(kind, tmp_path, "run")
    sweep = ["-m"] if setting == "hydra.sweep.dir" else []
    result = subprocess.run(module("train", *sweep, *TINY, f"{setting}={directory}"), cwd=tmp_path, env=cli_env(),
                            capture_output=True, text=True, timeout=120, preexec_fn=setup)
    error = one_sentence(result)
    kind_of_dir = "sweep" if sweep else "run"
    verb = "write to" if kind == "read-only" else "create"
    assert re.fullmatch(re.escape(f"error: cannot {verb} the {kind_of_dir} directory {directory} (") + f"({why})"
                        + re.escape(f"); set {setting} (or paths.log_dir) to a writable directory."), error), error
    assert sorted(path.name for path in tmp_path.iterdir()) == []  # not even outputs/ or the full dir


@pytest.mark.parametrize("kind", sorted(LOCATIONS))
def test_an_export_that_cannot_be_written_is_one_sentence_and_leaves_nothing(trained, tmp_path, kind):
    _, why = LOCATIONS[kind]
    setup = room_for(16_000) if kind == "full" else None  # TensorFlow starts; the SavedModel does not fit
    out = location(kind, tmp_path, "export", is_parent=True)
    result = subprocess.run(module("export", str(trained), "--out", out), cwd=tmp_path, env=cli_env(),
                            capture_output=True, text=True, timeout=300, preexec_fn=setup)
    error = one_sentence(result)
    if kind == "full":  # made, then the disk filled up while the model was written
        expected = (f"error: cannot write the export to {out} (", "); free space on that disk or pass --out another directory.")
    else:
        expected = (f"error: cannot create the export directory {out} (", "); pass --out a directory you can write to.")
    assert re.fullmatch(re.escape(expected[0]) + f"({why})" + re.escape(expected[1]), error), error
    assert sorted(path.name for path in tmp_path.iterdir()) == []
    assert not list(trained.glob(".export-*"))


def test_predict_refuses_a_file_that_is_not_text_in_its_encoding(tmp_path):
    """Undecodable bytes were replaced and labelled with confidence; now they are refused, as train
    refuses them. latin-1 decodes every byte, so a binary file is told by its NUL bytes."""
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (tmp_path / "reviews.txt").write_bytes("une critique très sévère\n".encode("latin-1"))
    model = str(tmp_path / "no-model-needed-yet")  # the texts are read first
    result = run(module("predict", model, "--file", str(tmp_path / "image.png")), cwd=tmp_path, check=False)
    assert one_sentence(result) == (f"error: --file {tmp_path}/image.png is not utf-8 text (byte 0x89 at offset 0); pass "
                                    "a text file, with --encoding set to its encoding (e.g. latin-1).")
    result = run(module("predict", model, "--file", str(tmp_path / "image.png"), "--encoding", "latin-1"), cwd=tmp_path,
                 check=False)
    assert one_sentence(result) == (f"error: --file {tmp_path}/image.png holds NUL bytes at offset 8: it is not a text "
                                    "file; pass a text file with one review per line.")
    result = run(module("predict", model, "--file", str(tmp_path / "reviews.txt")), cwd=tmp_path, check=False)
    assert "is not utf-8 text (byte 0xe8 at offset 15)" in one_sentence(result)
    result = run(module("predict", model, "--file", str(tmp_path / "reviews.txt"), "--encoding", "latin-1"),
                 cwd=tmp_path, check=False)  # decoded now: what fails is the missing model
    assert "no-model-needed-yet does not exist" in one_sentence(result)


def test_predict_skips_blank_arguments_as_it_skips_blank_lines(trained, tmp_path):
    """Blank arguments were labelled (`predict R ""` printed `positive 0.5020`)."""
    expected = run(module("predict", str(trained), SAMPLE[0]), cwd=tmp_path).stdout
    assert run(module("predict", str(trained), "   ", SAMPLE[0], ""), cwd=tmp_path).stdout == expected
    for blanks in ([""], [" ", "\t"]):
        result = run(module("predict", str(trained), *blanks), cwd=tmp_path, check=False)
        assert one_sentence(result) == "error: no text to classify; pass texts as arguments, --file, or lines on stdin."


def predict_reading(model, data: bytes, *args: str, cwd) -> subprocess.CompletedProcess:
    """`predict MODEL ARGS` given `data` on stdin, in a new interpreter (the warm Python's jobs get no stdin)."""
    result = subprocess.run(module("predict", str(model), *args), input=data, capture_output=True, env=cli_env(),
                            cwd=cwd, timeout=300)
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(), result.stderr.decode())


def test_predict_reads_a_file_that_is_a_pipe(trained, tmp_path):
    """`--file <(zcat reviews.gz)` or `--file /dev/stdin` names no regular file, yet one that is there."""
    expected = run(module("predict", str(trained), *SAMPLE), cwd=tmp_path).stdout
    result = predict_reading(trained, "\n".join(SAMPLE).encode(), "--file", "/dev/stdin", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == expected


def test_predict_reads_stdin_as_it_reads_a_file(trained, tmp_path):
    """stdin kept the "\\r" of CRLF line ends in the texts it scored and printed, labelled NUL bytes,
    and ended in a traceback on bytes that are not utf-8; --file did none of these."""
    (tmp_path / "reviews.txt").write_text("\n".join(SAMPLE) + "\n")
    expected = run(module("predict", str(trained), "--file", "reviews.txt"), cwd=tmp_path).stdout
    result = predict_reading(trained, "\r\n".join(SAMPLE).encode() + b"\r\n", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == expected
    assert one_sentence(predict_reading(trained, b"caf\xe8 bad\n", cwd=tmp_path)) == (
        "error: stdin is not utf-8 text (byte 0xe8 at offset 3); pass a text file, with --encoding set to its "
        "encoding (e.g. latin-1).")
    assert one_sentence(predict_reading(trained, b"fine\nnul\x00\n", cwd=tmp_path)) == (
        "error: stdin holds NUL bytes at offset 8: it is not a text file; pass a text file with one review per line.")


def test_predict_drops_a_byte_order_mark_starting_the_input(trained, tmp_path):
    """It was scored as part of the first text (another probability) and printed with it, and a
    file of the mark and blank lines was labelled instead of holding no text."""
    text = b"great movie loved it\nawful\n"
    (tmp_path / "plain.txt").write_bytes(text)
    (tmp_path / "bom.txt").write_bytes(codecs.BOM_UTF8 + text)
    (tmp_path / "blank.txt").write_bytes(codecs.BOM_UTF8 + b"\n  \n")
    expected = run(module("predict", str(trained), "--file", "plain.txt"), cwd=tmp_path).stdout
    assert run(module("predict", str(trained), "--file", "bom.txt"), cwd=tmp_path).stdout == expected
    result = predict_reading(trained, codecs.BOM_UTF8 + text, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == expected
    assert one_sentence(run(module("predict", str(trained), "--file", "blank.txt"), cwd=tmp_path, check=False)) == (
        "error: no text to classify; pass texts as arguments, --file, or lines on stdin.")


def test_predict_says_a_file_that_is_a_directory_is_one(tmp_path):
    (tmp_path / "reviews").mkdir()
    result = run(module("predict", str(tmp_path / "no-model-needed-yet"), "--file", "reviews"), cwd=tmp_path, check=False)
    assert one_sentence(result) == "error: --file reviews is a directory; pass a text file with one review per line."


@pytest.mark.parametrize("out", ["adir", "newdir/"])
def test_predict_refuses_an_out_that_names_a_directory_before_scoring(trained, tmp_path, out):
    """It ended in a traceback once every text was scored: the output could not be renamed onto a directory."""
    (tmp_path / "adir").mkdir()
    result = run(module("predict", str(trained), "a review", "--out", out), cwd=tmp_path, check=False)
    assert one_sentence(result) == (f"error: --out {out} names a directory; pass --out a file to write the labels to, "
                                    f"e.g. {out.rstrip('/')}/labels.tsv.")
    assert [p.name for p in tmp_path.rglob("*")] == ["adir"]  # no temporary output beside it, nothing in it


def test_predict_and_evaluate_given_no_model_say_what_they_were_given(trained, tmp_path):
    """A CSV is not "a run directory that does not exist": each command names what it got."""
    (tmp_path / "reviews.csv").write_text("text,label\ngreat,positive\n")
    (tmp_path / "fake.tflite").write_text("not a flatbuffer")
    (tmp_path / "empty").mkdir()
    csv, fake, empty = tmp_path / "reviews.csv", tmp_path / "fake.tflite", tmp_path / "empty"
    assert one_sentence(run(module("predict", str(csv), "a review"), cwd=tmp_path, check=False)) == (
        f"error: {csv} is a file, not a model; pass a run directory, an exported saved_model/ directory or a "
        ".tflite file (sentiment-export writes the last two).")
    assert one_sentence(run(module("predict", str(fake), "a review"), cwd=tmp_path, check=False)).startswith(
        f"error: {fake} is not a TFLite model (")
    assert one_sentence(run(module("predict", str(empty), "a review"), cwd=tmp_path, check=False)) == (
        f"error: {empty} has no model.keras; point at the run directory of a finished training run.")
    assert one_sentence(run(module("evaluate", f"run_dir={csv}"), cwd=tmp_path, check=False)) == (
        f"error: {csv} is a file, not a run directory; pass the directory training printed (it holds model.keras).")
    assert not (tmp_path / "outputs").exists()


def test_multirun_sweep_runs_each_member(tmp_path):
    run(module("train", "-m", *TINY, "trainer.epochs=1", "model=lstm,bilstm"), cwd=tmp_path)
    metrics = sorted((tmp_path / "outputs").rglob("metrics.json"))
    assert len(metrics) == 2
    assert {read_json(p.parent / "labels.json")["label_names"][0] for p in metrics} == {"negative"}


# --- faults a new user runs into: each a class of problem, one sentence, exit code 2 ----------


def test_a_run_with_hundreds_of_classes_finishes_its_run_dir(tmp_path):
    """300 classes: the confusion plot shows the 30 most frequent (and the rest as "other"),
    so drawing it no longer hangs and metrics.json is written."""
    rng = np.random.default_rng(0)
    rows = [f"review {i} about item{label} {' '.join(rng.choice(['good', 'bad', 'fine'], 5))},c{label}"
            for i, label in enumerate(np.repeat(np.arange(300), 6))]
    (tmp_path / "many.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    run(module("train", *TINY, "trainer.epochs=1", "dataset=csv", "dataset.path=many.csv", "dataset.max_rows=null",
               "dataset.split.test_fraction=0.34",
               "dataset.split.validation_fraction=0.17", "trainer.batch_size=16", f"hydra.run.dir={tmp_path}/run"), cwd=tmp_path)
    metrics = read_json(tmp_path / "run" / "metrics.json")
    assert len(metrics["test"]["label_names"]) == 300 and metrics["test"]["examples"] == 612
    assert (tmp_path / "run" / "confusion_matrix.png").stat().st_size > 1000


def test_the_confusion_plot_pools_all_but_the_most_frequent_classes():
    from sentiment_dist.jobs.plots import top_classes

    confusion = np.arange(40 * 40).reshape(40, 40)
    shown, names = top_classes(confusion, [f"c{i}" for i in range(40)], k=5)
    assert names == ["c35", "c36", "c37", "c38", "c39", "other (35 classes)"]  # most true examples
    assert shown.shape == (6, 6) and shown.sum() == confusion.sum()  # every example still counted
    assert shown[0, 0] == confusion[35, 35] and shown[-1, -1] == confusion[:35, :35].sum()
    same, _ = top_classes(confusion[:5, :5], [f"c{i}" for i in range(5)], k=5)
    assert (same == confusion[:5, :5]).all()


def test_the_logged_table_keeps_its_columns_apart_for_class_names_shorter_than_its_header():
    from sentiment_dist.jobs.plots import format_metrics_table

    scores = {"precision": 0.5, "recall": 0.25, "f1": 0.125, "support": 8}
    table = format_metrics_table({"per_class": {"c0": scores, "c1": scores}, "accuracy": 0.5, "macro_f1": 0.4,
                                  "loss": 0.7}).splitlines()
    assert table[0].split() == ["class", "precision", "recall", "f1", "support"]
    assert table[1].split() == ["c0", "0.500", "0.250", "0.125", "8"]
    precision_ends = [table[0].index("precision") + len("precision"), *(row.index("0.500") + 5 for row in table[1:3])]
    assert len(set(precision_ends)) == 1  # each score right-aligned under its header


@pytest.mark.parametrize("tf_config", ["{not json", "[1, 2]", '{"task": {"type": "worker", "index": "first"}}'])
def test_a_malformed_distributed_environment_is_one_sentence(tmp_path, tf_config):
    result = run(module("train", *TINY, "strategy=multiworker"), cwd=tmp_path, check=False,
                 env=cli_env(TF_CONFIG=tf_config))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: TF_CONFIG is not a TensorFlow cluster description")
    assert not (tmp_path / "outputs").exists()


def test_an_output_directory_that_cannot_be_created_is_one_sentence(tmp_path):
    (tmp_path / "blocker").write_text("a file where a directory should go")
    result = run(module("train", *TINY, "paths.log_dir=blocker/runs"), cwd=tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: cannot create the run directory blocker/runs/train/" in result.stderr
    assert "set paths.log_dir (or hydra.run.dir) to a writable directory" in result.stderr


def test_a_run_dir_is_resumed_only_by_the_run_that_made_it(tmp_path):
    """Rerun on a run dir with other data (or another model), a run went on from the other's
    checkpoint as if it were its own: refused, and the run dir is left as it was."""
    first = [*TINY, "trainer.epochs=1", f"hydra.run.dir={tmp_path}/run"]
    run(module("train", *first), cwd=tmp_path)
    before = read_json(tmp_path / "run" / "metrics.json")
    result = run(module("train", *first, "dataset.max_rows=256"), cwd=tmp_path, check=False)
    assert one_sentence(result) == (f"error: hydra.run.dir={tmp_path}/run holds a run made with dataset.max_rows=512, and "
                                    "this one has 256; rerun it as it was to resume it, or give this run another "
                                    "hydra.run.dir.")
    assert read_json(tmp_path / "run" / "metrics.json") == before
    run(module("train", *first, "dataset.max_rows=256", "trainer.resume=false"), cwd=tmp_path)  # starting over
    assert read_json(tmp_path / "run" / "metrics.json")["data"]["train"] == 256  # its own data now


@pytest.mark.parametrize("setting", ["best_monitor", "early_stopping.monitor", "lr_on_plateau.monitor"])
def test_a_monitor_that_names_no_metric_is_refused_before_training(tmp_path, setting):
    """Keras' early stopping and LR-on-plateau only warn about it and stay off; the best epoch
    found it missing after a whole epoch and left a run dir with a checkpoint."""
    patience = [] if setting == "best_monitor" else [f"trainer.{setting.split('.')[0]}.patience=1"]
    result = run(module("train", *TINY, f"trainer.{setting}=val_f1", *patience, f"hydra.run.dir={tmp_path}/run"),
                 cwd=tmp_path, check=False)
    assert one_sentence(result).startswith(f"error: trainer.{setting}=val_f1 is not a logged metric; use one of [")
    assert "'val_macro_f1'" in result.stderr and not (tmp_path / "run").exists()


def test_a_disk_that_fills_up_is_one_sentence_and_leaves_no_run_dir(tmp_path):
    """Files above 200 kB fail to write (RLIMIT_FSIZE: EFBIG, as ENOSPC on a full disk), the
    first checkpoint among them: nothing to resume from, so no run dir is left."""
    import resource

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    command = module("train", *TINY, "trainer.verbose=true", "trainer.epochs=1", "model.vocab_size=4000",
                     "model.embedding_dim=64", f"hydra.run.dir={tmp_path}/run")
    # stdout and stderr as one stream, as on a terminal: the error must not go on the progress bar's line
    result = subprocess.run(command, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=300, preexec_fn=small_files)
    assert result.returncode == 2, result.stdout[-3000:]
    assert "Traceback" not in result.stdout and "━" in result.stdout  # the bar was drawn
    assert f"\nerror: cannot save a checkpoint in {tmp_path}/run/checkpoints (File too large); free space" in result.stdout
    assert not (tmp_path / "run").exists()
