"""`python -m sentiment_dist.prepare`: tokenize a dataset once, for every rank of every job after.

    python -m sentiment_dist.prepare dataset=csv dataset.path=reviews.csv.gz model.vocab_size=20000 prepare.workers=2
    horovodrun -np 8 python -m sentiment_dist.train strategy=horovod dataset=csv dataset.path=reviews.csv.gz \\
        dataset.prepared=<the printed directory>

Reads the dataset's files in chunks (never a whole file at once), tokenizes them in
`prepare.workers` processes, builds the vocabulary from the training split's word counts
and writes a store (`sentiment_dist/data/store.py`) that jobs memory-map with
`dataset.prepared=<dir>`. The same dataset and vocabulary prepared again reuse the finished
store. `prepare.vocabulary=<run dir>` tokenizes against a fine-tune's source vocabulary
(`prepare.extend_max_tokens` new words at most), `prepare.labels=false` keeps texts only, for
a language model.
"""

from __future__ import annotations

import logging
import os

from omegaconf import DictConfig

from sentiment_dist.config.hydra_task import hydra_task

log = logging.getLogger(__name__)


@hydra_task("prepare")
def main(cfg: DictConfig) -> dict:
    from sentiment_dist.data import log_dataset, resolve_dataset
    from sentiment_dist.data.store import SPLITS, PreparedStore, prepare
    from sentiment_dist.data.tokenizer import VocabularyRequest
    from sentiment_dist.jobs.rundir import RunDir
    from sentiment_dist.runtime.errors import UserError

    settings = cfg.prepare
    if settings.vocabulary:
        given = settings.vocabulary
        directory = given if os.path.isdir(given) else os.path.dirname(given) or "."
        if not os.path.isdir(given) and not os.path.isfile(given):
            raise UserError(f"prepare.vocabulary={given} does not exist; give a run directory or its vocabulary.txt.")
        if os.path.isfile(given) and os.path.basename(given) != RunDir.VOCABULARY:
            raise UserError(f"prepare.vocabulary={given} is not a {RunDir.VOCABULARY}; give a run directory or its "
                            f"{RunDir.VOCABULARY}.")
        request = VocabularyRequest(base=tuple(RunDir(directory).read_vocabulary()), extend=settings.extend_max_tokens)
    else:
        request = VocabularyRequest(size=cfg.model.vocab_size)
    labels = bool(settings.labels)
    path, reused = prepare(cfg.dataset, request, settings.out, cfg.paths.prepared_dir, settings.workers,
                           lambda dataset, sink: resolve_dataset(dataset, sink, labels), labels)
    store = PreparedStore.open(path)
    manifest = store.manifest
    splits = manifest["splits"]
    if reused:
        log.info("Reusing the store prepared before from the same data and vocabulary.")
    else:
        examples = sum(split["examples"] for split in splits.values())
        log.info("Prepared %d examples (%s) in %.1f s with %d worker(s): %.0f examples/s; %d-token vocabulary",
                 examples, ", ".join(f"{role} {splits[role]['examples']}" for role in SPLITS),
                 manifest["prepare_seconds"], manifest["workers"], examples / max(manifest["prepare_seconds"], 1e-9),
                 manifest["vocabulary"]["size"])
        log_dataset(cfg.dataset.name, store.summary(), store.label_names)  # what was dropped, and why
    print(f"Prepared store: {os.path.abspath(path)}", flush=True)
    return {"path": os.path.abspath(path), "reused": reused, "splits": splits}


if __name__ == "__main__":
    main()
