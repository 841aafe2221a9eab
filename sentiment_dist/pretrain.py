"""`python -m sentiment_dist.pretrain`: pretrain the embedding and encoder as a language model.

    python -m sentiment_dist.pretrain dataset=imdb dataset.path=IMDB_Dataset.csv model=bilstm
    # continue on the target domain's unlabeled text, keeping (or extending) the vocabulary
    python -m sentiment_dist.pretrain init.from=outputs/pretrain/<time> dataset=ecommerce dataset.path=reviews.csv
    # a classifier from the pretrained groups (finetune adds gradual unfreezing and discriminative rates)
    python -m sentiment_dist.finetune init.from=outputs/pretrain/<time> dataset=ecommerce dataset.path=reviews.csv

Any dataset serves: its labels are ignored, and `dataset=text` reads
unlabelled text (a file with one text per line, a directory of .txt files,
or a table's text columns). The train split's texts are the
training text, the validation split's give the held-out perplexity that
early stopping watches, the test split's the perplexity reported at the end.
Held-out perplexity takes the full softmax over the vocabulary, so it is
scored on a seeded sample of at most `lm.eval_texts` texts of each held-out
split (the same sample every epoch); the split itself never changes, so no
test text reaches the language model's training data.
The run dir holds `config.yaml`, `vocabulary.txt`, `language_model.weights.h5`
(embedding, encoder and LM heads), `history.json` and `metrics.json`.
"""

from __future__ import annotations

import logging
import os

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from sentiment_dist import tracking
from sentiment_dist.callbacks import checkpoint_paths, make_callbacks
from sentiment_dist.config import hydra_task, resolved
from sentiment_dist.data import load_dataset
from sentiment_dist.data.pipeline import (
    TokenizedSplit,
    build_vocabulary,
    make_vectorizer,
    save_vocabulary,
    vectorize,
    vectorize_windows,
)
from sentiment_dist.distribute import Distribution
from sentiment_dist.errors import UserError
from sentiment_dist.io import atomic_write, atomic_write_json, atomic_write_text
from sentiment_dist.language_model import (
    LM_WEIGHTS_FILE,
    LanguageModelTask,
    build_language_model,
    check_compatible,
    copy_pretrained,
    init_from,
    lm_param_groups,
    load_pretrained,
    pretrained_vocabulary,
    unigram_log_frequencies,
)
from sentiment_dist.report import plot_history
from sentiment_dist.runs import CONFIG_FILE, METRICS_FILE
from sentiment_dist.train import run_stage, run_tracked, start
from sentiment_dist.trainer import Trainer

log = logging.getLogger(__name__)


def unlabeled(vocabulary: list[str], texts: np.ndarray, sequence_length: int, whole_texts: bool) -> TokenizedSplit:
    """Rows of token ids for the shared pipeline (labels unused, weight 1).

    `whole_texts`: every token, each text cut into consecutive windows of
    `sequence_length`; otherwise each text's first `sequence_length` tokens."""
    if whole_texts:
        tokens = vectorize_windows(vocabulary, texts, sequence_length)
    else:
        tokens = vectorize(make_vectorizer(sequence_length, vocabulary), texts)
    return TokenizedSplit(tokens, np.zeros(len(tokens), np.int32), np.ones(len(tokens), np.float32))


def held_out_sample(texts: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """At most `limit` of `texts`, a seeded sample in their original order (all of them for None)."""
    if limit is None or len(texts) <= limit:
        return texts
    if limit < 1:
        raise UserError(f"lm.eval_texts={limit} must be a positive number of texts, or null for all of them.")
    return texts[np.sort(np.random.default_rng(seed).choice(len(texts), size=limit, replace=False))]


def pretrain_run(cfg: DictConfig, dist: Distribution, directory: str, tracker: tracking.Tracker) -> dict:
    """Train `cfg.model`'s embedding and encoder as a language model on `cfg.dataset`'s texts."""
    data = load_dataset(cfg.dataset, labels=False)
    source = init_from(cfg)
    pretrained = load_pretrained(source) if source else None
    if pretrained:
        check_compatible(pretrained, cfg.model)
        vocabulary = pretrained_vocabulary(cfg.init, dist, pretrained, lambda: data.train.texts)
    else:
        vocabulary = dist.broadcast_object(build_vocabulary(data.train.texts, cfg.model.vocab_size) if dist.is_chief else None)
    eval_texts, whole_texts = cfg.lm.get("eval_texts"), cfg.lm.get("whole_texts", True)
    held_out_texts = [held_out_sample(split.texts, eval_texts, cfg.seed) for split in (data.validation, data.test)]
    train, validation, test = (
        unlabeled(vocabulary, texts, cfg.model.sequence_length, whole_texts) for texts in (data.train.texts, *held_out_texts)
    )
    with dist.scope():
        model = build_language_model(cfg.model, len(vocabulary))
        if pretrained:
            copy_pretrained(pretrained, model)
        else:
            for head in model.heads:
                head.bias.assign(unigram_log_frequencies(train.tokens, len(vocabulary)))
    task = LanguageModelTask(len(vocabulary), cfg.lm.num_sampled)
    multipliers = cfg.lm.get("lr_multipliers") if pretrained else None  # continued pretraining only
    groups = lm_param_groups(model, multipliers) if multipliers else None
    trainer = Trainer(dist, model, task, cfg.trainer, cfg.seed, groups=groups)
    environment = {
        **dist.describe(),
        "global_batch_size": trainer.global_batch,
        "effective_learning_rate": trainer.base_learning_rate,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "train_texts": len(data.train.texts),
        "train_tokens": int(np.count_nonzero(train.tokens)),
        "whole_texts": bool(whole_texts),
        "held_out_texts": {"validation": len(held_out_texts[0]), "test": len(held_out_texts[1])},
        "softmax": f"sampled ({task.num_sampled} negatives)" if task.num_sampled else "full",
        "lr_multipliers": dict(multipliers) if multipliers else None,
    }
    if dist.is_chief:
        log.info(
            "Pretraining a %s language model (%s) on %d %s texts (%d tokens in %d rows of %d, %s): "
            "%d-token vocabulary%s, %s softmax%s; strategy %s, %d replica(s), global batch %d",
            cfg.model.name, "forward + backward" if cfg.model.bidirectional else "forward", len(data.train.texts),
            cfg.dataset.name, environment["train_tokens"], len(train), cfg.model.sequence_length,
            "whole texts" if whole_texts else "each text cut at that length",
            len(vocabulary), f" from {pretrained.directory}" if pretrained else "", environment["softmax"],
            f", lr multipliers {environment['lr_multipliers']}" if multipliers else "",
            dist.name, dist.num_replicas, trainer.global_batch,
        )
        tracker.update_config({"environment": environment})
    checkpoint_dir, best_path = checkpoint_paths(directory)
    steps = len(train) // trainer.global_batch
    callbacks = make_callbacks(cfg.trainer, float(cfg.trainer.learning_rate), trainer.base_learning_rate, steps, best_path, dist.is_chief)
    callbacks.append(tracking.EpochLogger(tracker))
    history = trainer.fit(
        train, validation, cfg.trainer.epochs, callbacks,
        checkpoint_dir=checkpoint_dir if cfg.trainer.resume else None, verbose=cfg.trainer.verbose,
    )
    epochs = history.epochs
    metrics = {
        "validation": trainer.evaluate(validation).as_dict(),
        "test": trainer.evaluate(test).as_dict(),
        "epochs_run": len(epochs),
        "train_seconds": float(sum(epoch["epoch_seconds"] for epoch in epochs)),
        "tokens_per_second": float(np.mean([epoch["tokens_per_second"] for epoch in epochs])) if epochs else 0.0,
        "vocab_size": len(vocabulary),
        "init_from": os.path.abspath(pretrained.directory) if pretrained else None,
        "environment": environment,
    }
    if dist.is_chief:
        atomic_write_text(os.path.join(directory, CONFIG_FILE), OmegaConf.to_yaml(resolved(cfg)))
        save_vocabulary(vocabulary, directory)
        atomic_write(os.path.join(directory, LM_WEIGHTS_FILE), model.save_weights)
        atomic_write_json(os.path.join(directory, "history.json"), history.as_columns())
        plot_history(history.as_columns(), os.path.join(directory, "training_curves.png"))
        atomic_write_json(os.path.join(directory, METRICS_FILE), metrics)
        held_out = metrics["test"]
        log.info(
            "Held-out perplexity %.2f on %d tokens of %d test texts%s; next-token accuracy %.3f; %.0f tokens/s",
            held_out["perplexity"], held_out["tokens"], len(held_out_texts[1]),
            "".join(f", {d} {p:.2f}" for d, p in held_out["perplexity_by_direction"].items()) if cfg.model.bidirectional else "",
            held_out["accuracy"], metrics["tokens_per_second"],
        )
        tracker.log_pretrain_results(metrics, directory)
    return metrics


def pretrain_stage(cfg: DictConfig, dist: Distribution, directory: str, group: str | None) -> str:
    """Run (or, when `directory` already holds a finished one, reuse) a pretraining stage of a longer job."""
    run_stage(cfg, dist, directory, "pretrain", lambda tracker: pretrain_run(cfg, dist, directory, tracker), group)
    return directory


@hydra_task("pretrain")
def main(cfg: DictConfig) -> dict:
    dist, directory = start(cfg)
    source = init_from(cfg)
    group = tracking.source_group(source) if source else None  # continued pretraining joins its source's group
    return run_tracked(
        cfg, dist, directory, "pretrain", lambda tracker: pretrain_run(cfg, dist, directory, tracker), group=group
    )


if __name__ == "__main__":
    main()
