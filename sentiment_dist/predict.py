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


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    from sentiment_dist.jobs.serving import label_rows, load_predictor

    parser = argparse.ArgumentParser(prog="sentiment-predict", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a run directory, an exported saved_model/ directory, or a .tflite file")
    parser.add_argument("texts", nargs="*", help="texts to classify (default: --file or stdin)")
    parser.add_argument("--file", help="a UTF-8 text file, one text per line")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    texts = read_texts(args)
    if not texts:
        raise UserError("no text to classify; pass texts as arguments, --file, or lines on stdin.")
    predict, label_names, threshold = load_predictor(args.model, args.batch_size)
    for text, (label, probability) in zip(texts, label_rows(predict(texts), label_names, threshold), strict=True):
        print(f"{label}\t{probability:.4f}\t{text}")


if __name__ == "__main__":
    main()
