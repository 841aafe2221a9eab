"""`sentiment-predict MODEL [TEXT ...]`: label and probability per line of raw text.

MODEL is a run directory (its `model.keras`), an exported SavedModel
directory, or an exported `.tflite` file (see `sentiment-export`). Texts come
from the arguments, from `--file`, or from stdin (one per line); blank ones are
skipped.

A `--file`, or stdin, is read, scored and written a chunk of lines at a time, so
millions of reviews take bounded memory. Launched under `horovodrun` or as
MultiWorker workers (TF_CONFIG), each process scores every world-size-th chunk
of a `--file` and the chief writes one output, in input order.
"""

from __future__ import annotations

import argparse
import codecs
import itertools
import os
import sys
from collections.abc import Iterator

from sentiment_dist.runtime.errors import UserError, exit_on_user_error

LINES_PER_CHUNK = 8192  # what one process scores at a time: memory stays bounded, batches stay full
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines splits on


def file_chunks(path: str | None, encoding: str, lines_per_chunk: int = LINES_PER_CHUNK,
                block_bytes: int = 1 << 22) -> Iterator[list[str]]:
    """The non-empty lines of `path` (None: stdin), `lines_per_chunk` at a time, read `block_bytes`
    at a time. Bytes that are not `encoding`, or NUL bytes (which no text file holds, and which
    latin-1 would decode), are refused with their offset: labels for them would be noise."""
    source = f"--file {path}" if path else "stdin"
    # Windows tools start utf-8 files with a byte order mark, no part of the first text: utf-8-sig
    # drops it (still counted in error offsets), as the utf-16 and utf-32 decoders drop theirs.
    codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    decoder = codecs.getincrementaldecoder(codec)("strict")
    read_bytes = decoded_chars = 0
    partial, lines = "", []
    # Unbuffered: each read returns what there is, so lines typed on a terminal end at one Ctrl-D.
    with open(path or sys.stdin.fileno(), "rb", buffering=0, closefd=bool(path)) as handle:
        while True:
            block = handle.read(block_bytes)
            read_bytes += len(block)
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as err:  # err.object: the bytes the decoder held, then `block`
                offset = read_bytes - len(err.object) + err.start
                raise UserError(f"{source} is not {encoding} text (byte 0x{err.object[err.start]:02x} at offset "
                                f"{offset}); pass a text file, with --encoding set to its encoding (e.g. latin-1).") from None
            if "\x00" in text:
                raise UserError(f"{source} holds NUL bytes at offset {decoded_chars + text.index(chr(0))}: it is not "
                                "a text file; pass a text file with one review per line.")
            decoded_chars += len(text)
            pieces = (partial + text).splitlines(keepends=True)
            # The last piece may go on in the next block (a "\r" there, then "\n", only adds an empty line).
            partial = pieces.pop() if block and pieces and pieces[-1][-1] not in LINE_BREAKS else ""
            lines.extend(line for piece in pieces if (line := piece.rstrip(LINE_BREAKS)).strip())
            while len(lines) >= lines_per_chunk:
                yield lines[:lines_per_chunk]
                del lines[:lines_per_chunk]
            if not block:
                break
    if lines:
        yield lines


def input_chunks(args: argparse.Namespace) -> Iterator[list[str]]:
    if args.texts:  # a blank one is skipped, as a blank line of --file or stdin is: nothing to label
        return iter([[text for text in args.texts if text.strip()]])
    # stdin is read as --file is: its line breaks, its encoding and its bad bytes alike.
    return file_chunks(args.file, args.encoding, args.chunk_lines)


def check_arguments(args: argparse.Namespace) -> None:
    """What can be told before TensorFlow starts: a missing --file, an unknown encoding, a bad --out."""
    try:
        codecs.lookup(args.encoding)
    except LookupError:
        raise UserError(f"--encoding {args.encoding} is not a known encoding; use e.g. utf-8 or latin-1.") from None
    if args.file and os.path.isdir(args.file):
        raise UserError(f"--file {args.file} is a directory; pass a text file with one review per line.")
    # Not isfile: a pipe (`--file <(zcat reviews.gz)`, /dev/stdin) is read as a file is.
    if args.file and not os.path.exists(args.file):
        raise UserError(f"--file {args.file} does not exist; pass a text file with one review per line.")
    # Else found out only once every text is scored: the finished output cannot be renamed onto it.
    if args.out and (os.path.isdir(args.out) or args.out.endswith(os.sep)):
        raise UserError(f"--out {args.out} names a directory; pass --out a file to write the labels to, e.g. "
                        f"{os.path.join(args.out, 'labels.tsv')}.")
    if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        raise UserError(f"--out {args.out}: its directory does not exist; create it or pass --out a file in an "
                        "existing directory.")
    for name in ("batch_size", "chunk_lines"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)} must be at least 1.")


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sentiment-predict", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a run directory, an exported saved_model/ directory, or a .tflite file")
    parser.add_argument("texts", nargs="*", help="texts to classify, blank ones skipped (default: --file or stdin)")
    parser.add_argument("--file", help="a text file, one text per line")
    parser.add_argument("--encoding", default="utf-8", help="the encoding of --file or stdin (default: utf-8)")
    parser.add_argument("--out", help="write the labels to this file (written whole or not at all) instead of stdout")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--chunk-lines", type=int, default=LINES_PER_CHUNK,
                        help=f"lines of --file or stdin each process scores at a time (default: {LINES_PER_CHUNK}); memory grows with it")
    parser.add_argument("--strategy", choices=["auto", "single", "horovod", "multiworker"], default="auto",
                        help="auto: horovod under horovodrun, multiworker with TF_CONFIG, else single")
    args = parser.parse_args(argv)
    check_arguments(args)
    chunks = input_chunks(args)
    first = next(chunks, None)  # read before TensorFlow starts: a file that is not text is told at once
    if not first:
        raise UserError("no text to classify; pass texts as arguments, --file, or lines on stdin.")
    from sentiment_dist.jobs.serving import predict_stream

    count = predict_stream(args.model, itertools.chain([first], chunks), args.out, args.batch_size, args.strategy)
    if count == 0:
        raise UserError("no text to classify; pass texts as arguments, --file, or lines on stdin.")


if __name__ == "__main__":
    main()
