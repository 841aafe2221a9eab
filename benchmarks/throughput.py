"""Training throughput: strategies, fused LSTM kernel, input pipeline, framework overhead.

Same model, same data, same *global* batch everywhere (per-replica batch =
global / replicas), each strategy through the real CLI in a subprocess:
single, mirrored over 2 logical CPUs, multiworker (2 workers, launch/multiworker.py),
horovod (`horovodrun -np 2 --gloo`), single with `model.recurrent_dropout=0.2`
(Keras' non-fused LSTM), and single with `trainer.batch_by_length=true`. Steady state = mean `examples_per_second` of the
epochs after the first (the first includes tf.function tracing).

In this process, on the same tokenized data: (i) the input pipeline alone
(`training_batches` iterated without a model), (ii) our `Trainer` under the
single `Distribution` against a plain Keras script (the same
`build_classifier` model, Adam with the same rate and clipping, the same loss,
`model.fit` on the same token arrays and batch size), epochs timed the same way.

Threads: every configuration gets the machine's cores once. A one-process run
uses all of them (intra- and inter-op pools = cores); each process of a
two-process run gets cores / 2. Left to defaults, each of two processes sizes
its pools to every core: on 2 cores that is 4+ busy compute threads fighting
for 2 cores, and the allreduce waits for whichever peer was descheduled, so the
measurement would be of oversubscription, not of the strategy.

    python benchmarks/throughput.py                                     # full (synthetic data)
    python benchmarks/throughput.py --imdb                              # the IMDB CSV instead
    python benchmarks/throughput.py --num-train 512 --epochs 2 --sequence-length 64   # smoke
    python benchmarks/throughput.py --imdb --max-rows 10000 --sequence-length 800 --epochs 2 \
        --skip mirrored,multiworker,horovod,unfused,pipeline,overhead     # padding: fixed vs by length
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from imdb_data import RUNS_DIR, imdb_csv, run_cli, save_bar_chart, usable_cores, write_results

STEPS = ("single", "mirrored", "multiworker", "horovod", "unfused", "by_length", "pipeline", "overhead")


def thread_env(processes: int, cores: int) -> dict[str, str]:
    per = str(max(1, cores // processes))
    return {"TF_NUM_INTRAOP_THREADS": per, "TF_NUM_INTEROP_THREADS": per, "OMP_NUM_THREADS": per}


def steady(values: list[float]) -> float:
    """Mean examples/s of the epochs after the first (tracing); the only epoch if there is one."""
    return sum(values[1:]) / len(values[1:]) if len(values) > 1 else values[0]


def overrides(args) -> list[str]:
    """What every run shares: data, model, epochs; no early stopping (all epochs run), no W&B."""
    if args.imdb:
        data = ["dataset=imdb", f"dataset.path={imdb_csv()}"] + ([f"dataset.max_rows={args.max_rows}"]
                                                                   if args.max_rows else [])
    else:
        data = ["dataset=synthetic_movies", f"dataset.num_train={args.num_train}",
                f"dataset.num_validation={args.num_eval}", f"dataset.num_test={args.num_eval}"]
    return [*data, f"model={args.model}", f"model.sequence_length={args.sequence_length}",
            f"trainer.epochs={args.epochs}", "trainer.early_stopping.patience=null",
            "trainer.lr_on_plateau.patience=null", "trainer.resume=false", "logger=none",
            "trainer.verbose=false", *args.extra]


def horovod_missing() -> str | None:
    horovodrun = Path(sys.executable).parent / "horovodrun"
    if not horovodrun.exists():
        return f"horovodrun missing ({horovodrun}); build Horovod with launch/build_horovod.sh"
    check = subprocess.run([sys.executable, "-c", "import horovod.tensorflow"], capture_output=True, text=True)
    if check.returncode:
        return "horovod.tensorflow does not import: " + (check.stderr.strip().splitlines() or ["?"])[-1]
    return None


def strategy_runs(args, skip: set[str]) -> list[dict]:
    cores, train = args.cores, [sys.executable, "-m", "sentiment_dist.train"]
    configs = [  # label, processes, replicas, command prefix, extra overrides
        ("single", 1, 1, train, ["strategy=single"]),
        ("mirrored", 1, 2, train, ["strategy=mirrored", "strategy.cpu_devices=2"]),
        ("multiworker", 2, 2, [sys.executable, "launch/multiworker.py", "-n", "2", "--", *train],
         ["strategy=multiworker"]),
        ("horovod", 2, 2, [str(Path(sys.executable).parent / "horovodrun"), "-np", "2", "-H", "localhost:2",
                           "--gloo", *train], ["strategy=horovod"]),
        ("unfused", 1, 1, train, ["strategy=single", "model.recurrent_dropout=0.2"]),
        ("by_length", 1, 1, train, ["strategy=single", "trainer.batch_by_length=true"]),
    ]
    rows = []
    for label, processes, replicas, prefix, extra in configs:
        per_replica = args.batch_size // replicas
        env = thread_env(processes, cores)
        row = {"config": label, "processes": processes, "replicas": replicas, "per_replica_batch": per_replica,
               "global_batch": per_replica * replicas, "threads": f"{env['TF_NUM_INTRAOP_THREADS']}/"
               f"{env['TF_NUM_INTEROP_THREADS']} x {processes}", "env": env}
        reason = "skipped by --skip" if label in skip else (horovod_missing() if label == "horovod" else None)
        if reason:
            print(f"[{label}] skipped: {reason}", flush=True)
            rows.append({**row, "status": f"skipped: {reason}"})
            continue
        run_dir = RUNS_DIR / "throughput" / label
        command = [*prefix, *overrides(args), *extra, f"trainer.batch_size={per_replica}", f"hydra.run.dir={run_dir}"]
        outcome = run_cli(label, command, run_dir, env=env, timeout=args.timeout)
        row["command"] = command
        if outcome["status"] != "ok":
            rows.append({**row, "status": f"failed: {outcome['reason'][-300:]}"})
            continue
        per_epoch = outcome["history"]["examples_per_second"]
        row.update(status="ok", examples_per_second=steady(per_epoch), per_epoch=per_epoch,
                   wall_seconds=outcome["wall_seconds"], environment=outcome["metrics"]["environment"])
        print(f"[{label}] steady state {row['examples_per_second']:.1f} examples/s (epochs: "
              f"{', '.join(f'{v:.0f}' for v in per_epoch)})", flush=True)
        rows.append(row)
    single = next((r.get("examples_per_second") for r in rows if r["config"] == "single"), None)
    for row in rows:
        if single and row.get("examples_per_second"):
            row["vs_single"] = f"{row['examples_per_second'] / single:.2f} x"
    return rows


def in_process(args, skip: set[str]) -> dict:
    """Input pipeline alone, and our Trainer vs plain `model.fit`, in one process (no start-up costs)."""
    os.environ.update(thread_env(1, args.cores))  # before TensorFlow starts
    import keras
    from hydra import compose, initialize_config_dir

    from sentiment_dist.config import schema
    from sentiment_dist.config.hydra_task import CONFIG_DIR, register_resolvers
    from sentiment_dist.data.inputs import classifier_inputs
    from sentiment_dist.data.pipeline import training_batches
    from sentiment_dist.models.classifier import build_classifier
    from sentiment_dist.runtime.distribute import InputShard, make_distribution
    from sentiment_dist.training.loop import Trainer

    schema.register()
    register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*overrides(args), "strategy=single", f"trainer.batch_size={args.batch_size}"])
    dist = make_distribution(cfg.strategy)
    inputs = classifier_inputs(cfg, dist)
    vocabulary = inputs.vocabulary
    train, batch, classes, epochs = inputs.splits.train, args.batch_size, len(inputs.label_names), args.epochs
    used = len(train) // batch * batch
    result = {"vocabulary_size": len(vocabulary), "train_examples": len(train), "examples_per_epoch": used,
              "threads": thread_env(1, args.cores)}
    if "pipeline" not in skip:
        rates = []
        for epoch in range(epochs):
            started, count = time.perf_counter(), 0
            for tokens, _labels, _weights in training_batches(train, batch, cfg.seed, epoch, InputShard(0, 1, 1)):
                count += int(tokens.shape[0])
            rates.append(count / (time.perf_counter() - started))
        result["pipeline_examples_per_second"] = steady(rates)
        print(f"[pipeline] {result['pipeline_examples_per_second']:.0f} examples/s without a model", flush=True)
    if "overhead" in skip:
        return result

    class EpochTimer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.rates = []

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.rates.append(used / (time.perf_counter() - self.started))

    def ours() -> list[float]:
        keras.utils.set_random_seed(cfg.seed)
        with dist.scope():
            model = build_classifier(cfg.model, len(vocabulary), classes)
        trainer = Trainer(dist, model, classes, cfg.trainer, cfg.seed)
        small = inputs.splits.validation.subset(range(batch))  # validation is not timed
        history = trainer.fit(train, small, epochs, callbacks=[], verbose=False)
        return [epoch["examples_per_second"] for epoch in history.epochs]

    def plain_keras() -> list[float]:
        keras.utils.set_random_seed(cfg.seed)
        model = build_classifier(cfg.model, len(vocabulary), classes)
        loss = "binary_crossentropy" if classes == 2 else "sparse_categorical_crossentropy"
        optimizer = keras.optimizers.Adam(cfg.trainer.learning_rate, global_clipnorm=cfg.trainer.gradient_clip_norm)
        model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"], jit_compile=False)
        timer = EpochTimer()
        model.fit(train.rows(range(used)), train.labels[:used], batch_size=batch, epochs=epochs, shuffle=True,
                  verbose=0, callbacks=[timer])
        return timer.rates

    runs = {"ours": [], "keras": []}
    for round_ in range(args.rounds):  # alternate the order: neither side always runs warm
        for side in (("ours", "keras") if round_ % 2 == 0 else ("keras", "ours")):
            rates = ours() if side == "ours" else plain_keras()
            runs[side].append(rates)
            print(f"[overhead] round {round_ + 1} {side}: {', '.join(f'{v:.0f}' for v in rates)} examples/s",
                  flush=True)
    result["trainer_examples_per_second"] = sum(map(steady, runs["ours"])) / args.rounds
    result["keras_fit_examples_per_second"] = sum(map(steady, runs["keras"])) / args.rounds
    result["trainer_vs_keras_fit"] = result["trainer_examples_per_second"] / result["keras_fit_examples_per_second"]
    result["per_epoch"] = runs
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-train", type=int, default=20000, help="synthetic training examples")
    parser.add_argument("--num-eval", type=int, default=512, help="synthetic validation and test examples each")
    parser.add_argument("--imdb", action="store_true", help="the 50k IMDB CSV instead of synthetic reviews")
    parser.add_argument("--max-rows", type=int, default=None, help="with --imdb: a seeded sample of the CSV")
    parser.add_argument("--epochs", type=int, default=3, help="at least 2: the first epoch is not counted")
    parser.add_argument("--batch-size", type=int, default=128, help="GLOBAL batch, fixed across strategies")
    parser.add_argument("--sequence-length", type=int, default=200)
    parser.add_argument("--model", default="bilstm")
    parser.add_argument("--rounds", type=int, default=2, help="Trainer vs model.fit repetitions (order alternates)")
    parser.add_argument("--cores", type=int, default=usable_cores(), help="cores to share out (threads)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per CLI run")
    parser.add_argument("--skip", default="", help=f"comma-separated, of {','.join(STEPS)}")
    parser.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides for every run")
    parser.add_argument("--name", default=None, help="results file name (default: throughput, or throughput_imdb)")
    args = parser.parse_args()
    skip = {s for s in args.skip.split(",") if s}
    if skip - set(STEPS) or args.batch_size % 2:
        parser.error(f"--skip takes {','.join(STEPS)}; --batch-size must be even (split over 2 replicas)")

    rows = strategy_runs(args, skip)
    inproc = in_process(args, skip) if not {"pipeline", "overhead"} <= skip else {}
    single = next((r.get("examples_per_second") for r in rows if r["config"] == "single"), None)
    measured = [("input pipeline alone (no model)", inproc.get("pipeline_examples_per_second"), single, "single CLI"),
                ("our Trainer, single, in-process", inproc.get("trainer_examples_per_second"),
                 inproc.get("keras_fit_examples_per_second"), "plain model.fit"),
                ("plain Keras model.fit, in-process", inproc.get("keras_fit_examples_per_second"), None, "")]
    extra_rows = [{"measurement": name, "examples_per_second": value,
                   "relative": f"{value / ref:.3f} x {what}" if value and ref else None}
                  for name, value, ref, what in measured if value]
    columns = [("config", "config"), ("processes", "processes"), ("replicas", "replicas"),
               ("per_replica_batch", "per-replica batch"), ("global_batch", "global batch"),
               ("threads", "intra/inter threads x processes"), ("examples_per_second", "examples/s"),
               ("vs_single", "vs single"), ("status", "status")]
    data = (f"IMDB CSV{f' (max_rows={args.max_rows})' if args.max_rows else ''}" if args.imdb
            else f"synthetic_movies, {args.num_train} training examples")
    notes = [
        f"Data: {data}; model={args.model}, sequence length {args.sequence_length}"
        + (f", vocabulary {inproc['vocabulary_size']}" if inproc else "") + f"; {args.epochs} epochs per run.",
        "examples/s: steady state, the mean over the epochs after the first (which includes tracing); "
        "validation is not timed. `unfused` is single with model.recurrent_dropout=0.2 (no fused LSTM kernel); "
        "`by_length` is single with trainer.batch_by_length=true (sortish batches cut to their longest row).",
        f"Threads: TF_NUM_INTRAOP_THREADS/TF_NUM_INTEROP_THREADS per process = {args.cores} cores / processes, "
        "so every configuration uses the machine's cores once (see the script's docstring).",
        "Trainer vs model.fit: same process, same tokens, seed, model, Adam rate and global-norm clipping, "
        f"batch {args.batch_size}, jit_compile=False on both; {args.rounds} round(s), order alternating. "
        "Target: our Trainer within 5% of model.fit.",
    ]
    name = args.name or ("throughput_imdb" if args.imdb else "throughput")
    write_results(name, f"Training throughput ({data})", {"args": vars(args), "strategies": rows, "in_process": inproc},
                  [("Strategies (real CLI)", rows, columns),
                   ("Input pipeline and framework overhead", extra_rows,
                    [("measurement", "measurement"), ("examples_per_second", "examples/s"), ("relative", "relative")])],
                  notes)
    done = [row for row in rows if row.get("examples_per_second")]
    save_bar_chart(name, [row["config"] for row in done], [row["examples_per_second"] for row in done],
                   "training examples / s", f"Steady-state throughput, global batch {args.batch_size}")


if __name__ == "__main__":
    main()
