"""`sentiment-predict RUN_DIR [TEXT ...]`: label and probability per line of raw text.

Texts come from the arguments, from `--file`, or from stdin (one per line).
"""

from __future__ import annotations

import argparse
import os
import sys

from sentiment_dist.errors import UserError, exit_on_user_error


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


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sentiment-predict", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a finished run directory (holds model.keras)")
    parser.add_argument("texts", nargs="*", help="texts to classify (default: --file or stdin)")
    parser.add_argument("--file", help="a UTF-8 text file, one text per line")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    texts = read_texts(args)
    if not texts:
        raise UserError("no text to classify; pass texts as arguments, --file, or lines on stdin.")
    import numpy as np
    import tensorflow as tf

    from sentiment_dist.runs import load_run

    run = load_run(args.run_dir)
    probabilities = np.concatenate(
        [
            run.model(tf.constant(texts[start : start + args.batch_size])[:, None], training=False).numpy()
            for start in range(0, len(texts), args.batch_size)
        ]
    )
    for text, (label, probability) in zip(texts, label_rows(probabilities, run.label_names), strict=True):
        print(f"{label}\t{probability:.4f}\t{text}")


if __name__ == "__main__":
    main()
