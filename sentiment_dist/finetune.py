"""`python -m sentiment_dist.finetune`: move a trained classifier to a new domain.

    python -m sentiment_dist.finetune finetune.source=outputs/train/<time> dataset=ecommerce dataset.path=reviews.csv
    python -m sentiment_dist.finetune init.from=outputs/pretrain/<time> dataset=ecommerce dataset.path=reviews.csv

With `finetune.source=null` (the default) the job first trains the source
model (`model` on `source.dataset` with `source.trainer`) into
`<run dir>/source`, then fine-tunes it: one command for the whole transfer.
With `init.from`, it fine-tunes a classifier from a pretrained language model
instead (ULMFiT's last stage). Layer groups can be frozen, `gradual`
unfreezes one group per epoch from the top, and each group trains at its own
learning rate (`finetune.lr_multipliers`).
"""

from __future__ import annotations

import os

from omegaconf import DictConfig

from sentiment_dist.config.hydra_task import hydra_task
from sentiment_dist.runtime.errors import UserError


@hydra_task("finetune")
def main(cfg: DictConfig) -> dict:
    from sentiment_dist.jobs.job import start, tracked
    from sentiment_dist.jobs.recipes import (
        finetune_classifier,
        finetune_from_language_model,
        source_classifier,
    )
    from sentiment_dist.jobs.rundir import RunDir
    from sentiment_dist.jobs.tracking import source_group

    if cfg.init["from"] and cfg.finetune.source:
        raise UserError("set finetune.source (a classifier run) or init.from (a pretrain run), not both.")
    job = start(cfg)
    group = cfg.logger.get("group") or os.path.basename(os.path.normpath(job.run.path))
    if cfg.init["from"]:  # ULMFiT's last stage: from a pretrained language model
        source = RunDir(cfg.init["from"]).load_language_model()
        body = lambda tracker: finetune_from_language_model(job, source, tracker)  # noqa: E731
    else:
        source = source_classifier(job, group)
        body = lambda tracker: finetune_classifier(job, source, tracker)  # noqa: E731
    return tracked(job, "finetune", body, group=source_group(source.directory) or group, input_model=source.directory)


if __name__ == "__main__":
    main()
