"""Language-model pretraining (ULMFiT): targets and the backward LM, the loss
falling, held-out perplexity, single vs mirrored, the stages composing
(pretrain -> continue on target text -> classifier) single-process and under
horovod, the classifier starting from exactly the pretrained weights, and
one-sentence errors for runs that do not fit."""

from __future__ import annotations

import math

import h5py
import keras
import numpy as np
import pytest
import wandb_records as wr
from conftest import (
    bilstm_language_model,
    classifier_from_language_model,
    composed,
    horovodrun,
    module,
    read_json,
    run,
    session_run,
    tiny_model,
    tiny_trainer,
)
from omegaconf import OmegaConf

from sentiment_dist.data import load_dataset
from sentiment_dist.data.tokens import Encoder, TokenizedSplit
from sentiment_dist.jobs.rundir import RunDir
from sentiment_dist.jobs.transfer import check_compatible, pretrained_classifier
from sentiment_dist.models.classifier import build_classifier, group_variables
from sentiment_dist.models.language_model import build_language_model, unigram_log_frequencies
from sentiment_dist.runtime.distribute import Distribution
from sentiment_dist.runtime.errors import UserError
from sentiment_dist.training.language_modeling import LanguageModelTask, targets
from sentiment_dist.training.loop import Trainer
from sentiment_dist.training.optimizers import param_groups

LM_WEIGHTS_FILE = RunDir.LANGUAGE_MODEL
TINY = ["debug=tiny", "trainer.verbose=false"]
# Deterministic: full softmax, no dropout, SGD; clipping after the cross-replica sum.
EXACT = [*TINY, "model=lstm", "model.dropout=0", "lm.num_sampled=null", "trainer.optimizer=sgd", "trainer.momentum=0.9",
         "trainer.learning_rate=0.5", "trainer.gradient_clip_norm=1.0", "trainer.epochs=3",
         "trainer.early_stopping.patience=null", "trainer.lr_on_plateau.patience=null", "dataset.num_train=256",
         "model.sequence_length=16"]  # shorter than most synthetic reviews: whole texts span several windows
GLOBAL_BATCH = 32


def tiny_cfg(**overrides):
    return tiny_model(**{"sequence_length": 8, **overrides})


def load_pretrained(directory):
    return RunDir(directory).load_language_model()


def h5_arrays(path) -> dict[str, np.ndarray]:
    arrays = {}
    with h5py.File(path, "r") as h5:
        h5.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return arrays


def test_targets_are_the_next_token_each_way_and_skip_padding():
    tokens = np.array([[3, 4, 5, 0, 0]], np.int32)
    forward, forward_real = targets(tokens, "forward")
    backward, backward_real = targets(tokens, "backward")
    np.testing.assert_array_equal(forward[0], [4, 5, 0, 0, 0])
    np.testing.assert_array_equal(forward_real[0], [True, True, False, False, False])
    np.testing.assert_array_equal(backward[0], [0, 3, 4, 5, 0])
    np.testing.assert_array_equal(backward_real[0], [False, True, True, False, False])  # position 3 is padding


def test_backward_states_are_a_language_model_over_the_reversed_text():
    """Keras' Bidirectional flips the backward outputs back into input order; with
    right padding, backward[t] must have read exactly tokens t..end, reversed."""
    keras.utils.set_random_seed(0)
    lm = build_language_model(tiny_cfg(), vocab_size=10)
    tokens = np.array([[3, 4, 5, 6, 0, 0, 0, 0]], np.int32)
    forward, backward = (s.numpy()[0] for s in lm(tokens))
    bilstm = lm.encoder.get_layer("encoder_bilstm_0")
    table = lm.encoder.get_layer("embedding").get_weights()[0]
    plain = keras.layers.LSTM(4, return_sequences=True)
    real = [3, 4, 5, 6]
    plain.build((1, 4, 6))
    plain.set_weights(bilstm.forward_layer.get_weights())
    np.testing.assert_allclose(forward[:4], plain(table[real][None]).numpy()[0], atol=1e-6)
    plain.set_weights(bilstm.backward_layer.get_weights())
    reversed_states = plain(table[real[::-1]][None]).numpy()[0]  # after 6; 6,5; 6,5,4; 6,5,4,3
    np.testing.assert_allclose(backward[:4], reversed_states[::-1], atol=1e-6)


def test_held_out_perplexity_is_the_full_softmax_over_every_real_token():
    keras.utils.set_random_seed(1)
    lm = build_language_model(tiny_cfg(), vocab_size=10)
    rng = np.random.default_rng(0)
    lengths = [8, 5, 1, 3, 0]
    tokens = np.zeros((5, 8), np.int32)
    for row, length in enumerate(lengths):
        tokens[row, :length] = rng.integers(1, 10, length)
    split = TokenizedSplit.from_matrix(tokens, np.zeros(5, np.int32), np.ones(5, np.float32))
    task = LanguageModelTask(10, num_sampled=None)
    result = task.evaluator(Distribution(OmegaConf.create({"name": "single"})), lm, 2).evaluate(split)
    expected_tokens = sum(max(n - 1, 0) for n in lengths)
    assert result.stats[:, 2].tolist() == [expected_tokens, expected_tokens]
    nll = 0.0  # the same by hand, with numpy
    for states, head, direction in zip(lm(tokens), lm.heads, ("forward", "backward"), strict=True):
        target, real = (np.asarray(t) for t in targets(tokens, direction))
        logits = states.numpy() @ head.kernel.numpy().T + head.bias.numpy()
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nll -= np.take_along_axis(log_probs, target[..., None], -1)[..., 0][real].sum()
    assert math.isclose(result.perplexity, math.exp(nll / (2 * expected_tokens)), rel_tol=1e-4)


def test_heads_start_from_the_unigram_distribution():
    tokens = np.array([[2, 2, 2, 3, 0], [2, 4, 0, 0, 0]], np.int32)
    bias = unigram_log_frequencies(TokenizedSplit.from_matrix(tokens, np.zeros(2, np.int32)).id_counts(6))
    counts = np.array([0, 0, 4, 1, 1, 0]) + 1.0  # padding not counted; add-one smoothing
    np.testing.assert_allclose(bias, np.log(counts / counts.sum()), rtol=1e-6)


def test_a_stacked_bidirectional_encoder_cannot_leak_the_future():
    with pytest.raises(UserError, match="stacked bidirectional"):
        build_language_model(tiny_cfg(num_layers=2), vocab_size=10)


@pytest.fixture(scope="module")
def exact_run(tmp_path_factory):
    """Single device; shared in the session with test_distributed_transfer.py's comparisons."""
    return session_run(tmp_path_factory, "pretrain_exact", module("pretrain", *EXACT, f"trainer.batch_size={GLOBAL_BATCH}"))


def test_lm_loss_falls_and_perplexity_is_measured_on_held_out_text(exact_run):
    history, metrics = read_json(exact_run / "history.json"), read_json(exact_run / "metrics.json")
    assert history["loss"][-1] < history["loss"][0] and history["val_loss"][-1] < history["val_loss"][0]
    assert all(rate > 0 for rate in history["tokens_per_second"])
    # Every real next-token of the test texts (which the model never trained on), once.
    cfg = composed("pretrain", *EXACT)
    vocabulary = (exact_run / "vocabulary.txt").read_text().splitlines()
    data = load_dataset(cfg.dataset)
    encoder, width = Encoder(vocabulary), cfg.model.sequence_length
    windows = encoder.split(data.test.texts, data.test.labels, width).windows(width)
    assert metrics["test"]["tokens"] == int(np.maximum(windows.row_lengths - 1, 0).sum())
    # lm.whole_texts: the LM trains on every token, not on each text's first window only
    train = encoder.split(data.train.texts, data.train.labels, width)
    every_token = int(np.asarray(train.lengths).sum())
    assert metrics["environment"]["train_tokens"] == every_token > int(train.row_lengths.sum())
    assert math.isclose(metrics["test"]["perplexity"], math.exp(metrics["test"]["loss"]))
    assert 1 < metrics["test"]["perplexity"] < len(vocabulary)
    assert {"config.yaml", "vocabulary.txt", LM_WEIGHTS_FILE} <= {p.name for p in exact_run.iterdir()}


def test_lm_under_mirrored_matches_single_device(exact_run, tmp_path):
    """The loss is averaged over the global token count, so two replicas take one device's step."""
    run(module("pretrain", *EXACT, f"trainer.batch_size={GLOBAL_BATCH // 2}", "strategy=mirrored", "strategy.cpu_devices=2",
               f"hydra.run.dir={tmp_path}/run"), cwd=tmp_path)
    single, mirrored = h5_arrays(exact_run / LM_WEIGHTS_FILE), h5_arrays(tmp_path / "run" / LM_WEIGHTS_FILE)
    assert single.keys() == mirrored.keys()
    worst = max(float(np.abs(single[k] - mirrored[k]).max()) for k in single)
    assert worst < 2e-5, f"weights differ by {worst}"


@pytest.fixture(scope="module")
def bilstm_lm(tmp_path_factory):
    return bilstm_language_model(tmp_path_factory)


def test_bidirectional_pretraining_reports_both_directions_to_wandb(bilstm_lm):
    metrics, history = read_json(bilstm_lm / "metrics.json"), read_json(bilstm_lm / "history.json")
    assert metrics["environment"]["softmax"] == "sampled (64 negatives)"
    assert set(metrics["test"]["perplexity_by_direction"]) == {"forward", "backward"}
    assert history["val_perplexity_backward"][-1] < history["val_perplexity_backward"][0]
    assert metrics["tokens_per_second"] > 0
    records = wr.records(wr.run_file(bilstm_lm))
    assert float(wr.summary(records)["test/perplexity"]) == pytest.approx(metrics["test"]["perplexity"])
    assert {"loss", "val_loss", "val_perplexity", "val_perplexity_forward", "tokens_per_second"} <= wr.history_keys(records)
    (artifact,) = [a for a in wr.artifacts(records) if a.type == "language_model"]
    assert {e.path for e in artifact.manifest.contents} == {LM_WEIGHTS_FILE, "vocabulary.txt", "config.yaml", "metrics.json"}


def test_classifier_starts_from_exactly_the_pretrained_weights(bilstm_lm):
    pretrained = load_pretrained(str(bilstm_lm))
    dist = Distribution(OmegaConf.create({"name": "single"}))
    settings = composed("finetune").finetune
    classifier, groups, _ = pretrained_classifier(settings, dist, pretrained, len(pretrained.vocabulary), ["neg", "pos"])
    Trainer(dist, classifier, 2, tiny_trainer(), seed=0, groups=groups)  # set up, step 0
    saved = list(h5_arrays(bilstm_lm / LM_WEIGHTS_FILE).values())
    copied = [w for name in ("embedding", "encoder_bilstm_0") for w in classifier.get_layer(name).get_weights()]
    assert len(copied) == 7  # the table, then kernel, recurrent kernel and bias per direction
    for weight in copied:
        assert any(w.shape == weight.shape and np.array_equal(w, weight) for w in saved)


def test_train_from_a_pretrain_run(bilstm_lm, tmp_path_factory):
    classifier = classifier_from_language_model(tmp_path_factory)
    assert "Initialised embedding, encoder_bilstm_0 from the language model" in (classifier.parent / "output.txt").read_text()
    assert (classifier / "vocabulary.txt").read_text() == (bilstm_lm / "vocabulary.txt").read_text()


def test_a_classifier_that_does_not_fit_the_pretrain_run_fails_in_one_sentence(bilstm_lm, tmp_path):
    result = run(module("train", "debug=tiny", f"init.from={bilstm_lm}", "model.units=16"), cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    message = "was pretrained with model.units=32 but this run has model.units=16; set model.units=32"
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("metrics.json"))


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"vocab_size": 600}, "model.vocab_size=500 but this run has model.vocab_size=600"),  # another vocabulary
        ({"name": "lstm", "bidirectional": False}, "model.bidirectional=True but this run has model.bidirectional=False"),
    ],
)
def test_another_vocabulary_or_family_is_refused(bilstm_lm, changes, message):
    pretrained = load_pretrained(str(bilstm_lm))
    with pytest.raises(UserError, match=message):
        check_compatible(pretrained, OmegaConf.merge(pretrained.config.model, changes))


def test_pooling_may_differ_but_a_classifier_run_is_no_pretrain_run(bilstm_lm, tmp_path):
    pretrained = load_pretrained(str(bilstm_lm))
    check_compatible(pretrained, OmegaConf.merge(pretrained.config.model, {"name": "attention_lstm", "pooling": "attention"}))
    classifier_run = tmp_path / "classifier"
    classifier_run.mkdir()
    (classifier_run / "config.yaml").write_text((bilstm_lm / "config.yaml").read_text())
    with pytest.raises(UserError, match="is not a finished pretrain run.*finetune.source"):
        load_pretrained(str(classifier_run))
    (tmp_path / "notes.txt").write_text("not a run")
    with pytest.raises(UserError, match="notes.txt is a file, not a run directory; pass the run directory"):
        load_pretrained(str(tmp_path / "notes.txt"))


def test_chain_pretrain_then_target_text_then_classifier(bilstm_lm, tmp_path):
    """Continue on unlabelled product-review text (a plain text file, one review
    per line) with an extended vocabulary and per-group rates, then fine-tune
    with the encoder frozen: it must end exactly as the adapted LM left it."""
    target_texts = load_dataset(composed("train", "dataset=synthetic_ecommerce", "dataset.num_train=512").dataset).train.texts
    (tmp_path / "reviews.txt").write_text("\n".join(target_texts) + "\n", encoding="utf-8")
    run(module("pretrain", *TINY, "model=bilstm", "dataset=text", f"dataset.path={tmp_path}/reviews.txt",
               f"init.from={bilstm_lm}", "init.vocab=extend", f"hydra.run.dir={tmp_path}/target"), cwd=tmp_path)
    general, target = (d / "vocabulary.txt" for d in (bilstm_lm, tmp_path / "target"))
    assert target.read_text().startswith(general.read_text()) and len(target.read_text()) > len(general.read_text())
    adapted_metrics = read_json(tmp_path / "target" / "metrics.json")
    assert adapted_metrics["init_from"] == str(bilstm_lm)
    assert adapted_metrics["environment"]["train_texts"] == 460  # 512 lines less 26 for validation and 26 for test (5% each)
    assert adapted_metrics["environment"]["lr_multipliers"] == {"embedding": 0.15, "encoder": 0.4, "head": 1.0}
    run(module("finetune", "debug=tiny", "trainer.verbose=false", f"init.from={tmp_path}/target",
               "finetune.schedule=full", "finetune.freeze=[embedding,encoder]", "model.pooling=mean",
               f"hydra.run.dir={tmp_path}/classifier"), cwd=tmp_path)
    metrics = read_json(tmp_path / "classifier" / "metrics.json")
    assert metrics["test"]["examples"] == 512
    classifier = keras.models.load_model(tmp_path / "classifier" / "model.keras").get_layer("classifier")
    assert classifier.get_layer("encoder_mean_pool")  # pooling chosen at fine-tuning, over the pretrained shapes
    adapted = load_pretrained(str(tmp_path / "target")).model.encoder
    for name in ("embedding", "encoder_bilstm_0"):
        for a, b in zip(classifier.get_layer(name).get_weights(), adapted.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)


def test_ulmfit_chain_under_horovod(tmp_path, horovod_available):
    run(horovodrun() + module("ulmfit", "debug=tiny", "strategy=horovod", "trainer.batch_size=16", "lm.trainer.batch_size=16",
                              "general.dataset.num_train=512", "lm.trainer.epochs=1", "trainer.epochs=2", f"hydra.run.dir={tmp_path}/run"), cwd=tmp_path)
    out = tmp_path / "run"
    general, target, classifier = (read_json(d / "metrics.json") for d in (out / "lm_general", out / "lm_target", out))
    assert general["environment"]["world_size"] == target["environment"]["world_size"] == 2
    assert target["init_from"] == str(out / "lm_general")
    assert classifier["environment"]["world_size"] == 2 and classifier["test"]["examples"] == 512


def test_evaluation_padding_rows_cannot_make_the_loss_nan():
    """Found with +model.pooling=mean: an all-padding row pools an empty mask to NaN."""
    from sentiment_dist.training.classification import Evaluator

    model = build_classifier(tiny_cfg(pooling="mean"), vocab_size=10, num_classes=2)
    tokens = np.random.default_rng(0).integers(1, 10, size=(3, 8)).astype(np.int32)
    split = TokenizedSplit.from_matrix(tokens, np.array([0, 1, 0], np.int32), np.ones(3, np.float32))
    result = Evaluator(Distribution(OmegaConf.create({"name": "single"})), model, 2, global_batch=2).evaluate(split)
    assert math.isfinite(result.loss) and result.count == 3



def test_held_out_perplexity_uses_a_fixed_seeded_sample_of_the_split():
    """The full softmax over a 20k vocabulary is too slow for IMDB's 25k test
    texts on a CPU: at most `lm.eval_texts` are scored, the same ones each time,
    in order, and only texts of that split."""
    from sentiment_dist.data.pipeline import held_out_sample

    sample = held_out_sample(100, 10, seed=42)
    assert len(sample) == 10 and len(set(sample)) == 10 and set(sample) <= set(range(100))
    assert list(sample) == sorted(sample)
    assert list(held_out_sample(100, 10, seed=42)) == list(sample)
    assert list(held_out_sample(100, 10, seed=7)) != list(sample)
    assert list(held_out_sample(100, None, seed=42)) == list(range(100)) == list(held_out_sample(100, 500, seed=42))


def test_continued_pretraining_trains_each_group_at_its_own_rate():
    """ULMFiT's discriminative fine-tuning of the LM: Adam's first step is about
    the learning rate per weight, so the groups' steps keep the multipliers' ratios."""
    keras.utils.set_random_seed(0)
    model = build_language_model(tiny_cfg(), vocab_size=20)
    groups = param_groups(group_variables([*model.encoder.layers, *model.heads]), {"embedding": 0.1, "encoder": 0.5, "head": 1.0})
    assert [g.name for g in groups] == ["embedding", "encoder", "head"]
    assert sum(len(g.variables) for g in groups) == len(model.trainable_variables)
    trainer_cfg = tiny_trainer(batch_size=4, learning_rate=0.01, gradient_clip_norm=None)
    trainer = Trainer(Distribution(OmegaConf.create({"name": "single"})), model, LanguageModelTask(20, None), trainer_cfg,
                      seed=0, groups=groups)
    before = [[v.numpy().copy() for v in g.variables] for g in groups]
    tokens = np.random.default_rng(0).integers(1, 20, size=(4, 8)).astype("int32")
    trainer._train_step((tokens, np.zeros(4, "int32"), np.ones(4, "float32")))
    step = [max(float(np.abs(v.numpy() - b).max()) for v, b in zip(g.variables, old, strict=True)) for g, old in zip(groups, before, strict=True)]
    assert 0.08 < step[0] / step[2] < 0.12 and 0.4 < step[1] / step[2] < 0.6, step
