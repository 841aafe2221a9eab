"""Fine-tuning under Mirrored, MultiWorker, Horovod and elastic Horovod, and pretraining under
MultiWorker and Horovod (Mirrored: test_pretrain.py), give the single-device
weights, as training does (test_equivalence.py: the same global batch, the same tolerance).

The fine-tune exercises what only transfer does: a vocabulary extended with the target's tokens
(computed once and shared: `Distribution.shared`, through `broadcast_object` and
`_sum_from_chief` under MultiWorker; recomputed on every process under elastic Horovod), the
source scored before training, one optimizer per parameter group with its own rate
(discriminative rates), and gradual unfreezing, which traces the step again when the encoder
joins the head in epoch 2, while the embedding stays frozen. A frozen group is compared bit for
bit: the chief's embedding equals the single-device run's and, for the source's tokens, the
source's. A rank whose frozen weights drifted would also feed the others different gradients,
which the weight comparison would catch.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from conftest import BIN, REPO, cli_env, horovodrun, module, multiworker, read_json, run, session_run
from test_equivalence import (
    COMMON,
    GLOBAL_BATCH,
    assert_same_last_state,
    assert_same_weights,
    last_state,
    weights,
)
from test_pretrain import EXACT, LM_WEIGHTS_FILE, h5_arrays

HALF = f"trainer.batch_size={GLOBAL_BATCH // 2}"
# Deterministic (SGD, no dropout: the source is the equivalence test's single-device run).
FINETUNE = ["debug=tiny", "trainer.verbose=false", "finetune.vocab=extend", "finetune.schedule=gradual",
            "trainer.epochs=2", "trainer.optimizer=sgd", "trainer.momentum=0.9", "trainer.learning_rate=0.3",
            "trainer.gradient_clip_norm=0.5", "trainer.early_stopping.patience=null", "dataset.num_train=256"]


def elastic(task: str, *overrides: str) -> list[str]:
    """Two workers under elastic Horovod, hosts from $HOSTS_FILE (nothing fails: what differs is
    that each process computes before training what the others would otherwise receive)."""
    return [str(BIN / "horovodrun"), "-np", "2", "--min-np", "2", "--max-np", "2", "--gloo", "--network-interface",
            "lo", "--host-discovery-script", str(REPO / "launch" / "discover_hosts.sh"),
            *module(task, *overrides, "strategy=horovod_elastic")]


LAUNCHES = {
    "mirrored": lambda task, *args: module(task, *args, "strategy=mirrored", "strategy.cpu_devices=2"),
    "multiworker": lambda task, *args: multiworker(2) + module(task, *args, "strategy=multiworker"),
    "horovod": lambda task, *args: horovodrun() + module(task, *args, "strategy=horovod"),
    "horovod_elastic": elastic,
}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return session_run(tmp_path_factory, "equivalence_single", module("train", *COMMON, f"trainer.batch_size={GLOBAL_BATCH}"))


@pytest.fixture(scope="module")
def single_finetune(source, tmp_path_factory):
    """Once per session: the xdist workers that run this module's strategies share it."""
    return session_run(tmp_path_factory, "distributed_transfer_single_finetune",
                       module("finetune", *FINETUNE, f"finetune.source={source}", f"trainer.batch_size={GLOBAL_BATCH}"))


def launched(strategy: str, task: str, overrides: list[str], tmp_path, request):
    if strategy.startswith("horovod"):
        request.getfixturevalue("horovod_available")
    run_dir = tmp_path / "run"
    (tmp_path / "hosts.txt").write_text("localhost:1\n127.0.0.1:1\n")
    run(LAUNCHES[strategy](task, *overrides, HALF, f"hydra.run.dir={run_dir}"), cwd=tmp_path,
        env=cli_env(HOSTS_FILE=str(tmp_path / "hosts.txt")))
    return run_dir


@pytest.mark.parametrize("strategy", sorted(LAUNCHES))
def test_a_gradual_finetune_with_an_extended_vocabulary_matches_single_device(source, single_finetune, strategy,
                                                                               tmp_path, request):
    run_dir = launched(strategy, "finetune", [*FINETUNE, f"finetune.source={source}"], tmp_path, request)
    assert_same_weights(single_finetune, run_dir)
    assert_same_last_state(single_finetune, run_dir)

    vocabulary = (run_dir / "vocabulary.txt").read_text().splitlines()
    source_vocabulary = (source / "vocabulary.txt").read_text().splitlines()
    assert vocabulary == (single_finetune / "vocabulary.txt").read_text().splitlines()
    assert vocabulary[: len(source_vocabulary)] == source_vocabulary and len(vocabulary) > len(source_vocabulary)

    tuned, alone, start = weights(run_dir), weights(single_finetune), weights(source)
    embedding = "layers/functional/layers/embedding/vars/0"
    np.testing.assert_array_equal(tuned[embedding], alone[embedding])  # frozen: bit for bit
    np.testing.assert_array_equal(tuned[embedding][: len(source_vocabulary)], start[embedding])
    # The negative control: by the last epoch the encoder (unfrozen in epoch 2) and the head had
    # moved from the source far beyond the tolerance, so the comparisons above could fail. The
    # checkpoint holds one optimizer per group: 0 embedding, 1 encoder, 2 head.
    last = last_state(run_dir)
    for group, name in ((1, "lstm/cell/vars/0"), (2, "dense/vars/0")):
        moved = last[f"optimizer_{group}/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE"] - start[f"layers/functional/layers/{name}"]
        assert np.abs(moved).max() > 10 * 2e-5, name

    metrics, expected = read_json(run_dir / "metrics.json"), read_json(single_finetune / "metrics.json")
    assert metrics["environment"]["num_replicas"] == 2
    before, before_alone = metrics["test_before_training"], expected["test_before_training"]
    assert before["confusion_matrix"] == before_alone["confusion_matrix"]  # the source as-is, scored once
    assert before["loss"] == pytest.approx(before_alone["loss"], abs=1e-5)


@pytest.fixture(scope="module")
def single_pretrain(tmp_path_factory):
    return session_run(tmp_path_factory, "pretrain_exact", module("pretrain", *EXACT, f"trainer.batch_size={GLOBAL_BATCH}"))


@pytest.mark.parametrize("strategy", ["horovod", "multiworker"])
def test_pretraining_matches_single_device(single_pretrain, strategy, tmp_path, request):
    """The LM loss is averaged over the global token count (a scalar all-reduce): two processes
    take one device's step."""
    run_dir = launched(strategy, "pretrain", EXACT, tmp_path, request)
    single, distributed = h5_arrays(single_pretrain / LM_WEIGHTS_FILE), h5_arrays(run_dir / LM_WEIGHTS_FILE)
    assert single.keys() == distributed.keys()
    worst = max(float(np.abs(single[k] - distributed[k]).max()) for k in single)
    assert worst < 2e-5, f"weights differ by {worst}"
    assert_same_last_state(single_pretrain, run_dir)
    # The negative control: the last epoch alone moved the weights far beyond the tolerance.
    before, last = (trainable(path) for path in tf.train.get_checkpoint_state(str(run_dir / "checkpoints")).all_model_checkpoint_paths)
    assert max(float(np.abs(before[key] - last[key]).max()) for key in last) > 100 * 2e-5


def trainable(checkpoint: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(checkpoint)
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map() if "_trainable_variables" in key}
