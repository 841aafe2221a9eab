"""Elastic Horovod on localhost with Gloo: a worker dies mid-epoch and the job finishes anyway.

Two "hosts" (localhost and 127.0.0.1, one slot each: Horovod blacklists a whole host when one
of its workers fails, so one host with two slots would lose both) come from the discovery
script. The chief (rank 0) is killed with SIGKILL mid-epoch 2: the survivor rolls back to the
last commit, becomes rank 0 of a world of one, keeps the global batch, finishes every epoch,
writes the one complete run dir and continues the same W&B run; its final weights equal those
of a run that was never interrupted.
"""

from __future__ import annotations

import re
import signal
import time

import tensorflow as tf
import wandb_records as wr
from conftest import BIN, REPO, module, quiet, read_json, session_run
from test_equivalence import assert_same_weights
from test_preemption import ENV, HALF, LONG, check_history, epoch_saved, start_and_signal

COMMIT_STEPS = 20


def test_a_killed_chief_leaves_a_finished_job_one_run_dir_and_one_wandb_run(tmp_path, tmp_path_factory, horovod_available):
    reference = session_run(tmp_path_factory, "uninterrupted", module("train", *LONG))
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("localhost:1\n127.0.0.1:1\n")
    run_dir = tmp_path / "run"
    command = [
        str(BIN / "horovodrun"), "-np", "2", "--min-np", "1", "--max-np", "2", "--gloo", "--network-interface", "lo",
        "--host-discovery-script", str(REPO / "launch" / "discover_hosts.sh"),
        *module("train", *LONG, HALF, "strategy=horovod_elastic", f"strategy.commit_steps={COMMIT_STEPS}",
                "logger=wandb", f"hydra.run.dir={run_dir}"),
    ]  # fmt: skip
    env = {**ENV, "HOSTS_FILE": str(hosts)}
    started = time.monotonic()
    code, output = start_and_signal(command, tmp_path, "HOROVOD_RANK=0", signal.SIGKILL, epoch_saved(run_dir), delay=1.0,
                                    env=env)
    assert code == 0, quiet(output)[-4000:]
    assert time.monotonic() - started < 300

    # The survivor rolled back to a commit (every 20 steps) and went on alone with the same global batch.
    changed = re.findall(r"Workers changed: 1 now; resuming at (the start of epoch 2|epoch 2, step (\d+)) with a "
                         r"global batch of 32 \(32 per worker\)", output)
    assert len(changed) == 1, quiet(output)[-4000:]
    assert int(changed[0][1] or 0) % COMMIT_STEPS == 0
    assert "Process 0 exit with status code 137" in output  # it was the chief that died

    assert (run_dir / "metrics.json").exists() and read_json(run_dir / "metrics.json")["epochs_run"] == 2
    check_history(run_dir, reference)
    assert_same_weights(reference, run_dir)

    # One W&B run: the dead chief's segment and the new chief's, one id, every epoch logged.
    segments = sorted(run_dir.glob("wandb/offline-run-*"))
    assert 1 <= len(segments) <= 2
    records = [wr.records(next(segment.glob("run-*.wandb"))) for segment in segments]
    assert len(set().union(*(wr.run_ids(r) for r in records))) == 1
    epochs = [wr.history_values(r, "epoch") for r in records]
    assert all(len(e) == len(set(e)) for e in epochs)  # none twice in a segment (W&B keeps a step's first row)
    assert sorted(set().union(*epochs)) == [1.0, 2.0]
    assert [a.type for r in records for a in wr.artifacts(r) if a.type == "model"] == ["model"]  # written once, by the new chief


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
