"""Several finished IMDB classifiers, each alone and averaged (an ensemble), on the same test split.

Each run dir is a `python -m sentiment_dist.train` (or `finetune`) run on
`dataset=imdb` (e.g. the ones `imdb_pretraining.py` leaves under
`benchmarks/data/runs/`). Its saved `model.keras` takes raw text, so every
run is scored on the 25,000 test reviews of the seeded split exactly as
`sentiment-predict` would score them; the ensemble averages the
probabilities. ULMFiT's 95.4% on IMDB is such an average (of a forward and a
backward model).

    python benchmarks/imdb_ensemble.py --runs benchmarks/data/runs/imdb_pretraining_400/pretrained \
        benchmarks/data/runs/imdb_pretraining_lm8/pretrained
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from imdb_accuracy import load_split
from imdb_data import imdb_csv, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="classifier run dirs (each with model.keras)")
    parser.add_argument("--max-rows", type=int, default=None, help="seeded sample of the CSV (default: all 50k)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--results-name", default="imdb_ensemble")
    args = parser.parse_args()
    runs = [Path(run).resolve() for run in args.runs]
    missing = [str(run) for run in runs if not (run / "model.keras").is_file()]
    if missing:
        sys.exit(f"imdb_ensemble: no model.keras in {', '.join(missing)}; pass finished classifier run dirs.")

    from sentiment_dist.jobs.serving import load_predictor

    data = load_split(str(imdb_csv()), args.max_rows)
    texts, labels = [str(text) for text in data.test.texts], data.test.labels
    rows, probabilities = [], []
    for run in runs:
        predict, label_names, _ = load_predictor(str(run), args.batch_size)
        if label_names != data.label_names:
            sys.exit(f"imdb_ensemble: {run} predicts {label_names}, the IMDB split has {data.label_names}; "
                     "pass runs trained on dataset=imdb.")
        # a run's predictions are kept beside its model: the next ensemble reuses them
        cache = run / f"imdb_test_positive{f'_{args.max_rows}' if args.max_rows else ''}.npy"
        started = time.perf_counter()
        cached = cache.is_file() and cache.stat().st_mtime > (run / "model.keras").stat().st_mtime
        if cached:
            positive = np.load(cache)
        else:
            positive = predict(texts)[:, 0]  # binary models output P(class 1)
            np.save(cache, positive)
        seconds = time.perf_counter() - started
        probabilities.append(positive)
        accuracy = float(np.mean((positive >= 0.5) == labels))
        recorded = json.loads((run / "metrics.json").read_text())["test"]["accuracy"]
        rows.append({"model": str(run.relative_to(Path.cwd()) if run.is_relative_to(Path.cwd()) else run),
                     "accuracy": accuracy, "recorded_accuracy": recorded, "seconds": None if cached else seconds})
        print(f"[{run.name}] test accuracy {accuracy:.4f} (its run recorded {recorded:.4f}), "
              f"{'cached predictions' if cached else f'{seconds:.0f} s'}", flush=True)
    if len(runs) > 1:
        mean = np.mean(probabilities, axis=0)
        probabilities.append(mean)
        rows.append({"model": f"average of the {len(runs)} above", "accuracy": float(np.mean((mean >= 0.5) == labels))})
        print(f"[ensemble] test accuracy {rows[-1]['accuracy']:.4f}", flush=True)
    by_length, length_columns = accuracy_by_length(runs[0], texts, labels, rows, probabilities)
    write_results(
        args.results_name, "IMDB: classifiers alone and averaged",
        {"runs": [str(run) for run in runs], "test_reviews": len(texts), "rows": rows, "by_length": by_length},
        [("Test set", rows, [("model", "model"), ("accuracy", "test accuracy"),
                             ("recorded_accuracy", "recorded by its run"), ("seconds", "predict s (empty: cached)")]),
         ("Test accuracy by review length", by_length, [("model", "model"), *length_columns])],
        ["Seeded split of the 50k IMDB CSV (conf/dataset/imdb.yaml, seed 42); each model reads raw test text "
         "through its saved vectorizer; the ensemble averages P(positive).",
         "Review length: its tokens as the first run's vectorizer splits them (every token, in or out of the "
         "vocabulary); a classifier reads the first model.sequence_length of them (its config.yaml)."],
    )


LENGTH_BUCKETS = [(0, 200), (200, 400), (400, 800), (800, None)]


def accuracy_by_length(run: Path, texts: list[str], labels: np.ndarray, rows: list[dict],
                       probabilities: list[np.ndarray]) -> tuple[list[dict], list[tuple[str, str]]]:
    """Each model's accuracy per review-length bucket: where truncation at model.sequence_length costs."""
    from sentiment_dist.data.tokens import Encoder
    from sentiment_dist.jobs.rundir import RunDir

    _, lengths = Encoder(RunDir(str(run)).read_vocabulary()).encode(np.array(texts, dtype=object))
    masks = {(low, high): (lengths > low) & ((lengths <= high) if high else True) for low, high in LENGTH_BUCKETS}
    names = {bucket: (f"{bucket[0] + 1}-{bucket[1]}" if bucket[1] else f">{bucket[0]}") for bucket in masks}
    table = []
    for row, positive in zip(rows, probabilities, strict=True):
        correct = (positive >= 0.5) == labels
        table.append({"model": row["model"], **{names[b]: float(np.mean(correct[m])) for b, m in masks.items()}})
    return table, [(names[b], f"{names[b]} tokens ({int(m.sum())} reviews)") for b, m in masks.items()]


if __name__ == "__main__":
    main()
