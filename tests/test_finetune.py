"""Transfer learning: vocabulary reuse and extension, frozen groups, heads,
discriminative learning rates, source-run errors, and fine-tuning end to end
under single, mirrored and horovod."""

from __future__ import annotations

import shutil

import keras
import numpy as np
import pytest
from conftest import horovodrun, module, read_json, run
from omegaconf import OmegaConf

from sentiment_dist.config import CONFIG_DIR
from sentiment_dist.data.pipeline import make_vectorizer
from sentiment_dist.distribute import Distribution
from sentiment_dist.errors import UserError
from sentiment_dist.finetune import extend_vocabulary, trainable_groups, transfer_weights
from sentiment_dist.models import build_classifier, group_variables
from sentiment_dist.trainer import ParamGroup, Trainer

TINY_SOURCE = ["debug=tiny", "trainer.verbose=false", "model=bilstm"]
TINY_TARGET = ["debug=tiny_transfer", "trainer.verbose=false"]


def tiny_model_cfg():
    cfg = OmegaConf.load(f"{CONFIG_DIR}/model/bilstm.yaml")
    cfg.merge_with({"sequence_length": 10, "embedding_dim": 6, "units": 4, "dropout": 0.0})
    return cfg


def test_extend_vocabulary_keeps_every_source_id_and_appends_new_tokens():
    source = ["", "[UNK]", "good", "movie", "plot"]
    texts = np.array(["good battery battery", "battery delivery good", "delivery fast"], dtype=object)
    extended = extend_vocabulary(source, texts, max_new_tokens=2)
    assert extended[: len(source)] == source
    assert extended[len(source) :] == ["battery", "delivery"]
    old, new = make_vectorizer(6, source), make_vectorizer(6, extended)
    ids_old, ids_new = old(np.array(["good movie plot"])).numpy(), new(np.array(["good movie plot"])).numpy()
    np.testing.assert_array_equal(ids_old, ids_new)


def test_transfer_keeps_source_embedding_rows_and_initialises_new_ones_at_the_mean():
    source = build_classifier(tiny_model_cfg(), vocab_size=5, num_classes=2)
    target = build_classifier(tiny_model_cfg(), vocab_size=8, num_classes=3)
    transfer_weights(source, target, reuse_head=False)
    source_table = source.get_layer("embedding").get_weights()[0]
    target_table = target.get_layer("embedding").get_weights()[0]
    np.testing.assert_array_equal(target_table[:5], source_table)
    np.testing.assert_allclose(target_table[5:], np.repeat(source_table[1:].mean(0, keepdims=True), 3, 0))
    for a, b in zip(source.get_layer("encoder_bilstm_0").get_weights(), target.get_layer("encoder_bilstm_0").get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert target.get_layer("head_output").get_weights()[0].shape[-1] == 3


def test_transfer_from_another_family_is_a_user_error():
    lstm_cfg = OmegaConf.load(f"{CONFIG_DIR}/model/lstm.yaml")
    lstm_cfg.merge_with({"sequence_length": 10, "embedding_dim": 6, "units": 4})
    source = build_classifier(lstm_cfg, vocab_size=5, num_classes=2)
    target = build_classifier(tiny_model_cfg(), vocab_size=5, num_classes=2)
    with pytest.raises(UserError, match="different model family"):
        transfer_weights(source, target, reuse_head=True)


def test_schedules_unfreeze_from_the_top():
    assert trainable_groups("frozen", 3, set()) == {"head"}
    assert trainable_groups("full", 0, {"embedding"}) == {"encoder", "head"}
    assert [trainable_groups("gradual", epoch, set()) for epoch in range(4)] == [
        {"head"}, {"head", "encoder"}, {"head", "encoder", "embedding"}, {"head", "encoder", "embedding"}
    ]
    with pytest.raises(UserError, match="schedule"):
        trainable_groups("slanted", 0, set())


def test_discriminative_rates_change_the_adam_step_per_group():
    """Adam normalises gradients, so a 0.1 multiplier must come from the optimizer's rate."""
    keras.utils.set_random_seed(0)
    model = build_classifier(tiny_model_cfg(), vocab_size=20, num_classes=2)
    trainer_cfg = OmegaConf.load(f"{CONFIG_DIR}/trainer/default.yaml")
    trainer_cfg.merge_with({"batch_size": 8, "learning_rate": 0.01, "gradient_clip_norm": None})
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
    out = tmp_path_factory.mktemp("source")
    run(module("train", *TINY_SOURCE, f"hydra.run.dir={out}/run"), cwd=out)
    return out / "run"


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
    assert metrics["epochs_run"] >= 1 and metrics["test"]["examples"] == 256


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


def test_main_job_trains_the_source_then_fine_tunes_in_one_command(tmp_path):
    result = run(module("finetune", *TINY_TARGET), cwd=tmp_path)
    (job,) = (tmp_path / "outputs" / "finetune").iterdir()
    assert f"Run directory: {job}" in result.stdout
    source, target = read_json(job / "source" / "metrics.json"), read_json(job / "metrics.json")
    assert source["test"]["label_names"] == target["test"]["label_names"] == ["negative", "positive"]
    assert (job / "source" / "model.keras").exists() and (job / "model.keras").exists()
    # The source as-is on the target test set: the baseline the fine-tune reports against.
    before = target["test_before_training"]
    assert before["examples"] == target["test"]["examples"] and 0.5 < before["accuracy"] < 1
    assert "Before training: test accuracy" in result.stderr + result.stdout


def test_finetune_under_mirrored(source_run, tmp_path):
    run(module("finetune", *TINY_TARGET, f"finetune.source={source_run}", "strategy=mirrored", "strategy.cpu_devices=2",
               "trainer.batch_size=16", f"hydra.run.dir={tmp_path}/run"), cwd=tmp_path)
    assert read_json(tmp_path / "run" / "metrics.json")["environment"]["num_replicas"] == 2


def test_main_job_under_horovod_trains_the_source_then_fine_tunes(tmp_path, horovod_available):
    # Both stages distributed: rank 1 must wait for the chief to write the source before loading it.
    run(horovodrun() + module("finetune", *TINY_TARGET, "strategy=horovod", "trainer.batch_size=16",
                              "source.trainer.batch_size=16", f"hydra.run.dir={tmp_path}/run"), cwd=tmp_path)
    source = read_json(tmp_path / "run" / "source" / "metrics.json")
    metrics = read_json(tmp_path / "run" / "metrics.json")
    assert source["environment"]["world_size"] == 2
    assert metrics["environment"]["world_size"] == 2 and metrics["test"]["examples"] == 256
    assert metrics["test_before_training"]["examples"] == 256  # scored once, over every rank's shard
    assert metrics["test_before_training"]["examples"] == 256  # scored once, over every rank's shard


def test_transfer_report_compares_every_method_at_every_size(source_run, tmp_path):
    run(module("transfer_report", "debug=tiny_report", f"finetune.source={source_run}", "report.sizes=[64,all]",
               "report.schedules=[gradual]", f"hydra.run.dir={tmp_path}/run"), cwd=tmp_path)
    report = read_json(tmp_path / "run" / "transfer_report.json")
    methods = {(row["method"], row["n"]) for row in report["summary"]}
    methods_run = ("source_as_is", "scratch", "tfidf_logreg", "finetune_gradual", "lm_finetune_gradual")
    assert methods == {(m, n) for m in methods_run for n in (64, 256)}
    assert (tmp_path / "run" / "lm_target" / "language_model.weights.h5").exists()  # adapted to the target's text
    assert all(0 <= row["accuracy"] <= 1 and row["repeats"] >= 1 for row in report["summary"])
    assert (tmp_path / "run" / "transfer_report.png").stat().st_size > 10_000
