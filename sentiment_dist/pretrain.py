"""`python -m sentiment_dist.pretrain`: pretrain the embedding and encoder as a language model.

    python -m sentiment_dist.pretrain dataset=imdb dataset.path=IMDB_Dataset.csv model=bilstm
    # continue on the target domain's unlabeled text, keeping (or extending) the vocabulary
    python -m sentiment_dist.pretrain init.from=outputs/pretrain/<time> dataset=ecommerce dataset.path=reviews.csv
    # a classifier from the pretrained groups (finetune adds gradual unfreezing and discriminative rates)
    python -m sentiment_dist.finetune init.from=outputs/pretrain/<time> dataset=ecommerce dataset.path=reviews.csv

Any dataset serves: its labels are ignored, and `dataset=text` reads
unlabelled text (a file with one text per line, a directory of .txt files,
or a table's text columns). The train split's texts are the training text,
the validation split's give the held-out perplexity that early stopping
watches, the test split's the perplexity reported at the end. The run dir
holds `config.yaml`, `vocabulary.txt`, `language_model.weights.h5`
(embedding, encoder and LM heads), `history.json` and `metrics.json`.
"""

from __future__ import annotations

from omegaconf import DictConfig

from sentiment_dist.config.hydra_task import hydra_task


@hydra_task("pretrain")
def main(cfg: DictConfig) -> dict:
    from sentiment_dist.jobs.job import start, tracked
    from sentiment_dist.jobs.recipes import pretrain_language_model
    from sentiment_dist.jobs.tracking import source_group

    job = start(cfg)
    group = source_group(cfg.init["from"]) if cfg.init["from"] else None  # continued pretraining joins its source's group
    return tracked(job, "pretrain", lambda tracker: pretrain_language_model(job, tracker), group=group)


if __name__ == "__main__":
    main()
