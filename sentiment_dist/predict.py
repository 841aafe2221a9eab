"""`sentiment-predict MODEL [TEXT ...]`: label and probability per line of raw text.

MODEL is a run directory (its `model.keras`), an exported SavedModel
directory, or an exported `.tflite` file (see `sentiment-export`). Texts come
from the arguments, from `--file`, or from stdin (one per line).
"""

from __future__ import annotations

import argparse
import os
import sys

from sentiment_dist.runtime.errors import UserError, exit_on_user_error


def read_texts(args: argparse.Namespace) -> list[str]:
    if args.texts:
        return list(args.texts)
    if args.file:
        if not os.path.isfile(args.file):
            raise UserError(f"--file {args.file} does not exist; pass a text file with one review per line.")
        with open(args.file, encoding="utf-8", errors="replace") as handle:
            return [line.rstrip("\n") for line in handle if line.strip()]
    return [line.rstrip("\n") for line in sys.stdin if line.strip()]


def label_rows(probabilities, label_names: list[str]) -> list[tuple[str, float]]:
    """(label, probability of that label) per row; binary models output P(class 1)."""
    rows = []
    for row in probabilities:
        if len(label_names) == 2:
            positive = float(row[0])
            rows.append((label_names[1], positive) if positive >= 0.5 else (label_names[0], 1.0 - positive))
        else:
            best = int(row.argmax())
            rows.append((label_names[best], float(row[best])))
    return rows


def _read_labels(directory: str) -> list[str]:
    from sentiment_dist.jobs.rundir import RunDir

    path = os.path.join(directory, RunDir.LABELS)
    if not os.path.isfile(path):
        raise UserError(f"{path} is missing; export the model with sentiment-export.")
    return RunDir(directory).read_labels()


def load_predictor(path: str, batch_size: int):
    """(texts -> probabilities, label names) for a run dir, SavedModel or TFLite file."""
    import numpy as np
    import tensorflow as tf

    def batched(fn):
        def predict(texts: list[str]):
            return np.concatenate([fn(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)])

        return predict

    if path.endswith(".tflite"):
        if not os.path.isfile(path):
            raise UserError(f"{path} does not exist; write it with sentiment-export RUN_DIR --tflite.")
        from sentiment_dist.data.pipeline import make_vectorizer
        from sentiment_dist.jobs.rundir import RunDir

        directory = os.path.dirname(os.path.abspath(path))
        interpreter = tf.lite.Interpreter(model_path=path)
        runner = interpreter.get_signature_runner()
        (input_name,) = runner.get_input_details()
        length = int(runner.get_input_details()[input_name]["shape"][1])
        vectorizer = make_vectorizer(length, RunDir(directory).read_vocabulary())

        def predict_tflite(texts):  # the TFLite model takes one row of token ids
            tokens = vectorizer(tf.constant(texts)).numpy().astype(np.int32)
            return np.concatenate([next(iter(runner(**{input_name: row[None]}).values())) for row in tokens])

        return predict_tflite, _read_labels(directory)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        serve = tf.saved_model.load(path).signatures["serving_default"]
        directory = os.path.dirname(os.path.abspath(path))
        return batched(lambda texts: serve(text=tf.constant(texts))["probabilities"].numpy()), _read_labels(directory)
    from sentiment_dist.jobs.rundir import RunDir

    run = RunDir(path).load_classifier()
    if run.classifier.input_shape[1] is not None:  # saved before classifiers took any length
        return batched(lambda texts: run.model(tf.constant(texts)[:, None], training=False).numpy()), run.label_names
    return _by_length(run, batch_size), run.label_names


def _by_length(run, batch_size: int):
    """texts -> probabilities, as `run.model` scores them, in batches of similar lengths cut to
    their longest text: at 800 tokens most of each padded row is padding, which is masked anyway."""
    import numpy as np
    import tensorflow as tf

    from sentiment_dist.data.pipeline import longest_first, token_counts, vectorize

    score = tf.function(lambda tokens: run.classifier(tokens, training=False), reduce_retracing=True)

    def predict(texts: list[str]):
        tokens = vectorize(run.vectorizer, np.asarray(texts, dtype=object))
        order = longest_first(tokens)
        probabilities = np.empty((len(texts), run.classifier.output_shape[-1]), np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]  # its first row is its longest
            longest = max(int(token_counts(tokens[rows[:1]])[0]), 1)
            probabilities[rows] = score(tokens[rows, :longest]).numpy()
        return probabilities

    return predict


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sentiment-predict", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a run directory, an exported saved_model/ directory, or a .tflite file")
    parser.add_argument("texts", nargs="*", help="texts to classify (default: --file or stdin)")
    parser.add_argument("--file", help="a UTF-8 text file, one text per line")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    texts = read_texts(args)
    if not texts:
        raise UserError("no text to classify; pass texts as arguments, --file, or lines on stdin.")
    predict, label_names = load_predictor(args.model, args.batch_size)
    for text, (label, probability) in zip(texts, label_rows(predict(texts), label_names), strict=True):
        print(f"{label}\t{probability:.4f}\t{text}")


if __name__ == "__main__":
    main()
