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
        return read_text_file(args.file, args.encoding)
    return [line.rstrip("\n") for line in sys.stdin if line.strip()]


def read_text_file(path: str, encoding: str) -> list[str]:
    """The non-empty lines of `path`. Bytes that are not `encoding`, or NUL bytes (which no text
    file holds, and which latin-1 would decode), are refused: labels for them would be noise."""
    if not os.path.isfile(path):
        raise UserError(f"--file {path} does not exist; pass a text file with one review per line.")
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        raise UserError(f"--file {path} is not {encoding} text (byte 0x{data[err.start]:02x} at offset {err.start}); "
                        "pass a text file, with --encoding set to its encoding (e.g. latin-1).") from None
    except LookupError:
        raise UserError(f"--encoding {encoding} is not a known encoding; use e.g. utf-8 or latin-1.") from None
    if "\x00" in text:
        raise UserError(f"--file {path} holds NUL bytes at offset {text.index(chr(0))}: it is not a text file; "
                        "pass a text file with one review per line.")
    return [line for line in text.splitlines() if line.strip()]


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    from sentiment_dist.jobs.serving import label_rows, load_predictor

    parser = argparse.ArgumentParser(prog="sentiment-predict", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a run directory, an exported saved_model/ directory, or a .tflite file")
    parser.add_argument("texts", nargs="*", help="texts to classify (default: --file or stdin)")
    parser.add_argument("--file", help="a text file, one text per line")
    parser.add_argument("--encoding", default="utf-8", help="the --file's encoding (default: utf-8)")
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
