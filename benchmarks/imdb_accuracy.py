"""Accuracy on real IMDB: our LSTMs against the TF-IDF + logistic regression bar.

Both sides use the same seeded 50/50 split of the 50k-review CSV (22,500
train / 2,500 validation / 25,000 test with `conf/dataset/imdb.yaml`): the
baseline loads it through `sentiment_dist.data.load_dataset` with that config,
each LSTM is trained by the real CLI (`python -m sentiment_dist.train
dataset=imdb ...`) in a subprocess and read back from its run dir
(`metrics.json`, `history.json`).

    python benchmarks/imdb_accuracy.py                                  # full: bilstm, 4 epochs
    python benchmarks/imdb_accuracy.py --models lstm bilstm stacked_lstm attention_lstm
    python benchmarks/imdb_accuracy.py --max-rows 2000 --epochs 1       # smoke run

TF-IDF + LR is the bar: an LSTM that does not clear it is not worth its cost.
"""

from __future__ import annotations

import argparse
import sys
import time

from imdb_data import RUNS_DIR, imdb_csv, run_cli, write_results
from omegaconf import OmegaConf

from sentiment_dist.config.schema import ImdbDataset

MODELS = ("lstm", "bilstm", "stacked_lstm", "attention_lstm")


def load_split(csv: str, max_rows: int | None):
    """The split the LSTM runs see: `conf/dataset/imdb.yaml` with `path` (and `max_rows`) set."""
    from sentiment_dist.data import load_dataset

    cfg = OmegaConf.merge(OmegaConf.structured(ImdbDataset), {"name": "imdb", "path": str(csv), "max_rows": max_rows})
    return load_dataset(cfg)


def tfidf_baseline(data, c_values: list[float]) -> dict:
    """Word 1-2 grams, sublinear tf, min_df=2; C picked on validation; final fit on train + validation."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    def vectorizer():
        return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, max_df=0.95, dtype=np.float32)

    started = time.perf_counter()
    features = vectorizer()
    train_x = features.fit_transform(data.train.texts)
    validation_x = features.transform(data.validation.texts)
    tuning = {}
    for c in c_values:
        model = LogisticRegression(C=c, solver="liblinear", max_iter=1000).fit(train_x, data.train.labels)
        tuning[c] = float(accuracy_score(data.validation.labels, model.predict(validation_x)))
        print(f"[tfidf] C={c:g}: validation accuracy {tuning[c]:.4f}", flush=True)
    best_c = max(tuning, key=tuning.get)
    fit_started = time.perf_counter()
    features = vectorizer()
    texts = np.concatenate([data.train.texts, data.validation.texts])
    labels = np.concatenate([data.train.labels, data.validation.labels])
    model = LogisticRegression(C=best_c, solver="liblinear", max_iter=1000).fit(features.fit_transform(texts), labels)
    fit_seconds = time.perf_counter() - fit_started
    predicted = model.predict(features.transform(data.test.texts))
    total = time.perf_counter() - started
    result = {
        "model": "tfidf_logreg",
        "accuracy": float(accuracy_score(data.test.labels, predicted)),
        "macro_f1": float(f1_score(data.test.labels, predicted, average="macro")),
        "best_c": best_c,
        "validation_accuracy_by_c": tuning,
        "features": len(features.vocabulary_),
        "final_fit_seconds": fit_seconds,
        "total_seconds": total,
    }
    print(f"[tfidf] C={best_c:g}: test accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}, "
          f"{total:.1f} s in all ({fit_seconds:.1f} s final fit)", flush=True)
    return result


def lstm_run(model: str, csv: str, args) -> dict:
    run_dir = RUNS_DIR / "imdb_accuracy" / model
    command = [
        sys.executable, "-m", "sentiment_dist.train", "dataset=imdb", f"dataset.path={csv}", f"model={model}",
        "logger=none", "trainer.verbose=false", f"trainer.epochs={args.epochs}", f"hydra.run.dir={run_dir}",
        *([f"dataset.max_rows={args.max_rows}"] if args.max_rows else []), *args.extra,
    ]
    return classifier_run(model, command, run_dir, {"model": model})


def classifier_run(label: str, command: list[str], run_dir, row: dict) -> dict:
    """Run one classifier CLI command; `row` plus its test metrics and timings (or why it failed)."""
    outcome = run_cli(label, command, run_dir)
    row = {**row, "status": outcome["status"], "command": command}
    if outcome["status"] != "ok":
        return {**row, "reason": outcome["reason"]}
    metrics, history = outcome["metrics"], outcome["history"]
    row.update(
        accuracy=metrics["test"]["accuracy"],
        macro_f1=metrics["test"]["macro_f1"],
        epochs_run=metrics["epochs_run"],
        seconds_per_epoch=sum(history["epoch_seconds"]) / len(history["epoch_seconds"]),
        train_seconds=metrics["train_seconds"],
        total_seconds=outcome["wall_seconds"],
        examples_per_second=metrics["examples_per_second"],
        val_accuracy_by_epoch=history["val_accuracy"],
        environment=metrics["environment"],
    )
    print(f"[{label}] test accuracy {row['accuracy']:.4f}, macro-F1 {row['macro_f1']:.4f}, "
          f"{row['seconds_per_epoch']:.1f} s/epoch, {row['total_seconds']:.0f} s in all", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["bilstm"],
                        help=f"any of {', '.join(MODELS)} (space- or comma-separated)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--max-rows", type=int, default=None, help="seeded sample of the CSV (default: all 50k)")
    parser.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides for every LSTM run")
    parser.add_argument("--c-values", default="1,4,16", help="logistic regression C values tried on validation")
    parser.add_argument("--skip-tfidf", action="store_true")
    args = parser.parse_args()
    models = [m for item in args.models for m in item.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; use {', '.join(MODELS)}")

    csv = str(imdb_csv())
    data = load_split(csv, args.max_rows)
    sizes = {name: len(getattr(data, name)) for name in ("train", "validation", "test")}
    print(f"IMDB split: {sizes['train']} train / {sizes['validation']} validation / {sizes['test']} test", flush=True)
    rows = []
    baseline = None
    if not args.skip_tfidf:
        baseline = tfidf_baseline(data, [float(c) for c in args.c_values.split(",")])
        rows.append({"model": "TF-IDF 1-2 grams + LR", "accuracy": baseline["accuracy"],
                     "macro_f1": baseline["macro_f1"], "total_seconds": baseline["total_seconds"]})
    del data
    lstm_rows = [lstm_run(model, csv, args) for model in models]
    for row in lstm_rows:
        rows.append({"model": row["model"], "accuracy": row.get("accuracy"), "macro_f1": row.get("macro_f1"),
                     "seconds_per_epoch": row.get("seconds_per_epoch"), "epochs_run": row.get("epochs_run"),
                     "total_seconds": row.get("total_seconds"), "examples_per_second": row.get("examples_per_second"),
                     "status": row["status"] if row["status"] == "ok" else f"failed: {row['reason'][-200:]}"})
    columns = [("model", "model"), ("accuracy", "test accuracy"), ("macro_f1", "macro-F1"),
               ("seconds_per_epoch", "s/epoch"), ("epochs_run", "epochs"), ("total_seconds", "total s"),
               ("examples_per_second", "train examples/s"), ("status", "status")]
    notes = [
        f"Seeded split of the 50k IMDB CSV (conf/dataset/imdb.yaml, seed 42): {sizes['train']} train / "
        f"{sizes['validation']} validation / {sizes['test']} test"
        + (f" (dataset.max_rows={args.max_rows})." if args.max_rows else "."),
        "LSTMs: `python -m sentiment_dist.train dataset=imdb model=<m> trainer.epochs="
        f"{args.epochs}` (defaults otherwise{', plus ' + ' '.join(args.extra) if args.extra else ''}); the test "
        "metrics are those of the best epoch by val_loss (early stopping and LR on plateau as configured).",
        "s/epoch: mean training time per epoch (validation excluded); total s: wall time of the whole CLI run "
        "(start-up, vocabulary, tokenizing, training, evaluation, saving).",
    ]
    if baseline:
        notes.append(f"TF-IDF: word 1-2 grams, sublinear tf, min_df=2, max_df=0.95; liblinear LR with C="
                     f"{baseline['best_c']:g} chosen on validation among {args.c_values}, refit on train + validation; "
                     "total s covers vectorizing, tuning, the final fit and prediction.")
    write_results("imdb_accuracy", "IMDB accuracy: LSTMs vs TF-IDF + logistic regression",
                  {"split": sizes, "args": vars(args), "tfidf": baseline, "lstm": lstm_rows},
                  [("Test set", rows, columns)], notes)


if __name__ == "__main__":
    main()
