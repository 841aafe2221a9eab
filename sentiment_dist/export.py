"""`sentiment-export RUN_DIR [--out DIR] [--tflite]`: serving formats of a trained model
(a SavedModel taking raw strings, TFLite files; see `sentiment_dist.jobs.serving`)."""

from __future__ import annotations

import argparse
import os

from sentiment_dist.runtime.errors import UserError, exit_on_user_error


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    from sentiment_dist.jobs.serving import export_run

    parser = argparse.ArgumentParser(prog="sentiment-export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a finished run directory")
    parser.add_argument("--out", help="output directory (default: RUN_DIR/export)")
    parser.add_argument("--tflite", action="store_true", help="also write float and dynamic-range TFLite files")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.run_dir):
        raise UserError(f"run directory {args.run_dir} does not exist; pass the path printed by training.")
    written = export_run(args.run_dir, args.out or os.path.join(args.run_dir, "export"), args.tflite)
    for kind, path in written.items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
