"""`python -m sentiment_dist.train`: train a classifier under any strategy.

    python -m sentiment_dist.train model=bilstm dataset=csv dataset.path=reviews.csv trainer.epochs=2
    python -m sentiment_dist.train init.from=outputs/pretrain/<time>     # from a pretrained language model
    horovodrun -np 4 python -m sentiment_dist.train strategy=horovod
"""

from __future__ import annotations

from omegaconf import DictConfig

from sentiment_dist.config.hydra_task import hydra_task


@hydra_task("train")
def main(cfg: DictConfig) -> dict:
    from sentiment_dist.jobs.job import start, tracked
    from sentiment_dist.jobs.recipes import train_classifier

    job = start(cfg)
    return tracked(job, "train", lambda tracker: train_classifier(job, tracker))


if __name__ == "__main__":
    main()
