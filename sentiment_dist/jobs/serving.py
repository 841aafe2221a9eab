"""Serving a trained model: a predictor over a run dir, an exported SavedModel or a TFLite file,
and the export that writes those formats (the `predict` and `export` commands' library).

Export writes `<run dir>/export/` (or `--out`):
- `saved_model/`: a TF SavedModel whose `serving_default` signature takes raw
  strings (`text`, shape [batch]) and returns `probabilities`: TF Serving ready.
- with `--tflite`, `model.tflite` (float) and `model_dynamic_range.tflite`
  (weights quantized to 8 bits). TFLite has no builtin string ops, so these
  take token ids (`tokens`, shape [1, sequence_length]); `vocabulary.txt`
  beside them turns text into ids (the predictor does this).
- `labels.json` and `vocabulary.txt`.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator

import numpy as np

from sentiment_dist.runtime.errors import UserError
from sentiment_dist.runtime.io import disk_error, first_missing, remedy

SAVED_MODEL = "saved_model"
TFLITE_FILES = {"float": "model.tflite", "dynamic_range": "model_dynamic_range.tflite"}


def export_run(run_dir: str, out: str, tflite: bool) -> dict[str, str]:
    """Write the export into a staging dir beside `out`, renamed into place when complete: a
    failure (a full disk: one sentence) leaves neither half an export nor the dirs made for it."""
    parent = os.path.dirname(os.path.abspath(out))
    missing = first_missing(parent)
    try:
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    except OSError as err:
        raise UserError(f"cannot create the export directory {out} ({err.strerror or err}); pass --out a "
                        "directory you can write to.") from None
    try:
        import keras
        import tensorflow as tf

        from sentiment_dist.jobs.rundir import RunDir
        from sentiment_dist.runtime.distribute import graph_function

        run = RunDir(run_dir).load_classifier()
        model = run.model

        @graph_function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(text):
            return {"probabilities": model(text[:, None], training=False)}

        module = tf.Module()
        module.model = model
        tf.saved_model.save(module, os.path.join(staging, SAVED_MODEL), signatures={"serving_default": serve})
        written = {"saved_model": os.path.join(out, SAVED_MODEL)}
        if tflite:
            classifier = run.classifier
            length = run.config.model.sequence_length  # TFLite wants a fixed shape: the vectorizer's
            tokens = keras.Input(batch_shape=(1, length), dtype="int32", name="tokens")
            converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(tokens, classifier(tokens)))
            for kind, name in TFLITE_FILES.items():
                converter.optimizations = [tf.lite.Optimize.DEFAULT] if kind == "dynamic_range" else []
                with open(os.path.join(staging, name), "wb") as handle:
                    handle.write(converter.convert())
                written[f"tflite_{kind}"] = os.path.join(out, name)
        for name in (RunDir.LABELS, RunDir.VOCABULARY):
            shutil.copy(os.path.join(run_dir, name), staging)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException as err:
        shutil.rmtree(missing or staging, ignore_errors=True)  # what was made for the export
        reason = disk_error(err)
        if reason:
            raise UserError(f"cannot write the export to {out} ({reason}); {remedy(reason)} or pass --out another "
                            "directory.") from None
        raise
    return written


def labeled(probabilities, label_names: list[str], threshold: float = 0.5) -> tuple[list[str], np.ndarray]:
    """Each row's label and the probability of that label; binary models output P(class 1),
    positive from the run's decision threshold."""
    probabilities = np.asarray(probabilities)
    if len(label_names) == 2:
        positive = probabilities[:, 0]
        chosen = (positive >= threshold).astype(int)
        return [label_names[c] for c in chosen], np.where(chosen == 1, positive, 1.0 - positive)
    best = probabilities.argmax(axis=1)
    return [label_names[b] for b in best], probabilities[np.arange(len(best)), best]


def predict_stream(model: str, chunks: Iterable[list[str]], out: str | None, batch_size: int, strategy: str) -> int:
    """Label every text of `chunks` with `model` and write `label<TAB>probability<TAB>text` lines
    to `out` (whole or not at all) or stdout, as they are scored; return how many.

    Several processes (horovodrun, MultiWorker): each scores every world-size-th chunk, every
    process reads every chunk (so all meet a bad line at the same place and stop together), and
    the chief gathers each round's scores and writes them in input order."""
    from omegaconf import OmegaConf

    from sentiment_dist.runtime.distribute import make_distribution

    dist = make_distribution(OmegaConf.create({"name": _strategy(strategy)}))
    problem = None
    try:
        predict, label_names, threshold = load_predictor(model, batch_size)
    except UserError as err:
        problem = str(err)
    dist.require_everywhere(problem, f"the model {model} could not be loaded on every process")
    outputs = 1 if len(label_names) == 2 else len(label_names)
    count = 0
    with _Output(out if dist.is_chief else os.devnull) as write:
        for round_chunks in _rounds(chunks, dist.world_size):
            mine = round_chunks[dist.rank] if dist.rank < len(round_chunks) else []
            scores = predict(mine) if mine else np.zeros((0, outputs), np.float32)
            if dist.world_size > 1:
                longest = max(len(chunk) for chunk in round_chunks)
                padded = np.zeros((longest, outputs), np.float32)
                padded[: len(scores)] = scores
                gathered = dist.gather(padded)
            else:
                gathered = [scores]
            for chunk, chunk_scores in zip(round_chunks, gathered, strict=False):
                if dist.is_chief:
                    labels, probabilities = labeled(chunk_scores[: len(chunk)], label_names, threshold)
                    write("".join(f"{label}\t{probability:.4f}\t{text}\n"
                                  for label, probability, text in zip(labels, probabilities, chunk, strict=True)))
                count += len(chunk)
        if count == 0:
            raise UserError("no text to classify; pass texts as arguments, --file, or lines on stdin.")
    return count


def _strategy(name: str) -> str:
    """`auto`: what the launcher says, as `make_distribution` knows it."""
    if name != "auto":
        return name
    from sentiment_dist.runtime.launch import RANK_VARIABLES

    if any(os.environ.get(variable) for variable in RANK_VARIABLES):
        return "horovod"
    return "multiworker" if os.environ.get("TF_CONFIG") else "single"


def _rounds(chunks: Iterable[list[str]], size: int) -> Iterator[list[list[str]]]:
    """`size` chunks at a time (the last round may hold fewer)."""
    batch = []
    for chunk in chunks:
        batch.append(chunk)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Output:
    """stdout, or a file written under a temporary name beside it and renamed when complete: an
    error (a bad line, a full disk) leaves no output that looks finished."""

    def __init__(self, path: str | None):
        self.path = path

    def __enter__(self):
        if self.path is None or self.path == os.devnull:
            self.handle = sys.stdout if self.path is None else open(os.devnull, "w")
            self.temp = None
        else:
            try:
                fd, self.temp = tempfile.mkstemp(prefix=".predict-", dir=os.path.dirname(os.path.abspath(self.path)))
            except OSError as err:
                raise UserError(f"cannot write --out {self.path} ({err.strerror or err}); pass --out a file in a "
                                "directory you can write to.") from None
            self.handle = os.fdopen(fd, "w", encoding="utf-8")

        def write(text: str) -> None:
            self.handle.write(text)
            self.handle.flush()

        return write

    def __exit__(self, kind, error, traceback) -> None:
        if self.temp is None:
            if self.handle is not sys.stdout:
                self.handle.close()
            return
        try:
            self.handle.close()  # flushes: a full disk may show here
            if error is None:
                os.chmod(self.temp, 0o644)
                os.replace(self.temp, self.path)
                return
        except OSError as err:
            error = err
        os.remove(self.temp)
        reason = disk_error(error)
        if reason:
            raise UserError(f"cannot write --out {self.path} ({reason}); {remedy(reason)} or pass --out another "
                            "file.") from None
        if kind is None:
            raise error


def _read_labels(directory: str) -> tuple[list[str], float]:
    from sentiment_dist.jobs.rundir import RunDir

    path = os.path.join(directory, RunDir.LABELS)
    if not os.path.isfile(path):
        raise UserError(f"{path} is missing; export the model with sentiment-export.")
    return RunDir(directory).read_labels(), RunDir(directory).read_threshold()


def load_predictor(path: str, batch_size: int):
    """(texts -> probabilities, label names, decision threshold) for a run dir, SavedModel or TFLite file."""
    if os.path.isfile(path) and not path.endswith(".tflite"):
        raise UserError(f"{path} is a file, not a model; pass a run directory, an exported saved_model/ directory "
                        "or a .tflite file (sentiment-export writes the last two).")
    import numpy as np
    import tensorflow as tf

    def batched(fn):
        def predict(texts: list[str]):
            return np.concatenate([fn(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)])

        return predict

    if path.endswith(".tflite"):
        if not os.path.isfile(path):
            raise UserError(f"{path} does not exist; write it with sentiment-export RUN_DIR --tflite.")
        from sentiment_dist.data.tokenizer import make_vectorizer
        from sentiment_dist.jobs.rundir import RunDir

        directory = os.path.dirname(os.path.abspath(path))
        try:
            with warnings.catch_warnings():  # its deprecation notice: ours to act on, not the user's
                warnings.simplefilter("ignore", UserWarning)
                interpreter = tf.lite.Interpreter(model_path=path)
        except ValueError as err:  # not a TFLite flatbuffer
            raise UserError(f"{path} is not a TFLite model ({str(err).splitlines()[0]}); write one with "
                            "sentiment-export RUN_DIR --tflite.") from None
        runner = interpreter.get_signature_runner()
        (input_name,) = runner.get_input_details()
        length = int(runner.get_input_details()[input_name]["shape"][1])
        vectorizer = make_vectorizer(length, RunDir(directory).read_vocabulary())

        def predict_tflite(texts):  # the TFLite model takes one row of token ids
            tokens = vectorizer(tf.constant(texts)).numpy().astype(np.int32)
            return np.concatenate([next(iter(runner(**{input_name: row[None]}).values())) for row in tokens])

        return (predict_tflite, *_read_labels(directory))
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        serve = tf.saved_model.load(path).signatures["serving_default"]
        directory = os.path.dirname(os.path.abspath(path))
        return (batched(lambda texts: serve(text=tf.constant(texts))["probabilities"].numpy()), *_read_labels(directory))
    from sentiment_dist.jobs.rundir import RunDir

    run = RunDir(path).load_classifier()
    if run.classifier.input_shape[1] is not None:  # saved before classifiers took any length
        return batched(lambda texts: run.model(tf.constant(texts)[:, None], training=False).numpy()), run.label_names, run.threshold
    return _by_length(run, batch_size), run.label_names, run.threshold


def _by_length(run, batch_size: int):
    """texts -> probabilities, as `run.model` scores them, in batches of similar lengths cut to
    their longest text."""
    import numpy as np

    from sentiment_dist.data.tokens import tokenize_split
    from sentiment_dist.training.classification import length_sorted_scorer

    score = length_sorted_scorer(run.classifier, batch_size)

    def predict(texts: list[str]):
        return score(tokenize_split(run.vectorizer, np.asarray(texts, dtype=object), np.zeros(len(texts), np.int32)))

    return predict
