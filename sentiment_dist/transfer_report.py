"""`python -m sentiment_dist.transfer_report`: does transfer pay off, and when?

    python -m sentiment_dist.transfer_report [finetune.source=<run dir>] [dataset=...]

Trains every method (`sentiment_dist.jobs.report`) on the same samples of N
labelled target examples, for each N in `report.sizes`, and writes
`transfer_report.json`, `transfer_report.png` and a table in the log. Runs in
one process (strategy=single).
"""

from __future__ import annotations

from omegaconf import DictConfig

from sentiment_dist.config.hydra_task import hydra_task
from sentiment_dist.runtime.errors import UserError


@hydra_task("transfer_report")
def main(cfg: DictConfig) -> list[dict]:
    from sentiment_dist.data import load_dataset
    from sentiment_dist.data.inputs import labeled_texts
    from sentiment_dist.jobs import tracking
    from sentiment_dist.jobs.job import start, tracked
    from sentiment_dist.jobs.recipes import adapted_language_model, adapted_source_encoder, source_classifier
    from sentiment_dist.jobs.report import Report, check_samples
    from sentiment_dist.jobs.transfer import vocabulary_request

    if cfg.strategy.name != "single":
        raise UserError("the transfer report runs in one process; use strategy=single (fine-tune itself runs under any strategy).")
    job = start(cfg)
    data = None if cfg.dataset.get("prepared") else load_dataset(cfg.dataset)
    if data is not None:
        check_samples(cfg, data)  # before the source (and language models) train
    source = source_classifier(job, cfg.logger.get("group"))
    if data is None:  # a prepared store, read as the fine-tune reads it: with the source's vocabulary
        data = labeled_texts(cfg, job.dist, vocabulary_request(source.vocabulary, cfg.finetune.vocab,
                                                               cfg.finetune.extend_max_tokens))
        check_samples(cfg, data)
    report = Report(cfg, job.dist, source, data, job.run)
    group = cfg.logger.get("group") or tracking.source_group(source.directory)
    if cfg.report.lm_schedules:  # the general LM reads the source run's own corpus, with its architecture
        report.use_language_model(adapted_language_model(job, source.config.dataset, source.config.model, group))
    if "lm_adapt" in cfg.report.helpers:  # the source's own encoder, adapted to the target's texts
        report.use_adapted_encoder(adapted_source_encoder(job, source, group))
    summary = report.run()
    written = report.write(job.run)
    return tracked(job, "transfer_report", lambda tracker: tracker.log_report(summary, job.run.path) or written,
                   group=tracking.source_group(source.directory))


if __name__ == "__main__":
    main()
