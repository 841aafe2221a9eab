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

import os

from omegaconf import DictConfig

from sentiment_dist.config.hydra_task import hydra_task
from sentiment_dist.runtime.errors import UserError


@hydra_task("ulmfit")
def main(cfg: DictConfig) -> dict:
    from sentiment_dist.jobs.job import start, tracked
    from sentiment_dist.jobs.recipes import adapted_language_model, finetune_from_language_model

    if cfg.finetune.source:
        raise UserError("ulmfit starts from a language model: name a pretrain run with init.from, not finetune.source.")
    job = start(cfg)
    group = cfg.logger.get("group") or os.path.basename(os.path.normpath(job.run.path))
    pretrained = adapted_language_model(job, cfg.general.dataset, cfg.model, group)
    return tracked(
        job, "finetune", lambda tracker: finetune_from_language_model(job, pretrained, tracker, vocab="source"),
        group=group, input_model=pretrained.directory,
    )


if __name__ == "__main__":
    main()
