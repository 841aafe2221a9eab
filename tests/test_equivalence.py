"""The proof that distribution is correct: same global batch, same model.

A deterministic model (no dropout, SGD, clipping on so that clipping after
the cross-replica sum is checked too) trained for two epochs under single,
mirrored (2 logical CPUs), multiworker (2 processes) and horovod (2
processes) must end with the same weights. Wrong sharding (replicas seeing
the same or overlapping examples), wrong loss scaling (mean instead of sum
over the global batch) or a missing/double reduction all move the weights
far beyond the tolerance.
"""

from __future__ import annotations

import glob
import zipfile

import h5py
import numpy as np
import pytest
import tensorflow as tf
from conftest import cli_env, horovodrun, module, multiworker, only_run_dir, read_json, run, session_run

GLOBAL_BATCH = 32
COMMON = [
    "debug=tiny",
    "trainer.verbose=false",
    "model=lstm",
    "model.dropout=0",
    "trainer.optimizer=sgd",
    "trainer.momentum=0.9",
    "trainer.learning_rate=0.3",
    "trainer.gradient_clip_norm=0.5",
    "trainer.epochs=2",
    "trainer.early_stopping.patience=null",
    "trainer.lr_on_plateau.patience=null",
    "dataset.num_train=256",
]


def weights(run_dir) -> dict[str, np.ndarray]:
    """Every weight array in a saved model.keras, by its path in the file."""
    arrays = {}
    with zipfile.ZipFile(run_dir / "model.keras") as archive, archive.open("model.weights.h5") as handle:
        with h5py.File(handle, "r") as h5:
            h5.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    assert arrays, "no weights found"
    return arrays


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    """The single-device run every strategy must match (shared in the session: it is also the
    source model of the distributed fine-tuning tests)."""
    return session_run(tmp_path_factory, "equivalence_single", module("train", *COMMON, f"trainer.batch_size={GLOBAL_BATCH}"))


def assert_same_weights(reference, other, tolerance=2e-5):
    """model.keras: the weights a run keeps, its best epoch's (`trainer.best_monitor`)."""
    a, b = weights(reference), weights(other)
    assert a.keys() == b.keys()
    shapes = {k: (a[k].shape, b[k].shape) for k in a if a[k].shape != b[k].shape}
    assert not shapes, f"weights differ in shape (another vocabulary): {shapes}"
    worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    moved = max(float(np.max(np.abs(a[k]))) for k in a)
    assert moved > 0.01
    assert worst < tolerance, f"weights differ by {worst}"


def last_state(run_dir) -> dict[str, np.ndarray]:
    """Every variable of the run's newest checkpoint: the weights training ended with (the last
    epoch's, not the best one's model.keras keeps), the optimizers' slots, step counts and
    rates, the position; not the clock or the save counter."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(run_dir / "checkpoints")))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
            if key.endswith("VARIABLE_VALUE") and not key.startswith(("epoch_seconds", "save_counter"))}


def assert_same_last_state(reference, other, tolerance=2e-5):
    a, b = last_state(reference), last_state(other)
    assert a.keys() == b.keys()
    worst = max(float(np.max(np.abs(a[key].astype(np.float64) - b[key].astype(np.float64)))) for key in a)
    assert worst < tolerance, f"the last checkpoints differ by {worst}"


HALF_BATCH_LAUNCHES = {
    "mirrored": lambda *args: module("train", *args, "strategy=mirrored", "strategy.cpu_devices=2"),
    "multiworker": lambda *args: multiworker(2) + module("train", *args, "strategy=multiworker"),
    "horovod": lambda *args: horovodrun() + module("train", *args, "strategy=horovod"),
}


@pytest.mark.parametrize("strategy", sorted(HALF_BATCH_LAUNCHES))
def test_a_distributed_job_trains_the_single_device_model_in_one_run_dir_from_all_the_data(single_run, strategy,
                                                                                             tmp_path, request):
    """The job end to end, as a user launches it (the default run dir, progress printed): one run
    dir, made by the chief alone, the whole test split scored once, nothing left in the ranks'
    scratch space, and the single device's weights."""
    if strategy == "horovod":
        request.getfixturevalue("horovod_available")
    temp = tmp_path / "tmp"  # this job's own TMPDIR: what its ranks leave there is theirs alone
    temp.mkdir()
    result = run(HALF_BATCH_LAUNCHES[strategy](*COMMON, f"trainer.batch_size={GLOBAL_BATCH // 2}", "trainer.verbose=true"),
                 cwd=tmp_path, env=cli_env(TMPDIR=str(temp)))
    run_dir = only_run_dir(tmp_path / "outputs")
    assert len(list((tmp_path / "outputs" / "train").iterdir())) == 1
    assert_same_weights(single_run, run_dir)
    metrics, alone = read_json(run_dir / "metrics.json"), read_json(single_run / "metrics.json")
    examples = alone["test"]["examples"]
    assert metrics["test"]["examples"] == examples  # every test example, once
    assert sum(metrics["test"]["per_class"][name]["support"] for name in metrics["test"]["label_names"]) == examples
    assert metrics["environment"]["num_replicas"] == 2 and metrics["environment"]["global_batch_size"] == GLOBAL_BATCH
    # The chief alone prints progress and the run dir; ranks agree on it.
    assert result.stdout.count("Epoch 1/2") == 1 and result.stdout.count("Run directory:") == 1
    assert result.stdout.count("Strategy ") == 1
    assert f"global batch {GLOBAL_BATCH}" in result.stdout
    assert not glob.glob(f"{temp}/sentiment-dist-*"), "a worker left its scratch dir behind"


# Options that change what is trained or kept, each checked under every strategy:
VARIANTS = {
    "weight_average": ["trainer.ema_momentum=0.9"],  # saved: the moving average, updated in apply_gradients
    "batch_by_length": ["trainer.batch_by_length=true"],  # sortish global batches, cut before being split
    # a multi-domain source: two datasets drawn 1:3, one oversampled, once, the same on every rank
    "mixture": ["dataset=synthetic_mixture", "dataset.size=256", "dataset.sources.ecommerce.weight=3",
                "dataset.sources.ecommerce.dataset.num_train=128"],
}


def common(variant: str) -> list[str]:
    """COMMON with the variant's options (a mixture has no num_train of its own)."""
    base = [arg for arg in COMMON if not (variant == "mixture" and arg.startswith("dataset.num_train"))]
    return [*base, *VARIANTS[variant]]


@pytest.fixture(scope="module")
def single_variant_runs(tmp_path_factory):
    """Each variant's single-device run, trained once in the session (not once per xdist worker:
    the variants' tests are spread over the workers)."""
    def get(variant: str):
        return session_run(tmp_path_factory, f"single_{variant}",
                           module("train", *common(variant), f"trainer.batch_size={GLOBAL_BATCH}"))

    return get


@pytest.mark.parametrize("strategy", sorted(HALF_BATCH_LAUNCHES))
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_training_options_match_single_device(single_variant_runs, single_run, variant, strategy, tmp_path, request):
    if strategy == "horovod":
        request.getfixturevalue("horovod_available")
    half = f"trainer.batch_size={GLOBAL_BATCH // 2}"
    run(HALF_BATCH_LAUNCHES[strategy](*common(variant), half, f"hydra.run.dir={tmp_path}/run"), cwd=tmp_path)
    assert_same_weights(single_variant_runs(variant), tmp_path / "run")
    with pytest.raises(AssertionError, match="weights differ"):  # the option changed the model (or its data)
        assert_same_weights(single_run, tmp_path / "run")


def test_a_different_global_batch_gives_different_weights(single_run, tmp_path):
    """The tolerance is meaningful: training on other batches moves weights well past it."""
    run(module("train", *COMMON, f"trainer.batch_size={GLOBAL_BATCH // 2}", f"hydra.run.dir={tmp_path}/run"), cwd=tmp_path)
    with pytest.raises(AssertionError, match="weights differ"):
        assert_same_weights(single_run, tmp_path / "run")


@pytest.mark.parametrize("strategy", ["single", *sorted(HALF_BATCH_LAUNCHES)])
def test_a_prepared_store_trains_the_model_the_in_memory_path_trains(single_variant_runs, strategy, tmp_path, request):
    """`dataset.prepared=auto` (the chief prepares, every rank memory-maps, each gathers its slice of every
    global batch) gives the weights of the in-memory single-device run, batches cut by length included."""
    if strategy == "horovod":
        request.getfixturevalue("horovod_available")
    args = [*common("batch_by_length"), "dataset.prepared=auto", f"paths.prepared_dir={tmp_path}/prepared",
            f"hydra.run.dir={tmp_path}/run"]
    if strategy == "single":
        run(module("train", *args, f"trainer.batch_size={GLOBAL_BATCH}"), cwd=tmp_path)
    else:
        run(HALF_BATCH_LAUNCHES[strategy](*args, f"trainer.batch_size={GLOBAL_BATCH // 2}"), cwd=tmp_path)
    assert len(list((tmp_path / "prepared").glob("*/manifest.json"))) == 1  # prepared once, by the chief
    assert_same_weights(single_variant_runs("batch_by_length"), tmp_path / "run")
