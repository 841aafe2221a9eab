"""Hyper-parameter search on real IMDB: the imdb_optuna sweep against the hand-set recipe.

Runs `python -m sentiment_dist.train -m hparams_search=imdb_optuna` (Optuna's TPE, seeded; each
trial an ordinary run choosing by validation macro-F1) on a seeded sample of the 50k-review CSV,
then the hand-set recipe (`experiment=imdb_bilstm`) on the same sample, and reports both models'
validation and test accuracy and the time each took. The test set never chooses: it is read
only after the sweep has named its best trial.

    python benchmarks/hpo.py                                  # 12 trials on 10,000 reviews
    python benchmarks/hpo.py --trials 20 --max-rows 20000
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from imdb_data import RUNS_DIR, imdb_csv, run_cli, write_results
from omegaconf import OmegaConf

from sentiment_dist.runtime.io import read_json


def scores(run_dir) -> dict:
    metrics = read_json(str(run_dir / "metrics.json"))
    return {
        "val_accuracy": metrics["validation"]["accuracy"], "val_macro_f1": metrics["validation"]["macro_f1"],
        "test_accuracy": metrics["test"]["accuracy"], "test_macro_f1": metrics["test"]["macro_f1"],
        "epochs_run": metrics["epochs_run"], "train_seconds": metrics["train_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--max-rows", type=int, default=10000, help="seeded sample of the CSV (dataset.max_rows)")
    parser.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides for the sweep and the recipe")
    args = parser.parse_args()
    csv = str(imdb_csv())
    common = [f"dataset.path={csv}", f"dataset.max_rows={args.max_rows}", "logger=none", "trainer.verbose=false", *args.extra]

    sweep_dir = RUNS_DIR / "hpo" / "sweep"
    shutil.rmtree(sweep_dir, ignore_errors=True)
    sweep_dir.parent.mkdir(parents=True, exist_ok=True)
    # A fresh study each time (in memory): a benchmark must not resume an earlier one.
    command = [sys.executable, "-m", "sentiment_dist.train", "-m", "hparams_search=imdb_optuna", *common,
               f"hydra.sweeper.n_trials={args.trials}", "hydra.sweeper.storage=null", f"hydra.sweep.dir={sweep_dir}"]
    print(f"[sweep] {' '.join(command)}", flush=True)
    started = time.perf_counter()
    with open(sweep_dir.with_suffix(".log"), "w", encoding="utf-8") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
    sweep_seconds = time.perf_counter() - started
    results = OmegaConf.to_container(OmegaConf.load(sweep_dir / "optimization_results.yaml"))
    trials = []
    for run_dir in sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        overrides = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "overrides.yaml"))
        params = {k: v for k, _, v in (o.partition("=") for o in overrides) if k in results["best_params"]}
        row = {"trial": int(run_dir.name), **params}
        if (run_dir / "metrics.json").exists():
            row.update(scores(run_dir))
        trials.append(row)
    best = {"model": f"best of {args.trials} trials (hparams_search=imdb_optuna)",
            **scores(Path(results["best_run_dir"])), "seconds": sweep_seconds}
    print(f"[sweep] {len(trials)} trials in {sweep_seconds:.0f} s; best {results['best_params']}", flush=True)

    recipe_dir = RUNS_DIR / "hpo" / "imdb_bilstm"
    recipe_command = [sys.executable, "-m", "sentiment_dist.train", "experiment=imdb_bilstm", *common,
                      f"hydra.run.dir={recipe_dir}"]
    outcome = run_cli("imdb_bilstm", recipe_command, recipe_dir)
    recipe = {"model": "hand-set recipe (experiment=imdb_bilstm)", **scores(recipe_dir), "seconds": outcome["wall_seconds"]}

    columns = [("model", "model"), ("val_accuracy", "val accuracy"), ("val_macro_f1", "val macro-F1"),
               ("test_accuracy", "test accuracy"), ("test_macro_f1", "test macro-F1"), ("seconds", "wall s")]
    keys = list(results["best_params"])
    trial_columns = [("trial", "trial"), *((k, k) for k in keys), ("val_macro_f1", "val macro-F1"),
                     ("val_accuracy", "val acc"), ("test_accuracy", "test acc"), ("train_seconds", "train s")]
    n = args.max_rows
    notes = [
        f"A seeded sample of {n:,} reviews of the 50k IMDB CSV (dataset.max_rows={n}), split as conf/dataset/imdb.yaml "
        f"says (50% test, 10% of the rest validation): {n // 2 * 9 // 10:,} train / {n // 2 // 10:,} validation / "
        f"{n // 2:,} test, the same for every run.",
        "The sweep optimises validation macro-F1 (search.objective); the test columns are read afterwards.",
        f"Best parameters: {results['best_params']}; the recipe's: model.units=64, num_layers=1, embedding_dim=128, "
        "dropout=0.2, embedding_dropout=0, pooling=last, learning_rate=0.001, batch_size=64 (4 epochs for both).",
        "wall s: the whole sweep (every trial, one after another in one process) against one run of the recipe.",
    ]
    write_results("hpo", "Optuna search (imdb_optuna) vs the hand-set recipe on IMDB",
                  {"args": vars(args), "sweep_command": command, "recipe_command": recipe_command,
                   "best_params": results["best_params"], "best_value": results["best_value"],
                   "best_run_dir": results["best_run_dir"], "sweep_seconds": sweep_seconds,
                   "best": best, "recipe": recipe, "trials": trials},
                  [("Best trial vs recipe", [best, recipe], columns), ("Every trial", trials, trial_columns)], notes)


if __name__ == "__main__":
    main()
