"""Elastic Horovod on localhost with Gloo: a worker lost at any point of training is recovered from.

Two "hosts" (localhost and 127.0.0.1, one slot each: Horovod blacklists a whole host when one
of its workers fails, so one host with two slots would lose both) come from the discovery
script; a victim takes its host off the script's file, and the next `join` puts it back (Horovod
takes it once its 1-2 s cooldown is over), so the survivors always re-form without it first and
the time the cooldown takes is raced by nothing. One job per role loses a worker
of that role (the chief, or the other one) four times, once at each point a loss can hit:
between two steps, inside a step's gradient all-reduce, as validation starts, and after the
last epoch (before the scores and the run dir are written). After each of the first three a
worker comes back and joins at the next commit, the rejoin the README describes.

The faults are injected at exact points (`sentiment_dist.training.faults`): the process SIGKILLs
itself there, and the survivor waits at its next step for Horovod to report the host back; no
sleep, no race with the clock. Each job must finish every epoch, with the weights (best and
last), the optimizer state and the history of a run never interrupted, one run dir and one W&B
run whose model artifact is logged once.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import tensorflow as tf
import wandb_records as wr
from conftest import BIN, REPO, module, only_run_dir, quiet, read_json, session_run, warm_ranks
from test_equivalence import assert_same_last_state, assert_same_weights
from test_preemption import ENV, HALF, LONG, check_history

COMMIT_STEPS = 20
# (fault, where the survivors resume, where they resume once a worker rejoined). 128 steps an
# epoch; commits every 20 steps and at each epoch's end. The `join`s hold the survivor right
# after its rollback until Horovod reports the lost host back; it joins at the next commit.
CHAIN = [
    ("kill between_steps rank={victim} epoch=1 step=22", "epoch 1, step 20 of 128"),
    ("join between_steps rank=0 world=1 epoch=1 step=21", "epoch 1, step 40 of 128"),
    ("kill in_allreduce rank={victim} epoch=1 step=70", "epoch 1, step 60 of 128"),
    ("join between_steps rank=0 world=1 epoch=1 step=61", "epoch 1, step 80 of 128"),
    ("kill validation rank={victim} epoch=1", "epoch 1, step 120 of 128"),
    ("join between_steps rank=0 world=1 epoch=1 step=121", "the start of epoch 2"),
    ("kill after_training rank={victim}", "the end of training"),
]
WORKERS_CHANGED = re.compile(r"Workers changed: (\d) now; resuming at (.+?) with a global batch of 32 \((\d+) per worker\)")


def run_logged(command: list[str], cwd: Path, env: dict, log: Path) -> str:
    """The output of `command`, which must exit 0; kept in `log` as it comes, so that a failure,
    or a hang stopped by the guard, shows where the job was."""
    command, env = warm_ranks(command, env)
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = process.wait(timeout=1800)  # a hang guard only: a chain takes 3-15 min on 2 busy cores
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = "nothing: it hung, and was killed after 30 min"
    output = log.read_text()
    assert code == 0, f"{command} exited {code}\n{quiet(output)[-6000:]}"
    return output


@pytest.mark.parametrize("victim", ["chief", "non-chief"])
def test_a_worker_lost_at_each_point_is_recovered_from_and_a_worker_rejoins(victim, tmp_path, tmp_path_factory,
                                                                             horovod_available):
    reference = session_run(tmp_path_factory, "uninterrupted", module("train", *LONG))
    rank = 0 if victim == "chief" else 1
    faults = [fault.format(victim=rank) for fault, _ in CHAIN]
    (tmp_path / "faults").mkdir()
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("localhost:1\n127.0.0.1:1\n")
    run_dir = tmp_path / "run"
    command = [
        str(BIN / "horovodrun"), "-np", "2", "--min-np", "1", "--max-np", "2", "--gloo", "--network-interface", "lo",
        "--host-discovery-script", str(REPO / "launch" / "discover_hosts.sh"), "--blacklist-cooldown-range", "1", "2",
        *module("train", *LONG, HALF, "strategy=horovod_elastic", f"strategy.commit_steps={COMMIT_STEPS}",
                "logger=wandb", f"hydra.run.dir={run_dir}"),
    ]  # fmt: skip
    # A victim takes its host off the hosts file and a `join` puts it back: the workers re-form
    # without it every time, not only when they do so before its 1-2 s cooldown ends.
    env = {**ENV, "HOSTS_FILE": str(hosts), "SENTIMENT_DIST_FAULTS_HOSTS": str(hosts),
           "SENTIMENT_DIST_FAULTS": "; ".join(faults), "SENTIMENT_DIST_FAULTS_DIR": str(tmp_path / "faults"),
           # Gloo waits 30 s by default for a peer at the rendezvous: a worker that joins starts
           # TensorFlow first, which takes longer than that on a loaded 2-core machine.
           "HOROVOD_GLOO_TIMEOUT_SECONDS": "600"}
    output = run_logged(command, tmp_path, env, tmp_path / "job.log")

    fired = [f"{n}.fired" for n in range(len(CHAIN))]
    assert sorted(path.name for path in (tmp_path / "faults").iterdir()) == sorted([*fired, "hosts_away"])
    away, listed = (tmp_path / "faults" / "hosts_away").read_text().splitlines(), hosts.read_text().splitlines()
    assert len(away) == 1 and sorted(away + listed) == ["127.0.0.1:1", "localhost:1"]  # the last victim's is off
    assert output.count("exit with status code 137") == 4, quiet(output)[-4000:]  # the four losses, no other
    changes = WORKERS_CHANGED.findall(output)
    expected = [(str(1 + n % 2), where, str(32 // (1 + n % 2))) for n, (_, where) in enumerate(CHAIN)]
    assert changes == expected, quiet(output)[-4000:]

    assert only_run_dir(tmp_path) == run_dir
    assert read_json(run_dir / "metrics.json")["epochs_run"] == 2
    check_history(run_dir, reference)
    assert_same_weights(reference, run_dir)  # model.keras: the best epoch's
    assert_same_last_state(reference, run_dir)  # the newest checkpoint: the last epoch's, and the optimizer's

    # One W&B run: a segment per process that was the chief, one id, every epoch logged, none
    # twice in a segment (W&B keeps a step's first row), the model logged once by the last chief.
    segments = sorted(run_dir.glob("wandb/offline-run-*"))
    assert len(segments) == (5 if victim == "chief" else 1)
    records = [wr.records(next(segment.glob("run-*.wandb"))) for segment in segments]
    assert len(set().union(*(wr.run_ids(r) for r in records))) == 1
    epochs = [wr.history_values(r, "epoch") for r in records]
    assert all(len(e) == len(set(e)) for e in epochs)
    assert sorted(set().union(*epochs)) == [1.0, 2.0]
    assert [a.type for r in records for a in wr.artifacts(r) if a.type == "model"] == ["model"]


def test_a_lost_worker_rolls_back_and_any_other_error_is_raised_where_horovod_would_swallow_it():
    """Horovod's `hvd.elastic.run` rolls back only on an UnknownError naming one of its ops and
    returns None on any other: the negative control shows it swallowing the preemption vote's
    failure (what a survivor got: the vote is named `preemption_vote`). The guard's wrapper turns
    that into a rollback, and carries any other error past Horovod to be raised as it was."""
    import horovod.tensorflow as hvd
    from horovod.common.elastic import ObjectState
    from horovod.common.exceptions import HorovodInternalError

    from sentiment_dist.training.elastic import _CarriedPast, recovering

    # What survivors got (measured): Horovod shut down, or the vote's Gloo connection reset mid-way.
    shut_down = tf.errors.UnknownError(None, None, "Graph execution error:\n\nHorovod has been shut down. This was "
                                       "caused by an exception on one of the ranks ...\n\t [[{{node preemption_vote}}]]")
    reset = tf.errors.UnknownError(None, None, "Graph execution error:\n\n[/tmp/horovod-0.28.1/third_party/compatible17_"
                                   "gloo/gloo/transport/tcp/pair.cc:589] Read error [127.0.0.1]:62142: Connection reset by "
                                   "peer\n\t [[{{node preemption_vote}}]] [Op:__inference_step_and_vote_1394]")
    other = tf.errors.UnknownError(None, None, "Graph execution error: a data file went away")

    def raising(err):
        def action(*state):
            raise err
        return action

    state = ObjectState(bcast_object=lambda obj: obj, get_rank=lambda: 0)  # one process: nothing to sync
    for vote_lost in (shut_down, reset):
        assert hvd.elastic.run(raising(vote_lost))(state) is None  # Horovod alone: as if training had finished
        with pytest.raises(HorovodInternalError):
            recovering(raising(vote_lost))
    with pytest.raises(_CarriedPast) as carried:
        hvd.elastic.run(lambda state: recovering(raising(other)))(state)
    assert carried.value.__cause__ is other


def test_a_resize_rescales_the_rate_as_trainer_lr_scaling_says():
    """elastic_batch=per_worker: half the workers, half the global batch and (linear scaling) half
    the rate, warm-up included; the global policy keeps both."""
    import keras
    from conftest import tiny_model, tiny_trainer
    from omegaconf import OmegaConf

    from sentiment_dist.models.classifier import build_classifier
    from sentiment_dist.runtime.distribute import Distribution
    from sentiment_dist.training.callbacks import LearningRateWarmup
    from sentiment_dist.training.loop import Trainer

    keras.utils.set_random_seed(0)
    cfg = tiny_trainer(batch_size=8, learning_rate=0.02, lr_scaling="linear")
    trainer = Trainer(Distribution(OmegaConf.create({"name": "single"})), build_classifier(tiny_model(), 20, 2), 2, cfg, 0)
    assert trainer.global_batch == 8 and trainer.base_learning_rate == 0.02
    assert trainer.resize(32) == 4.0  # as if 4 workers of 8
    assert trainer.global_batch == 32 and abs(trainer.optimizer.learning_rate - 0.08) < 1e-7
    warmup = LearningRateWarmup(0.02, 0.08, 10)
    warmup.rescale(trainer.resize(16))  # down to 2 workers
    assert abs(trainer.optimizer.learning_rate - 0.04) < 1e-7 and (warmup.start, warmup.target) == (0.01, 0.04)
    assert trainer.resize(16) == 1.0  # the global policy: same batch, same rate, steps traced again


def test_a_process_that_becomes_the_chief_numbers_its_checkpoints_after_the_newest_on_disk(tmp_path):
    """Elastic Horovod: the new chief has saved nothing itself (no restore either: the state came
    by broadcast), and numbered by its own count it overwrote ckpt-1, the copy a damaged newest
    checkpoint falls back to."""
    import keras
    from conftest import tiny_model, tiny_trainer
    from omegaconf import OmegaConf

    from sentiment_dist.models.classifier import build_classifier
    from sentiment_dist.runtime.distribute import Distribution
    from sentiment_dist.training.checkpoint import Checkpointer, Position
    from sentiment_dist.training.loop import Trainer

    single = Distribution(OmegaConf.create({"name": "single"}))
    keras.utils.set_random_seed(0)
    saved = []
    for epoch in (1, 2, 3):  # three processes in turn, each the chief for one save
        trainer = Trainer(single, build_classifier(tiny_model(), 20, 2), 2, tiny_trainer(), 0)
        checkpointer = Checkpointer(single, str(tmp_path))
        checkpointer.attach(trainer)
        saved.append(checkpointer.save(Position(epoch=epoch)))
    assert [path.rsplit("/", 1)[1] for path in saved] == ["ckpt-1", "ckpt-2", "ckpt-3"]
    assert tf.train.latest_checkpoint(str(tmp_path)) == saved[-1]
    reader = tf.train.load_checkpoint(saved[1])  # kept, and still the second save's
    assert int(reader.get_tensor("position/.ATTRIBUTES/VARIABLE_VALUE")[0]) == 2
