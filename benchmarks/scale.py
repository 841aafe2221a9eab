"""Big corpora: prepare once and memory-map, against every rank reading the corpus itself.

For each N (default 100k, 1M and 10M reviews), a corpus of real Flipkart reviews
(`../shared/data`) cycled to N rows, each with a varying suffix word (so no two rows repeat),
is written to `benchmarks/data/scale/` (never checked in), then:

1. **prepare**: `python -m sentiment_dist.prepare` with 1 and with 2 workers: wall time, and the
   store's own reviews/s (read, tokenize, choose the vocabulary, write);
2. **train under `horovodrun -np 2`** from the store (`dataset.prepared=<dir>`), and (up to
   `--in-memory-max`) the same job reading the CSV on every rank (`dataset.prepared=null`):
   `trainer.max_steps` steps (an epoch over 10M reviews would take hours on 2 cores), each rank
   run through `rank_probe.py`, which records its peak resident memory; start-up is the chief's
   `seconds_to_first_step` (process start to the first training step);
3. **predict --file** over the N texts, one per line, with the model trained at that N: under
   `horovodrun -np 2` at 100k and by one process at 1M (`--score`): reviews/s, peak RSS;
4. **examples/s, store against in-memory**, at the smallest N: the same `Trainer` in this
   process on the two paths' splits, alternating, timing the steps after a warm-up.

Writes `benchmarks/results/scale.{json,md,png}`; the JSON's `summary` holds
`peak_rss_gb_per_rank` (store path, by N), `startup_s` (store path, by N),
`examples_per_s_ratio_100k` (store / in-memory) and `prepare_reviews_per_s_2_workers` (by N).

    python benchmarks/scale.py                                  # 100k, 1M, 10M (about 2 hours on 2 cores)
    python benchmarks/scale.py --sizes 100000 --steps 60        # a quick look
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from imdb_data import DATA_DIR, REPO, RESULTS_DIR, write_results

BIN = Path(sys.executable).parent
FLIPKART = REPO.parent / "shared" / "data" / "flipkart_reviews.csv.gz"
SCALE_DIR = DATA_DIR / "scale"
HELD_OUT = 2000  # validation and test reviews at every N: the job's scoring stays the same size


def corpus(size: int) -> Path:
    """`reviews_<size>.csv`: Flipkart's reviews cycled to `size` rows, each ending in a word of its own
    cycle (`c<k>`), written a million rows at a time."""
    path = SCALE_DIR / f"reviews_{size}.csv"
    if path.exists():
        return path
    import pandas as pd

    SCALE_DIR.mkdir(parents=True, exist_ok=True)
    source = pd.read_csv(FLIPKART, dtype=str, keep_default_na=False)[["text", "rating"]]
    partial = path.with_suffix(".partial")
    for begin in range(0, size, 1_000_000):
        rows = np.arange(begin, min(begin + 1_000_000, size))
        picked = source.iloc[rows % len(source)]
        chunk = pd.DataFrame({"text": picked["text"].to_numpy() + " c" + (rows // len(source)).astype(str),
                              "rating": picked["rating"].to_numpy()})
        chunk.to_csv(partial, mode="a" if begin else "w", header=begin == 0, index=False)
    partial.replace(path)
    return path


def dataset_overrides(path: Path, size: int) -> list[str]:
    share = HELD_OUT / size
    return ["dataset=flipkart", f"dataset.path={path}", f"dataset.split.validation_fraction={share}",
            f"dataset.split.test_fraction={share}"]


def run(command: list[str], log: Path) -> tuple[int, float]:
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        code = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                              env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}).returncode
    return code, time.perf_counter() - started


def prepare(size: int, path: Path, workers: int) -> dict:
    out = SCALE_DIR / f"store_{size}_w{workers}"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "sentiment_dist.prepare", *dataset_overrides(path, size),
               f"prepare.workers={workers}", f"prepare.out={out}", f"hydra.run.dir={SCALE_DIR}/prepare_{size}_w{workers}"]
    print(f"[prepare N={size:,} workers={workers}] ...", flush=True)
    code, wall = run(command, SCALE_DIR / f"prepare_{size}_w{workers}.log")
    if code != 0:
        raise SystemExit(f"prepare failed (exit {code}); see {SCALE_DIR}/prepare_{size}_w{workers}.log")
    manifest = json.loads((out / "manifest.json").read_text())
    examples = sum(split["examples"] for split in manifest["splits"].values())
    row = {"n": size, "workers": workers, "wall_seconds": wall, "prepare_seconds": manifest["prepare_seconds"],
           "reviews_per_second": size / manifest["prepare_seconds"], "examples": examples,
           "store_bytes": sum(f["bytes"] for f in manifest["files"].values()), "store": str(out)}
    print(f"[prepare N={size:,} workers={workers}] {row['prepare_seconds']:.1f} s, "
          f"{row['reviews_per_second']:,.0f} reviews/s", flush=True)
    return row


def train(size: int, path: Path, store: Path | None, steps: int) -> dict:
    label = "store" if store else "in-memory"
    name = f"train_{size}_{'store' if store else 'memory'}"
    run_dir, probes = SCALE_DIR / name, SCALE_DIR / f"{name}_ranks"
    for stale in (run_dir, probes):
        shutil.rmtree(stale, ignore_errors=True)
    command = [str(BIN / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo", sys.executable,
               str(REPO / "benchmarks" / "rank_probe.py"), str(probes), "sentiment_dist.train", "strategy=horovod",
               *dataset_overrides(path, size), f"dataset.prepared={store or 'null'}", f"trainer.max_steps={steps}",
               "trainer.epochs=1", "logger=none", "trainer.verbose=false", f"hydra.run.dir={run_dir}"]
    print(f"[train N={size:,} {label}] ...", flush=True)
    code, wall = run(command, SCALE_DIR / f"{name}.log")
    ranks = [json.loads(p.read_text()) for p in sorted(probes.glob("rank*.json"))]
    row = {"n": size, "path": label, "exit_code": code, "wall_seconds": wall,
           "peak_rss_gb_per_rank": max((r["peak_rss_gb"] for r in ranks), default=None),
           "peak_rss_gb_by_rank": {r["rank"]: r["peak_rss_gb"] for r in ranks}}
    if code == 0:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        history = json.loads((run_dir / "history.json").read_text())
        row.update(startup_seconds=metrics["seconds_to_first_step"], steps=steps,
                   examples_per_second=history["examples_per_second"][0], train_examples=metrics["data"]["train"])
    print(f"[train N={size:,} {label}] exit {code}, peak RSS per rank {row['peak_rss_gb_per_rank']} GB, "
          f"start-up {row.get('startup_seconds')} s", flush=True)
    return row


def score(size: int, path: Path, run_dir: Path, processes: int) -> dict:
    """`predict --file` over the corpus's N texts (one per line), by one process or under
    `horovodrun -np 2`: reviews/s over the whole command (TensorFlow's start-up included) and the
    peak RSS of each process, which must not grow with the file."""
    import pandas as pd

    lines = SCALE_DIR / f"lines_{size}.txt"
    if not lines.exists():
        partial = lines.with_suffix(".partial")
        with open(partial, "w", encoding="utf-8") as handle:
            for chunk in pd.read_csv(path, dtype=str, keep_default_na=False, usecols=["text"], chunksize=1_000_000):
                handle.write("\n".join(chunk["text"].str.replace(r"\s+", " ", regex=True)) + "\n")
        partial.replace(lines)
    name = f"score_{size}_np{processes}"
    out, probes = SCALE_DIR / f"{name}.tsv", SCALE_DIR / f"{name}_ranks"
    shutil.rmtree(probes, ignore_errors=True)
    launcher = [str(BIN / "horovodrun"), "-np", str(processes), "-H", f"localhost:{processes}", "--gloo"] if processes > 1 else []
    command = [*launcher, sys.executable, str(REPO / "benchmarks" / "rank_probe.py"), str(probes), "sentiment_dist.predict",
               str(run_dir), "--file", str(lines), "--out", str(out)]
    print(f"[predict N={size:,} processes={processes}] ...", flush=True)
    code, wall = run(command, SCALE_DIR / f"{name}.log")
    ranks = [json.loads(p.read_text()) for p in sorted(probes.glob("rank*.json"))]
    scored = sum(1 for _ in open(out, encoding="utf-8")) if code == 0 else 0
    out.unlink(missing_ok=True)
    row = {"n": size, "processes": processes, "exit_code": code, "wall_seconds": wall, "reviews": scored,
           "reviews_per_second": scored / wall if scored else None,
           "peak_rss_gb_per_rank": max((r["peak_rss_gb"] for r in ranks), default=None)}
    print(f"[predict N={size:,} processes={processes}] exit {code}, {row['reviews_per_second'] or 0:,.0f} reviews/s, "
          f"peak RSS per process {row['peak_rss_gb_per_rank']} GB", flush=True)
    return row


def throughput_ratio(path: Path, store: Path, size: int, steps: int, rounds: int) -> dict:
    """Steady-state training examples/s of one Trainer on the store's splits and on the in-memory ones."""
    import keras
    from hydra import compose, initialize_config_dir

    from sentiment_dist.config import schema
    from sentiment_dist.config.hydra_task import CONFIG_DIR, register_resolvers
    from sentiment_dist.data.inputs import classifier_inputs
    from sentiment_dist.models.classifier import build_classifier
    from sentiment_dist.runtime.distribute import make_distribution
    from sentiment_dist.training.loop import Trainer

    schema.register()
    register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*dataset_overrides(path, size), "logger=none", "trainer.verbose=false",
                                          f"trainer.max_steps={steps}", "trainer.epochs=1"])
    dist = make_distribution(cfg.strategy)
    memory = classifier_inputs(cfg, dist)
    cfg.dataset.prepared = str(store)
    mapped = classifier_inputs(cfg, dist)
    warmup = min(20, steps // 4)

    class StepTimer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    def rate(inputs) -> float:
        keras.utils.set_random_seed(cfg.seed)
        model = build_classifier(cfg.model, len(inputs.vocabulary), len(inputs.label_names))
        trainer = Trainer(dist, model, len(inputs.label_names), cfg.trainer, cfg.seed)
        timer = StepTimer()
        trainer.fit(inputs.splits.train, inputs.splits.validation.subset(np.arange(64)), 1, [timer], verbose=False)
        ends = timer.ends[warmup:]
        return (len(ends) - 1) * trainer.global_batch / (ends[-1] - ends[0])

    rates = {"store": [], "in-memory": []}
    for round_ in range(rounds):  # alternate: neither side always runs warm
        for side in (("store", "in-memory") if round_ % 2 == 0 else ("in-memory", "store")):
            rates[side].append(rate(mapped if side == "store" else memory))
            print(f"[examples/s N={size:,}] round {round_ + 1} {side}: {rates[side][-1]:.0f}", flush=True)
    median = {side: float(np.median(values)) for side, values in rates.items()}
    return {"n": size, "steps": steps, "warmup_steps": warmup, "rounds": rates, "store": median["store"],
            "in_memory": median["in-memory"], "ratio": median["store"] / median["in-memory"]}


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for key, ax, ylabel in (("peak_rss_gb_per_rank", axes[0], "peak RSS per rank (GB)"),
                            ("startup_seconds", axes[1], "start-up to the first step (s)")):
        for label, style in (("store", "o-"), ("in-memory", "s--")):
            points = sorted((r["n"], r[key]) for r in rows if r["path"] == label and r.get(key) is not None)
            if points:
                ax.plot(*zip(*points, strict=True), style, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("reviews (N)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("horovodrun -np 2 on 2 CPU cores: memory-mapped store vs every rank reading the corpus")
    fig.tight_layout()
    fig.savefig(RESULTS_DIR / "scale.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--steps", type=int, default=200, help="training steps per job (trainer.max_steps)")
    parser.add_argument("--in-memory-max", type=int, default=1_000_000,
                        help="the largest N the in-memory path is run at (10M would need ~35 GB per rank)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the examples/s comparison")
    parser.add_argument("--keep-stores", action="store_true", help="keep the stores (they take disk)")
    parser.add_argument("--score", nargs="*", default=["100000:2", "1000000:1"], metavar="N:PROCESSES",
                        help="predict --file timed at N reviews by that many processes, with the model trained at N "
                             "(2 processes on 2 cores share the cores: they show the sharded path and its memory)")
    args = parser.parse_args()
    if not FLIPKART.exists():
        raise SystemExit(f"{FLIPKART} is missing: the scale corpus is built from it (see ../shared/data/README.md).")
    prepared, trained, scored, ratio = [], [], [], None
    for size in sorted(args.sizes):
        path = corpus(size)
        for workers in (1, 2):
            prepared.append(prepare(size, path, workers))
        shutil.rmtree(SCALE_DIR / f"store_{size}_w1", ignore_errors=True)  # the same bytes as w2 (a test checks)
        store = SCALE_DIR / f"store_{size}_w2"
        trained.append(train(size, path, store, args.steps))
        for n, processes in (map(int, pair.split(":")) for pair in args.score):
            if n == size and trained[-1]["exit_code"] == 0:
                scored.append(score(size, path, SCALE_DIR / f"train_{size}_store", processes))
        if size <= args.in_memory_max:
            trained.append(train(size, path, None, args.steps))
        if ratio is None:
            ratio = throughput_ratio(path, store, size, max(args.steps, 100), args.rounds)
        if not args.keep_stores:
            shutil.rmtree(store, ignore_errors=True)
    plot(trained)
    store_rows = {row["n"]: row for row in trained if row["path"] == "store"}
    summary = {
        "peak_rss_gb_per_rank": {str(n): row["peak_rss_gb_per_rank"] for n, row in store_rows.items()},
        "startup_s": {str(n): row.get("startup_seconds") for n, row in store_rows.items()},
        "examples_per_s_ratio_100k": ratio["ratio"] if ratio else None,
        "prepare_reviews_per_s_2_workers": {str(r["n"]): r["reviews_per_second"] for r in prepared if r["workers"] == 2},
        "predict_reviews_per_s": {f"{r['n']}_np{r['processes']}": r["reviews_per_second"] for r in scored},
    }
    write_results(
        "scale", "Big corpora: a prepared, memory-mapped store against every rank reading the corpus",
        {"summary": summary, "prepare": prepared, "train": trained, "predict": scored, "examples_per_second": ratio},
        [("Prepare (tokenize once)", prepared,
          [("n", "reviews"), ("workers", "workers"), ("prepare_seconds", "seconds"),
           ("reviews_per_second", "reviews/s"), ("store_bytes", "store bytes")]),
         ("Training under horovodrun -np 2", trained,
          [("n", "reviews"), ("path", "data path"), ("peak_rss_gb_per_rank", "peak RSS per rank (GB)"),
           ("startup_seconds", "start-up to first step (s)"), ("examples_per_second", "examples/s (first epoch)"),
           ("exit_code", "exit")]),
         ("Scoring: predict --file", scored,
          [("n", "reviews"), ("processes", "processes"), ("wall_seconds", "seconds"),
           ("reviews_per_second", "reviews/s (start-up included)"), ("peak_rss_gb_per_rank", "peak RSS per process (GB)")]),
         ("Examples/s, same Trainer, same process", [ratio] if ratio else [],
          [("n", "reviews"), ("store", "store"), ("in_memory", "in-memory"), ("ratio", "store / in-memory")])],
        notes=[f"Each job trains {args.steps} steps (trainer.max_steps) of the default BiLSTM (20k vocabulary, 200 "
               f"tokens), global batch 128; validation and test are {HELD_OUT} reviews at every N.",
               "Peak RSS is ru_maxrss of each rank's process: it counts the store pages a rank touched.",
               f"The in-memory path is not run above N={args.in_memory_max:,}."],
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
