"""Preemption under every strategy, and damaged checkpoints.

A real SIGTERM reaches a real training process mid-epoch (the chief under single and mirrored,
a non-chief worker under multiworker and horovod): every rank stops at the same step after the
chief saved there, the job exits with 138 and says in one line where it resumes; a rerun on the
same run dir continues from that step with the same batches and ends with the weights (best and
last), optimizer state and history of a run that was never interrupted. Then checkpoints are
damaged: the newest, then all of them.

No race with the clock: the process to be preempted holds at a named point (epoch 2, step 5:
`sentiment_dist.training.faults`) and writes a file; the test sends SIGTERM when it sees the
file, and the process goes on once its guard has taken notice, so the job stops after step 6
on any machine, loaded or not.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import wandb_records as wr
from conftest import BIN, REPO, cli_env, module, quiet, read_json, run, session_run, warm_ranks
from test_equivalence import assert_same_last_state, assert_same_weights

from sentiment_dist.runtime.errors import EXIT_PREEMPTED
from sentiment_dist.training.checkpoint import unreadable

# Deterministic (SGD, no dropout); 128 steps of 32 examples an epoch.
STEPS = 128
HELD = 5  # the SIGTERM comes after this step of epoch 2; every rank stops after the next
LONG = [
    "debug=tiny", "trainer.verbose=false", "model=lstm", "model.dropout=0", "trainer.optimizer=sgd",
    "trainer.momentum=0.9", "trainer.learning_rate=0.3", "trainer.gradient_clip_norm=0.5", "trainer.epochs=2",
    "trainer.early_stopping.patience=null", "trainer.lr_on_plateau.patience=null", "dataset.max_rows=null",
    f"dataset.num_train={STEPS * 32}", "dataset.num_validation=128", "dataset.num_test=128",
]  # fmt: skip
HALF = "trainer.batch_size=16"  # two replicas: the same global batch of 32
LAUNCH = {
    # strategy: (command, the environment entry that picks the process to send SIGTERM to)
    "single": (lambda args: module("train", *args), None),
    "mirrored": (lambda args: module("train", *args, "strategy=mirrored", "strategy.cpu_devices=2", HALF), None),
    "multiworker": (lambda args: [str(BIN / "python"), str(REPO / "launch" / "multiworker.py"), "-n", "2", "--",
                                  *module("train", *args, "strategy=multiworker", HALF)], '"index": 1}'),
    "horovod": (lambda args: [str(REPO / "launch" / "horovodrun.sh"), "-np", "2", "-H", "localhost:2", *args, HALF],
                "HOROVOD_RANK=1"),
}
# launch/horovodrun.sh runs `horovodrun` and `$PYTHON`: this venv's.
ENV = cli_env(PYTHON=str(BIN / "python"), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
PREEMPTED = re.compile(
    r"Preempted: saved epoch 2, step (\d+) of 128 in (\S+/checkpoints/ckpt-\d+); rerun the same command with "
    r"hydra.run.dir=(\S+) to continue from there \(exit code 138\)\."
)


def descendants(pid: int) -> list[int]:
    """Every process started (directly or not) by `pid`."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def training_process(launcher: subprocess.Popen, marker: str | None) -> int:
    """The launcher itself, or the training process it started whose environment holds `marker`."""
    if marker is None:
        return launcher.pid
    for pid in descendants(launcher.pid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in environ and b"sentiment_dist.train" in command and b"python" in command.split(b"\0")[0]:
            return pid
    raise AssertionError(f"no training process with {marker} under {launcher.pid}")


def wait_for(ready: Callable[[], bool], process: subprocess.Popen, log: Path) -> None:
    """Until `ready()` (an event the code emits: a file) while `process` runs; no deadline but the
    process's own end (the test session's timeout is the hang guard)."""
    while not ready():
        assert process.poll() is None, f"ended (code {process.returncode}) first:\n" + quiet(log.read_text())[-3000:]
        time.sleep(0.05)


def start_and_signal(command: list[str], cwd: Path, marker: str | None, sig: int, ready: Callable[[], bool], env=None):
    """Start `command`, and once `ready()` send `sig` to the process `marker` picks. Returns the
    finished process's code and output."""
    path = cwd / "attempt.log"
    log = path.open("w")
    command, env = warm_ranks(command, env or ENV)
    launcher = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_for(ready, launcher, path)
        os.kill(training_process(launcher, marker), sig)
        code = launcher.wait(timeout=900)  # a hang guard, far beyond any run's time
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
        log.close()
    return code, path.read_text()


def held_at(tmp_path: Path, fault: str) -> tuple[dict, Callable[[], bool]]:
    """The environment that plans `fault` (see `sentiment_dist.training.faults`), and whether it fired."""
    faults = tmp_path / "faults"
    faults.mkdir()
    env = {**ENV, "SENTIMENT_DIST_FAULTS": fault, "SENTIMENT_DIST_FAULTS_DIR": str(faults)}
    return env, (faults / "0.fired").exists


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The run never interrupted (single device; every strategy trains the same model)."""
    return session_run(tmp_path_factory, "uninterrupted", module("train", *LONG))


def check_history(run_dir: Path, reference: Path) -> None:
    """One row per epoch, none repeated; the interrupted epoch's loss is the whole epoch's."""
    history, expected = read_json(run_dir / "history.json"), read_json(reference / "history.json")
    assert history["epoch"] == [1, 2]
    np.testing.assert_allclose(history["loss"], expected["loss"], rtol=1e-4)
    np.testing.assert_allclose(history["val_loss"], expected["val_loss"], rtol=1e-4)


@pytest.mark.parametrize("strategy", sorted(LAUNCH))
def test_sigterm_mid_epoch_saves_there_and_a_rerun_ends_like_an_uninterrupted_run(strategy, reference, tmp_path, request):
    if strategy == "horovod":
        request.getfixturevalue("horovod_available")
    launch, marker = LAUNCH[strategy]
    wandb = ["logger=wandb"] if strategy == "single" else []
    run_dir = tmp_path / "run"
    command = launch([*LONG, *wandb, f"hydra.run.dir={run_dir}"])

    rank = 0 if marker is None else 1  # the process the signal goes to
    env, held = held_at(tmp_path, f"sigterm between_steps rank={rank} epoch=2 step={HELD}")
    code, output = start_and_signal(command, tmp_path, marker, signal.SIGTERM, held, env=env)
    assert code == EXIT_PREEMPTED, quiet(output)[-4000:]
    lines = PREEMPTED.findall(output)
    assert len(lines) == 1, quiet(output)[-4000:]  # one line, from the chief
    step, checkpoint, where = int(lines[0][0]), lines[0][1], lines[0][2]
    assert step == HELD + 1  # mid-epoch: at the next step boundary, on every rank
    assert Path(where) == run_dir and Path(checkpoint).parent == run_dir / "checkpoints"
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints")) == checkpoint
    assert not (run_dir / "metrics.json").exists()
    assert [row["epoch"] for row in read_json(run_dir / "checkpoints" / "history.json")] == [1]

    result = run(command, cwd=tmp_path, env=ENV)
    assert f"Resuming from {checkpoint}: epoch 2 after {step * 32} examples." in result.stdout
    assert (run_dir / "metrics.json").exists() and read_json(run_dir / "metrics.json")["epochs_run"] == 2
    check_history(run_dir, reference)
    assert_same_weights(reference, run_dir)  # model.keras: the best epoch's
    assert_same_last_state(reference, run_dir)  # the last epoch's, the optimizer's state, the position
    assert not list(run_dir.rglob(".tmp-*"))
    if wandb:  # one W&B run, resumed: two offline segments with one id, each epoch logged once
        segments = sorted(run_dir.glob("wandb/offline-run-*"))
        assert len(segments) == 2
        records = [wr.records(next(segment.glob("run-*.wandb"))) for segment in segments]
        assert len(wr.run_ids(records[0]) | wr.run_ids(records[1])) == 1
        epochs = [wr.history_values(rs, "epoch") for rs in records]
        assert epochs == [[1.0], [2.0]]


def damage(path: str) -> None:
    """Cut a checkpoint's data file in half (what a kill during a copy or a full disk leaves)."""
    data = f"{path}.data-00000-of-00001"
    with open(data, "r+b") as handle:
        handle.truncate(os.path.getsize(data) // 2)


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before_then_none_readable_stops(reference, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir, ignore=shutil.ignore_patterns("metrics.json"))  # as if killed at the end
    damage(str(run_dir / "checkpoints" / "ckpt-2"))
    command = module("train", *LONG, f"hydra.run.dir={run_dir}")
    result = run(command, cwd=tmp_path)
    warnings = [line for line in result.stdout.splitlines() if "Cannot read" in line]
    assert len(warnings) == 1 and warnings[0].endswith(
        "Cannot read ckpt-2: IndexError: Read less bytes than requested; resuming from ckpt-1 instead.")
    assert f"Resuming from {run_dir}/checkpoints/ckpt-1: after epoch 1." in result.stdout
    check_history(run_dir, reference)
    assert_same_weights(reference, run_dir)

    (run_dir / "metrics.json").unlink()
    for path in ("ckpt-1", "ckpt-2"):
        damage(str(run_dir / "checkpoints" / path))
    result = run(command, cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    error = quiet(result.stderr).strip().splitlines()[-1]
    assert error.startswith(f"error: no checkpoint in {run_dir}/checkpoints can be read (ckpt-2: IndexError")
    assert error.endswith(f"rerun with trainer.resume=false to start this run over (it removes them), or delete {run_dir}/checkpoints.")
    assert (run_dir / "checkpoints" / "ckpt-2.index").exists()  # nothing removed unasked


def small_checkpoints(directory: Path) -> list[str]:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(directory), max_to_keep=2)
    return [manager.save(), manager.save()]


@pytest.mark.parametrize("how", ["truncated data", "missing data", "broken index", "empty index"])
def test_every_kind_of_damage_is_found_before_restoring(tmp_path, how):
    older, newer = small_checkpoints(tmp_path)
    data, index = Path(f"{newer}.data-00000-of-00001"), Path(f"{newer}.index")
    if how == "truncated data":
        data.write_bytes(data.read_bytes()[:-1])
    elif how == "missing data":
        data.unlink()
    elif how == "broken index":
        index.write_bytes(index.read_bytes()[: len(index.read_bytes()) // 2])
    else:
        index.write_bytes(b"")
    assert unreadable(newer) is not None
    assert unreadable(older) is None


@pytest.mark.parametrize("by_length", [False, True])
def test_a_resumed_epoch_takes_the_batches_an_uninterrupted_one_would(by_length):
    """`start` skips the examples already trained on; `order_batch` keeps the epoch's order when
    the global batch changed since (an elastic job that lost a worker, per_worker)."""
    from sentiment_dist.data.pipeline import training_batches
    from sentiment_dist.data.tokens import TokenizedSplit
    from sentiment_dist.runtime.distribute import InputShard

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 12, 200)
    tokens = np.where(np.arange(12) < lengths[:, None], rng.integers(1, 50, (200, 12)), 0).astype(np.int32)
    split = TokenizedSplit.from_matrix(tokens, np.arange(200, dtype=np.int32), np.ones(200, np.float32))  # label = row

    def rows(global_batch, start=0, order_batch=None):
        batches = training_batches(split, global_batch, 7, 3, InputShard(0, 1, 1), by_length, start, order_batch)
        return [row for _, labels, _ in batches for row in labels.numpy().tolist()]

    whole = rows(16)
    assert rows(16, start=5 * 16) == whole[5 * 16:]
    # Resumed with a global batch of 8 (half the workers): the rest of the same order, cut smaller
    # (whole batches of 8 may also take in rows the batches of 16 left over at the epoch's end).
    resumed = rows(8, start=5 * 16, order_batch=16)
    assert resumed[: len(whole) - 5 * 16] == whole[5 * 16:] and len(resumed) - (len(whole) - 5 * 16) < 16
