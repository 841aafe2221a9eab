"""`python -m sentiment_dist.ulmfit`: the whole ULMFiT chain in one job.

    python -m sentiment_dist.ulmfit experiment=ulmfit_synthetic        # offline, a few minutes
    python -m sentiment_dist.ulmfit experiment=ulmfit_imdb dataset.path=IMDB_Dataset.csv

1. `<run dir>/lm_general`: a language model pretrained on `general.dataset`'s
   texts (skipped when `init.from` names a pretrain run to start from);
2. `<run dir>/lm_target`: that model trained further on the target
   `dataset`'s train texts, labels unused (`init.vocab=extend` adds target
   tokens; skipped with `lm.adapt=false`);
3. `<run dir>`: a classifier fine-tuned on the target labels from stage 2,
   with `finetune.*` gradual unfreezing and discriminative learning rates.

Each stage is the run dir the separate commands (`pretrain`, `pretrain
init.from=...`, `finetune init.from=...`) would write, and a rerun with the
same `hydra.run.dir` reuses the finished stages.
"""

from __future__ import annotations

import logging
import os

from omegaconf import DictConfig, OmegaConf

from sentiment_dist.config import hydra_task
from sentiment_dist.distribute import Distribution
from sentiment_dist.errors import UserError
from sentiment_dist.finetune import finetune_from_pretrained
from sentiment_dist.language_model import init_from, load_pretrained
from sentiment_dist.pretrain import pretrain_stage
from sentiment_dist.train import run_tracked, start

log = logging.getLogger(__name__)


def stage_config(cfg: DictConfig, dataset: DictConfig, model: DictConfig, init: dict) -> DictConfig:
    """The config of one pretraining stage, as `python -m sentiment_dist.pretrain` would compose it."""
    shared = {key: cfg[key] for key in ("seed", "tags", "strategy", "logger", "paths")}

    def plain(node: DictConfig) -> dict:  # resolved here: `${dataset.path}` means this job's dataset
        return OmegaConf.to_container(node, resolve=True)

    return OmegaConf.merge(
        shared,
        {"task_name": "pretrain", "dataset": plain(dataset), "model": plain(model), "trainer": plain(cfg.lm.trainer),
         "lm": {key: cfg.lm.get(key) for key in ("num_sampled", "whole_texts", "eval_texts", "lr_multipliers")}, "init": {**plain(cfg.init), **init}},
    )


def adapted_language_model(
    cfg: DictConfig, dist: Distribution, directory: str, general: DictConfig, model: DictConfig, group: str | None
) -> str:
    """Stages 1 and 2: a general language model, adapted to `cfg.dataset`'s text; its run dir."""
    general_dir = init_from(cfg)
    if general_dir is None:
        general_dir = os.path.join(directory, "lm_general")
        pretrain_stage(stage_config(cfg, general, model, {"from": None, "vocab": "source"}), dist, general_dir, group)
    if not cfg.lm.adapt:
        return general_dir
    # The adapted model keeps the general one's architecture (its config.yaml), whatever `model` says.
    general_model = load_pretrained(general_dir).config.model
    target_dir = os.path.join(directory, "lm_target")
    pretrain_stage(stage_config(cfg, cfg.dataset, general_model, {"from": general_dir}), dist, target_dir, group)
    return target_dir


@hydra_task("ulmfit")
def main(cfg: DictConfig) -> dict:
    if cfg.finetune.source:
        raise UserError("ulmfit starts from a language model: name a pretrain run with init.from, not finetune.source.")
    dist, directory = start(cfg)
    group = cfg.logger.get("group") or os.path.basename(os.path.normpath(directory))
    lm_dir = adapted_language_model(cfg, dist, directory, cfg.general.dataset, cfg.model, group)
    pretrained = load_pretrained(lm_dir)
    vocab = OmegaConf.create({"vocab": "source"})
    return run_tracked(
        cfg, dist, directory, "finetune",
        lambda tracker: finetune_from_pretrained(cfg, dist, directory, pretrained, tracker, vocab=vocab),
        group=group, input_model=pretrained.directory,
    )


if __name__ == "__main__":
    main()
