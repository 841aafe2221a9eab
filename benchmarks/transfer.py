"""Does transfer pay off? The transfer report on two domain pairs, as JSON, Markdown and PNG.

Each pair is one run of the real CLI, `python -m sentiment_dist.transfer_report`:
on the target test set, for N labelled target examples, the source model
as-is, the same architecture from scratch on the N examples, TF-IDF + logistic
regression on them, and the source fine-tuned on them with each schedule
(frozen, full, gradual), and ULMFiT (`lm_finetune_gradual`: a language model
pretrained on the source texts, adapted on the target's unlabelled train
texts, then fine-tuned on the N labels), each point the mean of `--repeats`
seeded samples.

- `synthetic`: synthetic movie reviews -> synthetic product reviews; the
  report trains its BiLSTM source first (the main job's source).
- `imdb`: the 50k IMDB CSV -> synthetic product reviews. The source is a
  BiLSTM trained on the seeded IMDB split (`--imdb-source <run dir>` reuses
  one, e.g. `benchmarks/data/runs/imdb_accuracy/bilstm`); the target
  vocabulary extends IMDB's (`finetune.vocab=extend`).

    python benchmarks/transfer.py                              # both pairs, N = 50 ... 1000 and all, 3 repeats
    python benchmarks/transfer.py --pairs synthetic --repeats 1 --sizes 50 all   # quicker
    python benchmarks/transfer.py --pairs synthetic --sizes 50 100 250 500 --lm-schedules gradual full
"""

from __future__ import annotations

import argparse
import shutil
import sys

from imdb_data import RESULTS_DIR, RUNS_DIR, imdb_csv, run_cli, write_results

METHODS = ("source_as_is", "source_tfidf", "source_plus_target_tfidf", "target_tfidf", "scratch", "finetune_frozen",
           "finetune_full", "finetune_gradual")


def source_run(args) -> str:
    """A BiLSTM trained on IMDB: the one given, or a fresh one (about 3 minutes on 2 cores)."""
    if args.imdb_source:
        return args.imdb_source
    run_dir = RUNS_DIR / "transfer" / "imdb_source"
    command = [sys.executable, "-m", "sentiment_dist.train", "dataset=imdb", f"dataset.path={imdb_csv()}",
               "model=bilstm", "trainer.epochs=4", "logger=none", "trainer.verbose=false", f"hydra.run.dir={run_dir}"]
    outcome = run_cli("imdb source", command, run_dir, timeout=args.timeout)
    if outcome["status"] != "ok":
        sys.exit(f"transfer: training the IMDB source failed ({outcome['reason']}).")
    return str(run_dir)


def report(pair: str, args) -> dict:
    run_dir = RUNS_DIR / "transfer" / pair
    overrides = [f"report.sizes=[{','.join(args.sizes)}]", f"report.repeats={args.repeats}", "logger=none",
                 f"report.lm_schedules=[{','.join(args.lm_schedules)}]", f"hydra.run.dir={run_dir}"]
    if pair == "imdb":
        overrides += [f"finetune.source={source_run(args)}", "finetune.vocab=extend"]
    command = [sys.executable, "-m", "sentiment_dist.transfer_report", *overrides]
    outcome = run_cli(pair, command, run_dir, timeout=args.timeout, result_file="transfer_report.json")
    if outcome["status"] != "ok":
        return {"status": "failed", "reason": outcome["reason"]}
    shutil.copyfile(run_dir / "transfer_report.png", RESULTS_DIR / f"transfer_{pair}.png")
    return {"status": "ok", "wall_seconds": outcome["wall_seconds"], **outcome["metrics"]}


def methods_of(summary: list[dict]) -> list[str]:
    """The report's methods in table order: `METHODS`, then the language-model ones."""
    lm = sorted({row["method"] for row in summary if row["method"].startswith("lm_")})
    return [m for m in METHODS if any(row["method"] == m for row in summary)] + lm


def by_size(summary: list[dict]) -> list[dict]:
    """One row per N: each method's mean accuracy, and the margins of fine-tuning (from the
    source classifier, and from the language model) over the best label-only method."""
    rows = []
    methods = methods_of(summary)
    for size in sorted({row["n"] for row in summary}):
        cells = {row["method"]: row for row in summary if row["n"] == size}
        row = {"n": size, **{m: cells[m]["accuracy"] for m in methods if m in cells}}
        baselines = [row[m] for m in ("scratch", "target_tfidf", "source_tfidf", "source_plus_target_tfidf") if m in row]
        for gain, prefix in (("gain", "finetune_"), ("lm_gain", "lm_finetune_")):
            tuned = [row[m] for m in methods if m.startswith(prefix) and m in row]
            if tuned and baselines:
                row[gain] = max(tuned) - max(baselines)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", choices=("synthetic", "imdb"), default=["synthetic", "imdb"])
    parser.add_argument("--sizes", nargs="+", default=["50", "100", "250", "500", "1000", "all"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--imdb-source", help="an IMDB-trained run dir to fine-tune from (default: train one)")
    parser.add_argument("--lm-schedules", nargs="*", default=["gradual"],
                        help="schedules of the lm_finetune_* columns (none: leave the language-model stages out)")
    parser.add_argument("--timeout", type=float, default=5400, help="seconds per CLI run")
    args = parser.parse_args()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    for pair in args.pairs:
        result = report(pair, args)
        title = {"synthetic": "synthetic movies -> synthetic e-commerce", "imdb": "IMDB -> synthetic e-commerce"}[pair]
        rows = by_size(result["summary"]) if result["status"] == "ok" else []
        methods = methods_of(result["summary"]) if result["status"] == "ok" else list(METHODS)
        columns = [("n", "N"), *[(m, m) for m in methods], ("gain", "best fine-tune - best of scratch/TF-IDF")]
        if any(m.startswith("lm_") for m in methods):
            columns.append(("lm_gain", "best LM fine-tune - best of scratch/TF-IDF"))
        write_results(f"transfer_{pair}", f"Transfer report: {title}", {"pair": pair, **result},
                      [(f"Test accuracy by labelled target examples (mean of {args.repeats} repeats)", rows, columns)],
                      notes=["`python -m sentiment_dist.transfer_report` with the overrides in the JSON's command; "
                             f"per-repeat points and macro-F1 in transfer_{pair}.json; plot: transfer_{pair}.png.",
                             f"status: {result['status']}" + (f" ({result.get('reason')})" if result["status"] != "ok" else "")])


if __name__ == "__main__":
    main()
