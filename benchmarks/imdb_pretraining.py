"""Does language-model pretraining lift the LSTM on real IMDB? With vs without, next to TF-IDF + LR.

Every stage is the real CLI in a subprocess, on the seeded 50/50 split of the
50k IMDB CSV (`conf/dataset/imdb.yaml`: 22,500 train / 2,500 validation /
25,000 test). The language model reads the training texts only; the test
texts never reach it (its perplexity is scored on a seeded sample of them).

1. `lm`: `python -m sentiment_dist.pretrain experiment=pretrain_imdb`, a
   BiLSTM language model (forward and backward) on the 22,500 training texts;
2. `scratch`: `python -m sentiment_dist.train`, the classifier from random weights;
3. `pretrained`: the same command and trainer with `init.from=<lm>`: the only
   difference from `scratch` is where the embedding and encoder start;
4. `ulmfit`: `python -m sentiment_dist.finetune init.from=<lm>`, gradual
   unfreezing and discriminative learning rates (`conf/finetune/default.yaml`);
5. TF-IDF 1-2 grams + logistic regression on the same split (`imdb_accuracy.py`).

All classifiers share the architecture (`--model ...` overrides) and the
number of epochs (`--epochs`), and keep the weights of their best epoch by
validation loss (or the `trainer.best_monitor` given with `--classifier`; the
notes read it from each run's config).

    python benchmarks/imdb_pretraining.py                                   # about an hour on 2 cores
    python benchmarks/imdb_pretraining.py --lm-dir benchmarks/data/runs/imdb_pretraining/lm   # reuse the LM
    python benchmarks/imdb_pretraining.py --lm-from benchmarks/data/runs/imdb_pretraining/lm --lm-epochs 4  # train it on
    python benchmarks/imdb_pretraining.py --max-rows 2000 --lm-epochs 1 --epochs 1            # smoke run
"""

from __future__ import annotations

import argparse
import os
import sys

from imdb_accuracy import classifier_run, load_split, tfidf_baseline
from imdb_data import RUNS_DIR, imdb_csv, run_cli, write_results

# The classifier and language model architecture (a pretrain run fixes the shape keys).
MODEL = ["model=bilstm", "model.vocab_size=20000", "model.sequence_length=200", "model.embedding_dim=128",
         "model.units=256", "model.pooling=max"]


def common(csv: str, args, run_dir, task: str = "train") -> list[str]:
    model = [*MODEL, *args.model]
    if task == "finetune":  # its model is the pretrain run's; `+model.*` adds to it (pooling, head)
        model = [f"+{override}" for override in model if not override.startswith("model=")]
    return [f"dataset.path={csv}", "logger=none", "trainer.verbose=false", f"hydra.run.dir={run_dir}",
            *model, *([f"dataset.max_rows={args.max_rows}"] if args.max_rows else [])]


def language_model(csv: str, args) -> tuple[str, dict]:
    if args.lm_dir:
        import json
        from pathlib import Path

        metrics = json.loads((Path(args.lm_dir) / "metrics.json").read_text())
        return args.lm_dir, {"stage": "lm", "status": "reused", "run_dir": args.lm_dir, "metrics": metrics}
    run_dir = RUNS_DIR / args.results_name / "lm"
    # --lm-from: more epochs on the same texts, so every group keeps the one learning rate
    more = [f"init.from={args.lm_from}", "lm.lr_multipliers=null"] if args.lm_from else []
    command = [sys.executable, "-m", "sentiment_dist.pretrain", "experiment=pretrain_imdb",
               f"trainer.epochs={args.lm_epochs}", *common(csv, args, run_dir), *more]
    outcome = run_cli("lm", command, run_dir)
    if outcome["status"] != "ok":
        sys.exit(f"imdb_pretraining: the language model failed ({outcome['reason']}).")
    metrics = outcome["metrics"]
    test = metrics["test"]
    print(f"[lm] held-out perplexity {test['perplexity']:.1f} ({', '.join(f'{d} {p:.1f}' for d, p in test['perplexity_by_direction'].items())}), "
          f"{metrics['tokens_per_second']:.0f} tokens/s, {metrics['epochs_run']} epochs, {outcome['wall_seconds']:.0f} s", flush=True)
    return str(run_dir), {"stage": "lm", "status": "ok", "command": command, "run_dir": str(run_dir),
                          "wall_seconds": outcome["wall_seconds"], "metrics": metrics, "history": outcome["history"]}


def classifier(name: str, task: str, init: list[str], csv: str, args) -> dict:
    run_dir = RUNS_DIR / args.results_name / name
    command = [sys.executable, "-m", f"sentiment_dist.{task}", "dataset=imdb", f"trainer.epochs={args.epochs}",
               *common(csv, args, run_dir, task), *init, *args.classifier]
    row = classifier_run(name, command, run_dir, {"stage": name})
    config = run_dir / "config.yaml"
    if config.is_file():  # which epoch's weights were kept: as the run was configured, not as assumed here
        from omegaconf import OmegaConf

        row["best_monitor"] = OmegaConf.load(config).trainer.best_monitor
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm-epochs", type=int, default=4, help="language-model epochs (early stopping on held-out loss)")
    parser.add_argument("--epochs", type=int, default=4, help="classifier epochs, the same for every classifier")
    parser.add_argument("--lm-dir", default=None, help="reuse this finished pretrain run instead of training one")
    parser.add_argument("--lm-from", default=None,
                        help="continue this finished pretrain run for --lm-epochs more epochs (init.from)")
    parser.add_argument("--max-rows", type=int, default=None, help="seeded sample of the CSV (default: all 50k)")
    parser.add_argument("--model", nargs="*", default=[], help="more model.* overrides, for every stage")
    parser.add_argument("--classifier", nargs="*", default=[],
                        help="more Hydra overrides for the classifier stages only (e.g. trainer.learning_rate=0.0005)")
    parser.add_argument("--c-values", default="1,4,16", help="logistic regression C values tried on validation")
    parser.add_argument("--skip-tfidf", action="store_true")
    parser.add_argument("--classifiers", nargs="+", choices=("scratch", "pretrained", "ulmfit"),
                        default=["scratch", "pretrained", "ulmfit"])
    parser.add_argument("--results-name", default="imdb_pretraining",
                        help="benchmarks/results/<name>.{json,md}; run dirs under benchmarks/data/runs/<name>/")
    args = parser.parse_args()
    if args.lm_dir and args.lm_from:
        parser.error("--lm-dir reuses a language model and --lm-from trains one on: pick one")
    # the stages run from the repo root: a path relative to here must still point at the same run
    args.lm_dir, args.lm_from = (os.path.abspath(path) if path else None for path in (args.lm_dir, args.lm_from))

    csv = str(imdb_csv())
    data = load_split(csv, args.max_rows)
    sizes = {name: len(getattr(data, name)) for name in ("train", "validation", "test")}
    print(f"IMDB split: {sizes['train']} train / {sizes['validation']} validation / {sizes['test']} test", flush=True)
    baseline = None if args.skip_tfidf else tfidf_baseline(data, [float(c) for c in args.c_values.split(",")])
    del data
    lm_dir, lm = language_model(csv, args)
    stages = {"scratch": ("train", []), "pretrained": ("train", [f"init.from={lm_dir}"]),
              "ulmfit": ("finetune", [f"init.from={lm_dir}"])}
    rows = [classifier(name, *stages[name], csv, args) for name in args.classifiers]
    labels = {"scratch": "BiLSTM from scratch (`train`)", "pretrained": "BiLSTM from the LM (`train init.from=<lm>`)",
              "ulmfit": "BiLSTM from the LM, gradual unfreezing (`finetune init.from=<lm>`)"}
    table = ([{"model": "TF-IDF 1-2 grams + LR", "accuracy": baseline["accuracy"], "macro_f1": baseline["macro_f1"],
               "wall_seconds": baseline["total_seconds"]}] if baseline else [])
    table += [{"model": labels[row["stage"]], "accuracy": row.get("accuracy"), "macro_f1": row.get("macro_f1"),
               "seconds_per_epoch": row.get("seconds_per_epoch"), "epochs_run": row.get("epochs_run"),
               "wall_seconds": row.get("total_seconds"),
               "status": row["status"] if row["status"] == "ok" else f"failed: {row['reason'][-200:]}"} for row in rows]
    lm_metrics = lm["metrics"]
    lm_table = [{
        "stage": "language model (`pretrain experiment=pretrain_imdb`)",
        "perplexity": lm_metrics["test"]["perplexity"],
        "by_direction": ", ".join(f"{d} {p:.1f}" for d, p in lm_metrics["test"]["perplexity_by_direction"].items()),
        "train_tokens": lm_metrics["environment"].get("train_tokens"),
        "tokens_per_second": lm_metrics["tokens_per_second"], "epochs_run": lm_metrics["epochs_run"],
        "train_seconds": lm_metrics["train_seconds"], "wall_seconds": lm.get("wall_seconds"),
    }]
    architecture = " ".join([*MODEL, *args.model])
    notes = [
        f"Seeded split of the 50k IMDB CSV (conf/dataset/imdb.yaml, seed 42): {sizes['train']} train / "
        f"{sizes['validation']} validation / {sizes['test']} test" + (f" (max_rows={args.max_rows})." if args.max_rows else "."),
        f"Every stage: {architecture}. Classifiers"
        + (f" ({' '.join(args.classifier)})" if args.classifier else "")
        + f": {args.epochs} epochs each, test metrics of the best epoch by "
        + (", ".join(sorted({row["best_monitor"] for row in rows if "best_monitor" in row})) or "val_loss")
        + "; `train` runs use conf/trainer/default.yaml, the `finetune` run conf/trainer/finetune.yaml with "
        "conf/finetune/default.yaml (gradual unfreezing; embedding 0.1x, encoder 0.3x, head 1x the learning rate).",
        f"Language model: {lm_metrics['epochs_run']} epochs"
        + (f" (continued from {lm_metrics['init_from']})" if lm_metrics.get("init_from") else "")
        + " on the training texts only"
        + (", every token (lm.whole_texts)" if lm_metrics["environment"].get("whole_texts")
           else ", each text's first model.sequence_length tokens only")
        + ", sampled softmax "
        f"({lm_metrics['environment'].get('softmax')}); perplexity with the full softmax on "
        f"{lm_metrics['test']['tokens']} tokens of a seeded sample of "
        f"{lm_metrics['environment'].get('held_out_texts', {}).get('test', '?')} test texts; tokens/s per direction.",
        "wall s: the whole CLI run (start-up, vocabulary, tokenizing, training, evaluation on the 25,000 test "
        "reviews, saving); TF-IDF: vectorizing, tuning C on validation, refit on train + validation, prediction.",
    ]
    write_results(
        args.results_name, "IMDB: the LSTM with and without language-model pretraining, vs TF-IDF + LR",
        {"split": sizes, "args": vars(args), "tfidf": baseline, "lm": lm, "classifiers": rows},
        [("Language model", lm_table, [("stage", "stage"), ("perplexity", "test perplexity"),
                                       ("by_direction", "per direction"), ("train_tokens", "training tokens"),
                                       ("tokens_per_second", "tokens/s"),
                                       ("epochs_run", "epochs"), ("train_seconds", "train s"),
                                       ("wall_seconds", "wall s")]),
         ("Classifier test set", table, [("model", "model"), ("accuracy", "test accuracy"), ("macro_f1", "macro-F1"),
                                         ("seconds_per_epoch", "s/epoch"), ("epochs_run", "epochs"),
                                         ("wall_seconds", "wall s"), ("status", "status")])],
        notes,
    )


if __name__ == "__main__":
    main()
