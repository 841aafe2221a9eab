"""Transfer on real e-commerce reviews: a general review encoder against honest baselines.

The chain, every stage a run of the real CLI in `benchmarks/data/runs/transfer_real/<stage>`
(a finished stage is reused, a killed one resumes from its checkpoints):

1. `lm`: `pretrain experiment=review_lm`: a BiLSTM language model on the union of the
   training texts of IMDB (50k CSV), Flipkart (../shared/data) and the Amazon target;
2. `classifier_reviews`: `train experiment=review_classifier`: the classifier from it on
   IMDB and Flipkart labels (a mixture, half each): the source for the Amazon targets;
   `classifier_imdb`: the same on IMDB alone: the source for the Flipkart target (a target
   is never in its source);
3. `imdb_eval`: the reviews classifier on the IMDB test set (the encoder must keep >= 0.90);
4. `finetune_amazon`: the last stage of the chain, fine-tuned on every Amazon label;
5. one `transfer_report` per target: source as-is, scratch, target TF-IDF, source TF-IDF,
   source + target TF-IDF and the fine-tuned configurations, at N in `--sizes`, over
   `--repeats` seeded samples (mean and std).

Targets: `amazon_binary` (the Amazon 5-class sample with Neutral dropped), `flipkart`
(binary, 3 stars dropped; 79% positive, so macro-F1 leads; seeded samples of 1,000 train and
800 test reviews from the full file's splits, so that N=all fits in the benchmark's time), and the 5- and 3-class Amazon
sets (`amazon`, `amazon_3class`: a binary source moved to more classes by a new head).
The Amazon sample is split once (70/30, stratified on the five classes; the files go to
benchmarks/data/) so every Amazon target and the language model share one split, and no
test review reaches the language model. Writes benchmarks/results/transfer_real.{json,md}
and one PNG per target.

    python benchmarks/transfer_real.py                         # the whole chain and every report
    python benchmarks/transfer_real.py --targets amazon_binary --repeats 1 --sizes 50 all
    python benchmarks/transfer_real.py --name transfer_real_chain --targets   # time a fresh chain alone
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from imdb_data import DATA_DIR, REPO, RESULTS_DIR, RUNS_DIR, imdb_csv, run_cli, write_results

SHARED = REPO.parent / "shared" / "data"
FLIPKART = SHARED / "flipkart_reviews.csv.gz"
AMAZON = SHARED / "amazon_fullscore_1k.csv"
AMAZON_CLASSES = ["Very Negative", "Negative", "Neutral", "Positive", "Very Positive"]
BASELINES = ("source_as_is", "source_tfidf", "source_plus_target_tfidf", "target_tfidf", "scratch")
TARGETS = ("amazon_binary", "flipkart", "amazon", "amazon_3class")


def amazon_split() -> tuple[Path, Path]:
    """The Amazon sample split once, 70/30, stratified on its five classes (seeded)."""
    train, test = DATA_DIR / "amazon_train.csv", DATA_DIR / "amazon_test.csv"
    if not train.exists() or not test.exists():
        import pandas as pd

        from sentiment_dist.data.files import stratified_split

        table = pd.read_csv(AMAZON, dtype=str, keep_default_na=False)
        codes = table["target"].map({name: i for i, name in enumerate(AMAZON_CLASSES)}).to_numpy()
        test_rows, train_rows = stratified_split(codes, [0.3], seed=42)
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        table.iloc[train_rows].to_csv(train, index=False)
        table.iloc[test_rows].to_csv(test, index=False)
    return train, test


def flipkart_split(lm_dir: Path, train_rows: int, test_rows: int) -> tuple[Path, Path]:
    """The Flipkart target: seeded samples of the full file's train and test splits, exactly as the
    language model's Flipkart source split it (read from the LM's saved config), so no target test
    text reached the language model. The loader's joined text is written as `text`, the class as a
    1- or 5-star `rating`, so `dataset=flipkart` reads the files unchanged."""
    train, test = DATA_DIR / f"flipkart_train_{train_rows}.csv", DATA_DIR / f"flipkart_test_{test_rows}.csv"
    if not train.exists() or not test.exists():
        import numpy as np
        import pandas as pd
        from omegaconf import OmegaConf

        from sentiment_dist.data import load_dataset

        data = load_dataset(OmegaConf.load(lm_dir / "config.yaml").dataset.sources.flipkart.dataset)
        assert data.label_names == ["negative", "positive"], data.label_names
        rng = np.random.default_rng(42)
        for path, split, rows in ((train, data.train, train_rows), (test, data.test, test_rows)):
            chosen = np.sort(rng.choice(len(split), size=min(rows, len(split)), replace=False))
            pd.DataFrame({"text": split.texts[chosen], "rating": np.where(split.labels[chosen] == 1, 5, 1)}).to_csv(
                path, index=False)
    return train, test


def sources(imdb: Path, amazon: tuple[Path, Path]) -> list[str]:
    """The paths of every source of the review mixtures."""
    return [f"dataset.sources.imdb.dataset.path={imdb}", f"dataset.sources.flipkart.dataset.path={FLIPKART}",
            f"dataset.sources.amazon.dataset.train_path={amazon[0]}", f"dataset.sources.amazon.dataset.test_path={amazon[1]}"]


def target_overrides(target: str, amazon: tuple[Path, Path], flipkart: tuple[Path, Path] | None = None) -> list[str]:
    if target == "flipkart":
        return ["dataset=flipkart", f"dataset.train_path={flipkart[0]}", f"dataset.test_path={flipkart[1]}"]
    return [f"dataset={target}", f"dataset.train_path={amazon[0]}", f"dataset.test_path={amazon[1]}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="*", default=list(TARGETS), choices=TARGETS,
                        help="the reports to run; none (`--targets` alone) runs and times only the chain")
    parser.add_argument("--sizes", nargs="+", default=["50", "100", "250", "all"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lm-epochs", type=int, default=2)
    parser.add_argument("--classifier-epochs", type=int, default=2,
                        help="the IMDB + Flipkart classifier's epochs (its validation accuracy peaks at the second)")
    parser.add_argument("--imdb-classifier-epochs", type=int, default=3,
                        help="the IMDB-only classifier's (half the examples per epoch; still improving at the third)")
    parser.add_argument("--schedules", nargs="+", default=["gradual", "frozen"])
    parser.add_argument("--report", nargs="*", default=[], help="extra overrides for every transfer_report")
    parser.add_argument("--flipkart-target-rows", type=int, nargs=2, default=[1000, 800], metavar=("TRAIN", "TEST"),
                        help="the Flipkart target: seeded samples of the full file's train and test splits (59,579 "
                             "and 17,022 rows): at N=all every method trains on the whole train sample, three "
                             "times, which for the full file would take most of a day on 2 CPU cores")
    parser.add_argument("--fresh", action="store_true", help="run every stage again instead of reusing finished ones")
    parser.add_argument("--name", default="transfer_real",
                        help="names the runs dir (benchmarks/data/runs/<name>) and the results files: a second "
                             "name times a fresh chain without touching the stages the reports use")
    args = parser.parse_args()
    for path in (FLIPKART, AMAZON):
        if not path.exists():
            sys.exit(f"transfer_real: {path} is missing; this benchmark reads the real reviews in ../shared/data.")
    runs = RUNS_DIR / args.name
    imdb, amazon = imdb_csv(), amazon_split()
    python = [sys.executable, "-m"]
    common = ["logger=none", "trainer.verbose=false"]
    reuse = not args.fresh
    stages = {}

    lm_dir = runs / "lm"
    stages["lm"] = run_cli("lm", python + ["sentiment_dist.pretrain", "experiment=review_lm", *common,
                                           *sources(imdb, amazon), f"trainer.epochs={args.lm_epochs}",
                                           f"hydra.run.dir={lm_dir}"], lm_dir, reuse=reuse)
    classifiers = {
        "classifier_reviews": ([f"dataset.sources.imdb.dataset.path={imdb}", f"dataset.sources.flipkart.dataset.path={FLIPKART}"],
                               args.classifier_epochs),
    }
    if "flipkart" in args.targets:  # its source: a target is never in its source
        classifiers["classifier_imdb"] = (["dataset=imdb", f"dataset.path={imdb}"], args.imdb_classifier_epochs)
    for name, (data, epochs) in classifiers.items():
        stages[name] = run_cli(name, python + ["sentiment_dist.train", "experiment=review_classifier", *common, *data,
                                               f"init.from={lm_dir}", f"trainer.epochs={epochs}",
                                               f"hydra.run.dir={runs / name}"], runs / name, reuse=reuse)
    stages["imdb_eval"] = run_cli("imdb_eval", python + ["sentiment_dist.evaluate", f"run_dir={runs / 'classifier_reviews'}",
                                                          "dataset=imdb", f"dataset.path={imdb}",
                                                          f"hydra.run.dir={runs / 'imdb_eval'}"], runs / "imdb_eval", reuse=reuse)
    stages["finetune_amazon"] = run_cli(
        "finetune_amazon", python + ["sentiment_dist.finetune", "experiment=review_finetune", *common, f"finetune.source={runs / 'classifier_reviews'}",
                                     *target_overrides("amazon_binary", amazon), f"hydra.run.dir={runs / 'finetune_amazon'}"],
        runs / "finetune_amazon", reuse=reuse)

    flipkart = flipkart_split(lm_dir, *args.flipkart_target_rows) if "flipkart" in args.targets else None
    reports = {}
    for target in args.targets:
        source = runs / ("classifier_imdb" if target == "flipkart" else "classifier_reviews")
        report_dir = runs / f"report_{target}"
        reports[target] = run_cli(
            f"report {target}",
            python + ["sentiment_dist.transfer_report", *common, f"finetune.source={source}", *target_overrides(target, amazon, flipkart),
                      f"report.sizes=[{','.join(args.sizes)}]", f"report.repeats={args.repeats}",
                      f"report.schedules=[{','.join(args.schedules)}]", *args.report, f"hydra.run.dir={report_dir}"],
            report_dir, result_file="transfer_report.json", reuse=reuse)
        reports[target]["settings"] = settings(report_dir)
        if reports[target]["status"] == "ok":
            shutil.copy(report_dir / "transfer_report.png", RESULTS_DIR / f"{args.name}_{target}.png")
    write(args, stages, reports)


def write(args, stages: dict, reports: dict) -> None:
    stage_rows = [{"stage": name, "status": stage["status"], "wall_s": stage.get("wall_seconds"),
                   "what": detail(name, stage)} for name, stage in stages.items()]
    chain = ("lm", "classifier_reviews", "finetune_amazon")
    untimed = [name for name in chain if stages[name].get("wall_seconds") is None]
    chain_seconds = None if untimed else sum(stages[name]["wall_seconds"] for name in chain)
    tables = [("The review encoder chain (2 CPU cores)", stage_rows,
               [("stage", "stage"), ("status", "status"), ("wall_s", "wall s"), ("what", "result")])]
    verdicts = []
    for target, report in reports.items():
        if report["status"] != "ok":
            tables.append((f"{target}: failed", [{"reason": report["reason"]}], [("reason", "reason")]))
            continue
        data = report["metrics"]
        headline = data["headline"]
        sizes = sorted({row["n"] for row in data["summary"]})
        methods = sorted({row["method"] for row in data["summary"]}, key=lambda m: (m not in BASELINES, m))
        cells = {(row["method"], row["n"]): row for row in data["summary"]}
        rows = []
        for method in methods:
            row = {"method": method + (" (baseline)" if method in BASELINES else "")}
            for n in sizes:
                if (method, n) in cells:
                    c = cells[(method, n)]
                    row[f"n{n}"] = f"{c['macro_f1']:.3f} ± {c['macro_f1_std']:.3f} ({c['accuracy']:.3f})"
            rows.append(row)
        columns = [("method", "method")] + [(f"n{n}", f"N={n}") for n in sizes]
        tables.append((f"{target}: macro-F1 mean ± std over the seeds (accuracy); headline {headline}; "
                       f"{report['settings']}", rows, columns))
        for verdict in data["verdicts"]:
            verdicts.append({"target": target, **verdict})
    tables.append(("Per N: the best fine-tuned configuration against the best baseline", verdicts,
                   [("target", "target"), ("n", "N"), ("headline", "metric"), ("best_finetuned", "best fine-tuned"),
                    ("best_baseline", "best baseline"), ("margin", "margin"), ("finetune_wins", "fine-tuning wins")]))
    notes = [
        "Chain (language model + reviews classifier + fine-tuning on every Amazon label): " + (
            f"{chain_seconds / 60:.1f} minutes." if chain_seconds is not None else
            f"not timed: no wall time was recorded for {', '.join(untimed)} (`--name transfer_real_chain --targets` times a fresh chain in its own runs dir; `--fresh` reruns these)."),
        "Sources never include their target: Amazon targets use the IMDB + Flipkart classifier, Flipkart the IMDB one. "
        "The language model read every source's training texts and the Amazon training split, no test text.",
        "TF-IDF baselines: 1-2 grams, sublinear tf, min_df 2, logistic regression with C (and, for source + target, the "
        "target rows' weight: 1, sqrt(ratio) or the source/target ratio) chosen on the target validation split; "
        "source_tfidf chooses C on the source's validation split and uses no target label.",
        "Every method sees the same N labelled examples and the whole target validation split (early stopping, C, "
        "thresholds); the test split is never used to choose.",
    ]
    write_results(args.name, "Transfer on real e-commerce reviews: the review encoder against honest baselines",
                  {"stages": stages, "reports": {t: r.get("metrics") for t, r in reports.items()},
                   "report_settings": {t: r.get("settings") for t, r in reports.items()},
                   "verdicts": verdicts, "chain_seconds": chain_seconds, "args": vars(args)}, tables, notes)


def settings(report_dir: Path) -> str:
    """The overrides a report ran with, paths left out: reports are reused, so they are read from
    the run dir rather than this invocation's arguments."""
    overrides = report_dir / ".hydra" / "overrides.yaml"
    if not overrides.exists():
        return ""
    import yaml

    kept = [o for o in yaml.safe_load(overrides.read_text()) if "path=" not in o and not o.startswith(
        ("hydra.", "logger=", "trainer.verbose", "finetune.source="))]
    return "run with " + " ".join(kept)


def detail(name: str, stage: dict) -> str:
    if stage["status"] != "ok":
        return stage.get("reason", "")
    metrics = stage["metrics"]
    if name == "lm":
        return f"test perplexity {metrics['test']['perplexity']:.1f}, {metrics['data']['train']} texts"
    test = metrics["test"]
    return f"test accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f} ({test['examples']} examples)"


if __name__ == "__main__":
    main()
