"""Transfer learning: vocabulary reuse and extension, frozen groups, heads,
discriminative learning rates, source-run errors, and fine-tuning end to end
under single and horovod (mirrored, multiworker and elastic: test_distributed_transfer.py)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import (
    finetune_main_job,
    horovodrun,
    module,
    read_json,
    run,
    session_run,
    tiny_model,
    tiny_trainer,
    trained_classifier,
    warm_ranks,
)
from omegaconf import OmegaConf

from sentiment_dist.data.tokenizer import count_words, extend_vocabulary, make_vectorizer
from sentiment_dist.jobs.transfer import copy_layers, trainable_groups
from sentiment_dist.models.classifier import build_classifier, group_variables, layer_group
from sentiment_dist.runtime.distribute import Distribution
from sentiment_dist.runtime.errors import UserError
from sentiment_dist.training.loop import Trainer
from sentiment_dist.training.optimizers import ParamGroup

TINY_SOURCE = ["debug=tiny", "trainer.verbose=false", "model=bilstm"]
TINY_TARGET = ["debug=tiny", "trainer.verbose=false"]
FAMILY = "the source model has no layer {name!r}: it is a different model family"


def below_head(model):
    return [layer for layer in model.layers if layer.weights and layer_group(layer) != "head"]


def test_extend_vocabulary_keeps_every_source_id_and_appends_new_tokens():
    source = ["", "[UNK]", "good", "movie", "plot"]
    texts = np.array(["good battery battery", "battery delivery good", "delivery fast"], dtype=object)
    extended = extend_vocabulary(source, *count_words(texts), max_new_tokens=2)
    assert extended[: len(source)] == source
    assert extended[len(source) :] == ["battery", "delivery"]
    old, new = make_vectorizer(6, source), make_vectorizer(6, extended)
    ids_old, ids_new = old(np.array(["good movie plot"])).numpy(), new(np.array(["good movie plot"])).numpy()
    np.testing.assert_array_equal(ids_old, ids_new)


def test_transfer_keeps_source_embedding_rows_and_initialises_new_ones_at_the_mean():
    source = build_classifier(tiny_model(), vocab_size=5, num_classes=2)
    target = build_classifier(tiny_model(), vocab_size=8, num_classes=3)
    assert copy_layers(source.layers, below_head(target), "source", missing=FAMILY) == ["embedding", "encoder_bilstm_0"]
    source_table = source.get_layer("embedding").get_weights()[0]
    target_table = target.get_layer("embedding").get_weights()[0]
    np.testing.assert_array_equal(target_table[:5], source_table)
    np.testing.assert_allclose(target_table[5:], np.repeat(source_table[1:].mean(0, keepdims=True), 3, 0))
    for a, b in zip(source.get_layer("encoder_bilstm_0").get_weights(), target.get_layer("encoder_bilstm_0").get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert target.get_layer("head_output").get_weights()[0].shape[-1] == 3


def test_transfer_from_another_family_is_a_user_error():
    source = build_classifier(tiny_model(name="lstm"), vocab_size=5, num_classes=2)
    target = build_classifier(tiny_model(), vocab_size=5, num_classes=2)
    with pytest.raises(UserError, match="different model family"):
        copy_layers(source.layers, target.layers, "source", missing=FAMILY)


def test_schedules_unfreeze_from_the_top():
    assert trainable_groups("frozen", 3, set()) == {"head"}
    assert trainable_groups("full", 0, {"embedding"}) == {"encoder", "head"}
    assert [trainable_groups("gradual", epoch, set()) for epoch in range(4)] == [
        {"head"}, {"head", "encoder"}, {"head", "encoder", "embedding"}, {"head", "encoder", "embedding"}
    ]


def test_discriminative_rates_change_the_adam_step_per_group():
    """Adam normalises gradients, so a 0.1 multiplier must come from the optimizer's rate."""
    keras.utils.set_random_seed(0)
    model = build_classifier(tiny_model(), vocab_size=20, num_classes=2)
    trainer_cfg = tiny_trainer(batch_size=8, learning_rate=0.01, gradient_clip_norm=None)
    variables = group_variables(model.layers)
    groups = [ParamGroup("embedding", variables["embedding"], 0.1), ParamGroup("encoder", variables["encoder"], 1.0), ParamGroup("head", variables["head"], 1.0)]
    trainer = Trainer(Distribution(OmegaConf.create({"name": "single"})), model, 2, trainer_cfg, seed=0, groups=groups)
    before = {name: [v.numpy().copy() for v in variables[name]] for name in ("embedding", "encoder")}
    tokens = np.random.default_rng(0).integers(1, 20, size=(8, 10)).astype("int32")
    trainer._train_step((tokens, np.array([0, 1] * 4, "int32"), np.ones(8, "float32")))
    step = {name: max(float(np.abs(v.numpy() - b).max()) for v, b in zip(variables[name], before[name], strict=True)) for name in before}
    ratio = step["embedding"] / step["encoder"]
    assert 0.08 < ratio < 0.12, step


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    return session_run(tmp_path_factory, "finetune_source", module("train", *TINY_SOURCE))  # one per session, not per xdist worker


def classifier_weights(run_dir):
    model = keras.models.load_model(run_dir / "model.keras", safe_mode=True)
    classifier = model.get_layer("classifier")
    return {layer.name: layer.get_weights() for layer in classifier.layers if layer.weights}


def test_frozen_groups_stay_bit_identical(source_run, tmp_path):
    run(module("finetune", *TINY_TARGET, f"finetune.source={source_run}", "finetune.freeze=[embedding,encoder]",
               "finetune.schedule=full", f"hydra.run.dir={tmp_path}/run"), cwd=tmp_path)
    before, after = classifier_weights(source_run), classifier_weights(tmp_path / "run")
    for name in ("embedding", "encoder_bilstm_0"):
        for a, b in zip(before[name], after[name], strict=True):
            np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(before["head_output"], after["head_output"], strict=True))
    metrics = read_json(tmp_path / "run" / "metrics.json")
    assert metrics["epochs_run"] >= 1 and metrics["test"]["examples"] == 512


def test_a_different_label_set_gets_a_new_head_and_an_extended_vocabulary(source_run, tmp_path):
    run(module("finetune", *TINY_TARGET, f"finetune.source={source_run}", "dataset.num_classes=3", "finetune.vocab=extend",
               f"hydra.run.dir={tmp_path}/run"), cwd=tmp_path)
    out = tmp_path / "run"
    assert read_json(out / "labels.json")["label_names"] == ["negative", "neutral", "positive"]
    assert classifier_weights(out)["head_output"][0].shape[-1] == 3
    source_vocabulary = (source_run / "vocabulary.txt").read_text().splitlines()
    target_vocabulary = (out / "vocabulary.txt").read_text().splitlines()
    assert target_vocabulary[: len(source_vocabulary)] == source_vocabulary
    assert len(target_vocabulary) > len(source_vocabulary)


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda d: shutil.rmtree(d), "does not exist"),
        (lambda d: (d / "vocabulary.txt").unlink(), "vocabulary.txt is missing"),
        (lambda d: (d / "model.keras").write_bytes(b"not a zip"), "damaged"),
        (lambda d: (d / "model.keras").unlink(), "has no model.keras"),
    ],
)
def test_source_run_problems_fail_with_one_sentence(source_run, tmp_path, damage, message):
    broken = tmp_path / "source"
    shutil.copytree(source_run, broken)
    damage(broken)
    result = run(module("finetune", *TINY_TARGET, f"finetune.source={broken}"), cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("metrics.json"))


def test_expect_model_rejects_another_family(source_run, tmp_path):
    result = run(module("finetune", *TINY_TARGET, f"finetune.source={source_run}", "finetune.expect_model=lstm"), cwd=tmp_path, check=False)
    assert result.returncode == 2 and "is a bilstm, not the lstm" in result.stderr


def test_main_job_trains_the_source_then_fine_tunes_in_one_command(tmp_path_factory):
    job = finetune_main_job(tmp_path_factory)
    output = (job.parent / "output.txt").read_text()
    assert f"Run directory: {job}" in output
    source, target = read_json(job / "source" / "metrics.json"), read_json(job / "metrics.json")
    assert source["test"]["label_names"] == target["test"]["label_names"] == ["negative", "positive"]
    assert (job / "source" / "model.keras").exists() and (job / "model.keras").exists()
    # The source as-is on the target test set: the baseline the fine-tune reports against.
    before = target["test_before_training"]
    assert before["examples"] == target["test"]["examples"] and 0.5 < before["accuracy"] < 1
    assert "Before training: test accuracy" in output


def test_main_job_under_horovod_trains_the_source_then_fine_tunes(tmp_path, horovod_available):
    # Both stages distributed: rank 1 must wait for the chief to write the source before loading it.
    run(horovodrun() + module("finetune", *TINY_TARGET, "strategy=horovod", "trainer.batch_size=16",
                              "source.trainer.batch_size=16", f"hydra.run.dir={tmp_path}/run"), cwd=tmp_path)
    source = read_json(tmp_path / "run" / "source" / "metrics.json")
    metrics = read_json(tmp_path / "run" / "metrics.json")
    assert source["environment"]["world_size"] == 2
    assert metrics["environment"]["world_size"] == 2 and metrics["test"]["examples"] == 512
    assert metrics["test_before_training"]["examples"] == 512  # scored once, over every rank's shard


def test_transfer_report_compares_every_method_at_every_size_and_resumes(source_run, tmp_path):
    command = module("transfer_report", "debug=tiny", "trainer.verbose=false", f"finetune.source={source_run}",
                     "report.sizes=[64,all]", "report.schedules=[gradual]", "report.lm_schedules=[gradual]",
                     f"hydra.run.dir={tmp_path}/run")
    run(command, cwd=tmp_path, timeout=900)
    report = read_json(tmp_path / "run" / "transfer_report.json")
    methods = {(row["method"], row["n"]) for row in report["summary"]}
    methods_run = ("source_as_is", "source_tfidf", "source_plus_target_tfidf", "target_tfidf", "scratch",
                   "finetune_gradual", "finetune_gradual:unguarded", "finetune_gradual:guard", "finetune_gradual:wise_ft",
                   "finetune_gradual+threshold", "lm_finetune_gradual")
    assert methods == {(m, n) for m in methods_run for n in (64, 512)}  # threshold is free: every N
    assert (tmp_path / "run" / "lm_target" / "language_model.weights.h5").exists()  # adapted to the target's text
    assert all(0 <= row["accuracy"] <= 1 and row["repeats"] >= 1 for row in report["summary"])
    # Each mean with its 95% interval (test examples resampled; one repeat here).
    assert all(row["macro_f1_low"] <= row["macro_f1_high"] and row["macro_f1_high"] - row["macro_f1_low"] < 0.2
               for row in report["summary"])
    assert all("predicted" not in point for point in report["points"])  # kept in the points file only
    assert report["headline"] == "accuracy" and not report["imbalanced"]  # synthetic classes are balanced
    assert [v["n"] for v in report["verdicts"]] == [64, 512]
    for verdict in report["verdicts"]:
        assert verdict["best_baseline"] in ("source_as_is", "source_tfidf", "source_plus_target_tfidf", "target_tfidf", "scratch")
        assert ("wins" in verdict["sentence"]) == verdict["finetune_wins"]
        assert verdict["default"] == "finetune_gradual"
        assert verdict["default_margin_low"] <= verdict["default_margin"] + 1e-9 <= verdict["default_margin_high"] + 2e-9
    assert (tmp_path / "run" / "transfer_report.png").stat().st_size > 10_000
    # Killed or not, a rerun in the same run dir finishes only what is missing: here, nothing.
    points = (tmp_path / "run" / "transfer_report_points.jsonl").read_text()
    result = run(command, cwd=tmp_path, timeout=900)
    assert "Resuming the transfer report" in result.stdout + result.stderr
    assert (tmp_path / "run" / "transfer_report_points.jsonl").read_text() == points
    assert read_json(tmp_path / "run" / "transfer_report.json")["summary"] == report["summary"]


def test_a_transfer_report_stopped_by_sigterm_keeps_its_points_and_resumes_them(source_run, tmp_path):
    """A preempted report (SIGTERM between points) keeps its run dir: the points are its checkpoint.
    Its target is read from a prepared store (made by the first run, reused by the second)."""
    command = module("transfer_report", "debug=tiny", "trainer.verbose=false", f"finetune.source={source_run}",
                     "report.sizes=[64]", "report.schedules=[gradual]", "report.helpers=[]", "dataset.prepared=auto",
                     f"paths.prepared_dir={tmp_path}/prepared", f"hydra.run.dir={tmp_path}/run")
    from test_preemption import held_at, wait_for

    points_file = tmp_path / "run" / "transfer_report_points.jsonl"
    # The first fine-tune holds once its epochs are done until the SIGTERM has come: the report
    # stops after that point, on any machine (polling for points raced the report's end).
    env, held = held_at(tmp_path, "sigterm after_training rank=0")
    with open(tmp_path / "first.log", "w") as log:
        launch, env = warm_ranks(command, env)
        report = subprocess.Popen(launch, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_for(held, report, tmp_path / "first.log")
        report.send_signal(signal.SIGTERM)
        assert report.wait(timeout=600) != 0, "the report finished though it was stopped"
    finished = [json.loads(line)["method"] for line in points_file.read_text().splitlines()]
    assert finished and not (tmp_path / "run" / "transfer_report.json").exists()
    result = run(command, cwd=tmp_path)
    assert f"Resuming the transfer report: {len(finished)} points" in result.stdout + result.stderr
    rows = [json.loads(line) for line in points_file.read_text().splitlines()]
    assert [row["method"] for row in rows[:len(finished)]] == finished  # kept, not run again
    assert {row["method"] for row in read_json(tmp_path / "run" / "transfer_report.json")["summary"]} >= {
        "source_as_is", "scratch", "finetune_gradual"}
    (store,) = (tmp_path / "prepared").glob("*/manifest.json")  # one store, made once
    assert read_json(store)["splits"]["train"]["examples"] > 64


def test_multi_optimizer_cannot_freeze_a_group():
    """Why groups have their own optimizers and not keras.optimizers.MultiOptimizer (see
    sentiment_dist/training/optimizers.py): it takes a gradient for every variable on every step."""
    keras.utils.set_random_seed(0)
    model = build_classifier(tiny_model(), vocab_size=20, num_classes=2)
    variables = group_variables(model.layers)
    embedding, rest = variables["embedding"], variables["encoder"] + variables["head"]

    def multi(optimizer):
        mapping = keras.optimizers.OptimizerMap(keras.optimizers.Adam(0.01), {v.path: optimizer for v in embedding})
        built = keras.optimizers.MultiOptimizer(mapping)
        built.build(embedding + rest)
        return built

    grads = [keras.ops.ones_like(v) for v in rest]
    with pytest.raises(ValueError, match="No gradients provided"):  # a frozen group given no gradient
        multi(keras.optimizers.Adam(0.01)).apply([None] * len(embedding) + grads, embedding + rest)
    # Given zeros, AdamW's weight decay still moves the frozen embedding...
    before = embedding[0].numpy().copy()
    optimizer = multi(keras.optimizers.AdamW(0.01, weight_decay=0.1))
    zeros = [keras.ops.zeros_like(v) for v in embedding]
    for _ in range(10):
        optimizer.apply(zeros + grads, embedding + rest)
    assert not np.array_equal(before, embedding[0].numpy())
    # ...and Adam counts the frozen steps, so after 1,000 of them (an epoch of a large set) the first
    # step after unfreezing misses most of its bias correction: 2.5x the step a fresh Adam takes
    # (0.1 / sqrt(0.001 / (1 - 0.999^1001)) against 1; 3.2x in the limit).
    adam = multi(keras.optimizers.Adam(0.01))
    step = tf.function(lambda: adam.apply(zeros + grads, embedding + rest))
    for _ in range(1000):
        step()
    start = embedding[0].numpy().copy()
    adam.apply([keras.ops.ones_like(v) for v in embedding] + grads, embedding + rest)
    late = float(np.abs(embedding[0].numpy() - start).max())
    fresh = keras.optimizers.Adam(0.01)
    fresh.build(embedding)
    start = embedding[0].numpy().copy()
    fresh.apply([keras.ops.ones_like(v) for v in embedding], embedding)
    first = float(np.abs(embedding[0].numpy() - start).max())
    assert 2.3 < late / first < 2.7, (late, first)


# --- the guard: a fine-tune never returns weights worse than the source, on validation ------------


@pytest.fixture(scope="module")
def strong_source(tmp_path_factory):
    """A source good enough on its own domain (about 0.9) that a fine-tune can make it worse."""
    return trained_classifier(tmp_path_factory)  # TINY_SOURCE on 2048 rows, shared with test_cli


@pytest.fixture(scope="module")
def harmful_target(tmp_path_factory):
    """A target on which fine-tuning hurts: new reviews of the source's own domain (where the source
    is good) whose training labels are flipped, while their validation and test labels are right."""
    import pandas as pd
    from conftest import composed

    from sentiment_dist.data import load_dataset

    out = tmp_path_factory.mktemp("harmful")
    data = load_dataset(composed("train", "debug=tiny", "dataset.seed=7").dataset)
    names = np.array(data.label_names)
    for name, split, flip in (("train", data.train, True), ("validation", data.validation, False), ("test", data.test, False)):
        labels = 1 - split.labels if flip else split.labels
        pd.DataFrame({"text": split.texts, "label": names[labels]}).to_csv(out / f"{name}.csv", index=False)
    # Every layer trains from the first epoch: the head alone, on gradual's first epoch, can
    # move too little for the first epoch to be worse than the source.
    return [f"dataset.{name}_path={out / name}.csv" for name in ("train", "validation", "test")] + [
        "dataset=csv", "finetune.schedule=full"]


@pytest.fixture(scope="module")
def guarded(strong_source, harmful_target, tmp_path_factory):
    """The single-device fine-tune of the strong source on the harmful target, run once in the
    session (its output is in `<run dir>/../output.txt`)."""
    return session_run(tmp_path_factory, "guarded_finetune",
                       module("finetune", *TINY_TARGET, f"finetune.source={strong_source}", *harmful_target))


def test_when_fine_tuning_hurts_the_source_comes_back_unchanged(strong_source, harmful_target, guarded, tmp_path):
    common = [*TINY_TARGET, f"finetune.source={strong_source}", *harmful_target]
    output = (guarded.parent / "output.txt").read_text()
    metrics = read_json(guarded / "metrics.json")
    selection = metrics["selection"]
    # Every fine-tuned epoch is worse than the source on validation (else this test proves nothing) ...
    assert max(read_json(guarded / "history.json")["val_accuracy"]) < selection["source"]
    # ... so the source comes back, bit for bit, and the run dir says so.
    assert selection["kept"] == "source" and selection["alpha"] == 0.0
    assert selection["monitor"] == "val_accuracy"  # `auto` on balanced classes
    assert selection["fine_tuned"] < selection["source"] and selection["gain_over_source"] == 0.0
    assert selection["gain_over_fine_tuned"] == pytest.approx(selection["source"] - selection["fine_tuned"])
    assert "Kept the source weights" in output
    assert metrics["validation"]["accuracy"] == selection["source"]
    assert metrics["test"]["confusion_matrix"] == metrics["test_before_training"]["confusion_matrix"]
    before, after = classifier_weights(strong_source), classifier_weights(guarded)
    for name, weights in before.items():
        for a, b in zip(weights, after[name], strict=True):
            np.testing.assert_array_equal(a, b)
    config = OmegaConf.load(guarded / "config.yaml")
    assert config.trainer.best_monitor == config.trainer.early_stopping.monitor == "val_accuracy"

    # Without the guard the best epoch is returned, though it is worse than the source on validation.
    run(module("finetune", *common, "finetune.guard=false", f"hydra.run.dir={tmp_path}/unguarded"), cwd=tmp_path)
    unguarded = read_json(tmp_path / "unguarded" / "metrics.json")
    assert "selection" not in unguarded
    assert unguarded["validation"]["accuracy"] < selection["source"]

def test_the_source_candidate_survives_a_kill_and_resume(strong_source, harmful_target, tmp_path):
    from test_resume import kill_after_first_epoch

    command = module("finetune", *TINY_TARGET, f"finetune.source={strong_source}", *harmful_target,
                     "trainer.early_stopping.patience=null", f"hydra.run.dir={tmp_path}/run")
    kill_after_first_epoch(command, tmp_path / "run", tmp_path)
    assert not (tmp_path / "run" / "metrics.json").exists()
    result = run(command, cwd=tmp_path)
    assert "Resuming from" in result.stdout + result.stderr
    metrics = read_json(tmp_path / "run" / "metrics.json")
    assert metrics["selection"]["kept"] == "source"
    assert metrics["test"]["confusion_matrix"] == metrics["test_before_training"]["confusion_matrix"]


def test_the_guard_under_horovod_scores_every_rank_s_shard_and_keeps_the_source(strong_source, harmful_target, guarded,
                                                                                tmp_path, horovod_available):
    run(horovodrun() + module("finetune", *TINY_TARGET, f"finetune.source={strong_source}", *harmful_target,
                              "strategy=horovod", "trainer.batch_size=16", f"hydra.run.dir={tmp_path}/horovod"), cwd=tmp_path)
    single, horovod = read_json(guarded / "metrics.json"), read_json(tmp_path / "horovod" / "metrics.json")
    assert horovod["environment"]["world_size"] == 2
    assert horovod["selection"]["kept"] == "source"
    # The source is scored on the whole validation split, whatever the sharding: the same value.
    assert horovod["selection"]["source"] == single["selection"]["source"]
    assert horovod["test"]["confusion_matrix"] == single["test_before_training"]["confusion_matrix"]


def test_wise_ft_interpolates_the_weights_and_ties_go_to_the_source():
    from sentiment_dist.training.selection import Selection, interpolate

    keras.utils.set_random_seed(0)
    model = build_classifier(tiny_model(), vocab_size=20, num_classes=2)
    dist = Distribution(OmegaConf.create({"name": "single"}))
    trainer = Trainer(dist, model, 2, tiny_trainer(batch_size=8), seed=0)
    tokens = np.random.default_rng(0).integers(1, 20, size=(16, 10)).astype("int32")
    labels = (tokens[:, 0] > 10).astype("int32")
    from sentiment_dist.data.tokens import TokenizedSplit

    validation = TokenizedSplit.from_matrix(tokens, labels)
    selection = Selection("val_loss", [0.5])
    source_loss = selection.start(trainer, validation)
    start = model.get_weights()
    for _ in range(20):  # fit the validation split itself: the fine-tuned end is better by loss
        trainer._train_step((tokens, labels, np.ones(16, "float32")))
    tuned = model.get_weights()
    summary = selection.choose(trainer, validation)
    assert [c["alpha"] for c in summary["candidates"]] == [0.0, 0.5, 1.0]
    assert summary["source"] == source_loss and summary["fine_tuned"] < source_loss
    assert summary["kept"] in ("fine-tuned", "interpolated") and summary["gain_over_source"] > 0
    selection.apply(trainer, 0.5)
    for got, a, b in zip(model.get_weights(), start, tuned, strict=True):
        np.testing.assert_allclose(got, 0.5 * a + 0.5 * b, rtol=1e-6)
    np.testing.assert_allclose(interpolate([np.ones(2)], [np.zeros(2)], 0.25)[0], [0.75, 0.75])
    # Equal on validation: the smaller alpha, the source at worst, is kept.
    assert Selection("val_accuracy", [0.5]).pick([(0.0, 0.8), (0.5, 0.8), (1.0, 0.8)]) == (0.0, 0.8)
    assert Selection("val_loss", [0.5]).pick([(0.0, 0.3), (0.5, 0.2), (1.0, 0.2)]) == (0.5, 0.2)
    with pytest.raises(UserError, match="strictly between 0"):
        Selection("val_accuracy", [0.0, 0.5])


def test_l2_sp_holds_the_weights_near_the_source():
    dist = Distribution(OmegaConf.create({"name": "single"}))
    tokens = np.random.default_rng(0).integers(1, 20, size=(8, 10)).astype("int32")
    batch = (tokens, np.array([0, 1] * 4, "int32"), np.ones(8, "float32"))

    def moved(strength: float) -> float:
        keras.utils.set_random_seed(0)
        model = build_classifier(tiny_model(), vocab_size=20, num_classes=2)
        groups = [ParamGroup(name, variables, anchor=strength) for name, variables in group_variables(model.layers).items()]
        trainer = Trainer(dist, model, 2, tiny_trainer(batch_size=8, learning_rate=0.05, gradient_clip_norm=None), seed=0,
                          groups=groups)
        start = model.get_weights()
        for _ in range(30):
            trainer._train_step(batch)
        return float(sum(np.sum((a - b) ** 2) for a, b in zip(model.get_weights(), start, strict=True)))

    free, held = moved(0.0), moved(50.0)
    assert held < 0.5 * free, (free, held)


def test_auto_monitors_follow_the_headline_metric():
    from sentiment_dist.training.metrics import headline_metric
    from sentiment_dist.training.selection import resolve_monitors

    assert headline_metric(np.array([0] * 10 + [1] * 90), 2) == "macro_f1"
    assert headline_metric(np.array([0] * 45 + [1] * 55), 2) == "accuracy"
    trainer = tiny_trainer(best_monitor="auto", **{"early_stopping.monitor": "auto"})
    resolve_monitors(trainer, "macro_f1")
    assert trainer.best_monitor == trainer.early_stopping.monitor == "val_macro_f1"
    assert trainer.lr_on_plateau.monitor == "val_loss"  # set explicitly: left alone
    language_model = tiny_trainer(best_monitor="auto")
    resolve_monitors(language_model, None)
    assert language_model.best_monitor == "val_loss"


def test_the_report_s_fine_tune_is_guarded_too(strong_source, harmful_target, tmp_path):
    # Every flipped label, every layer from the first epoch (as harmful_target says): with 64 of
    # them under `gradual` the fine-tune could tie the source on validation (0.948 both, on one
    # machine), and the test proved nothing there.
    run(module("transfer_report", "debug=tiny", "trainer.verbose=false", f"finetune.source={strong_source}", *harmful_target,
               "report.sizes=[all]", "report.schedules=[full]", "report.helpers=[]", f"hydra.run.dir={tmp_path}/run"),
        cwd=tmp_path)
    report = read_json(tmp_path / "run" / "transfer_report.json")
    rows = {row["method"]: row for row in report["points"]}
    kept, unguarded = rows["finetune_full"], rows["finetune_full:unguarded"]
    assert kept["alpha"] == 0.0 and unguarded["alpha"] == 1.0
    assert unguarded["validation"] < kept["validation"]  # the fine-tune hurt, on validation
    assert kept["accuracy"] == rows["source_as_is"]["accuracy"] and kept["macro_f1"] == rows["source_as_is"]["macro_f1"]
    (summary,) = [row for row in report["summary"] if row["method"] == "finetune_full"]
    assert summary["kept_source"] == 1.0
