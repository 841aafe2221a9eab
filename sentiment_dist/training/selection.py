"""Which weights a fine-tune keeps, chosen on the validation split only.

A fine-tune that returns its best epoch can still be worse than the model it started from: on a
small or imbalanced target every epoch may lose to the source, and `BestWeights` only ranks
epochs. `Selection` scores the starting weights (the source) on validation before the first
step and lets them compete with the best epoch and, with `alphas`, with the interpolations
between the two, θ(α) = (1 - α) θ_source + α θ_fine-tuned (WiSE-FT: Wortsman et al., CVPR 2022,
who found the interpolations beat both ends under distribution shift). Ties go to the smaller
α, so a fine-tune that does not beat the source on validation returns the source exactly.

Scoring goes through the trainer's evaluator, sharded over every replica, so it runs unchanged
under every strategy; every rank computes the same interpolation and takes the same decision
(the validation scores are summed over replicas). On resume nothing needs saving: the source
is scored again from the freshly transferred model, and the best epoch comes back from
`BestWeights`' file.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from omegaconf import DictConfig, open_dict

from sentiment_dist.data.pipeline import TokenizedSplit
from sentiment_dist.runtime.errors import UserError
from sentiment_dist.training.callbacks import monitor_mode

log = logging.getLogger(__name__)

AUTO = "auto"


def resolve_monitors(trainer_cfg: DictConfig, headline: str | None) -> None:
    """`auto` monitors (best weights, early stopping, LR on plateau) become `val_<headline>`, the
    metric the user reads (`headline_metric`: macro-F1 on imbalanced classes, else accuracy), or
    `val_loss` when there is none (a language model). In place, so config.yaml records them."""
    monitor = f"val_{headline}" if headline else "val_loss"
    with open_dict(trainer_cfg):
        if trainer_cfg.best_monitor == AUTO:
            trainer_cfg.best_monitor = monitor
        for key in ("early_stopping", "lr_on_plateau"):
            if trainer_cfg[key].monitor == AUTO:
                trainer_cfg[key].monitor = monitor


def interpolate(start: list[np.ndarray], tuned: list[np.ndarray], alpha: float) -> list[np.ndarray]:
    return [(1.0 - alpha) * s + alpha * t for s, t in zip(start, tuned, strict=True)]


class Selection:
    """The source against the fine-tuned weights (and, with `alphas`, their interpolations), on validation.

    `start(trainer, validation)` before training; `choose(trainer, validation)` after, with the
    model holding the fine-tuned weights (the best epoch's): it leaves the chosen weights in the
    model and returns what it compared, for the run dir."""

    def __init__(self, monitor: str, alphas: list[float] | tuple = (), guard: bool = True):
        bad = [a for a in alphas if not 0 < float(a) < 1]
        if bad:
            raise UserError(f"finetune.wise_ft_alphas={list(alphas)} must lie strictly between 0 (the source) and 1 "
                            "(the fine-tuned weights), which are always compared; drop " + ", ".join(map(str, bad)) + ".")
        self.monitor, self.guard = monitor, guard
        self.alphas = sorted({float(a) for a in alphas})
        self.mode = monitor_mode(monitor)
        self.start_weights: list[np.ndarray] | None = None
        self.start_value: float | None = None

    def start(self, trainer, validation: TokenizedSplit, weights: list[np.ndarray] | None = None) -> float:
        """Score the weights training starts from (or `weights`, the source, when the model starts
        elsewhere) on validation, and keep them."""
        if weights is not None:
            current = trainer.model.get_weights()
            trainer.model.set_weights(weights)
        self.start_weights = trainer.model.get_weights()
        self.start_value = self._value(trainer, validation)
        if weights is not None:
            trainer.model.set_weights(current)
        return self.start_value

    def _value(self, trainer, validation: TokenizedSplit) -> float:
        logs = trainer.validation_logs(validation)
        if self.monitor not in logs:
            raise UserError(f"trainer.best_monitor={self.monitor} is not a validation metric; use one of {sorted(logs)}.")
        return float(logs[self.monitor])

    def _better(self, value: float, than: float) -> bool:
        return value > than if self.mode == "max" else value < than

    def candidates(self, trainer, validation: TokenizedSplit) -> list[tuple[float, float]]:
        """(α, validation value) for α = 0 (the source, if guarded), the `alphas`, and 1 (the fine-tuned
        weights, now in the model), in increasing α."""
        if self.start_weights is None:
            raise RuntimeError("Selection.start was not called before training")
        tuned = trainer.model.get_weights()
        scored = [(0.0, self.start_value)] if self.guard else []
        for alpha in self.alphas:
            trainer.model.set_weights(interpolate(self.start_weights, tuned, alpha))
            scored.append((alpha, self._value(trainer, validation)))
        trainer.model.set_weights(tuned)
        scored.append((1.0, self._value(trainer, validation)))
        self._tuned = tuned
        return scored

    def pick(self, scored: list[tuple[float, float]]) -> tuple[float, float]:
        """The best (α, value); the smaller α wins a tie (the source, when nothing beats it)."""
        best = scored[0]
        for alpha, value in scored[1:]:
            if self._better(value, best[1]) or (math.isnan(best[1]) and not math.isnan(value)):
                best = (alpha, value)
        return best

    def apply(self, trainer, alpha: float) -> None:
        """Put θ(α) in the model (after `candidates`)."""
        trainer.model.set_weights(interpolate(self.start_weights, self._tuned, alpha) if 0 < alpha < 1 else
                                  self.start_weights if alpha == 0 else self._tuned)

    def choose(self, trainer, validation: TokenizedSplit) -> dict:
        """Compare, keep the winner in the model, and say which won and by how much."""
        scored = self.candidates(trainer, validation)
        alpha, value = self.pick(scored)
        self.apply(trainer, alpha)
        tuned_value = scored[-1][1]
        kept = "source" if alpha == 0 else "fine-tuned" if alpha == 1 else "interpolated"
        sign = 1.0 if self.mode == "max" else -1.0
        summary = {
            "monitor": self.monitor,
            "source": self.start_value,
            "fine_tuned": tuned_value,
            "candidates": [{"alpha": a, "value": v} for a, v in scored],
            "alpha": alpha,
            "kept": kept,
            "value": value,
            # in the monitor's better direction: what the kept weights gain over the source and over the fine-tuned
            "gain_over_source": sign * (value - self.start_value),
            "gain_over_fine_tuned": sign * (value - tuned_value),
        }
        return summary


def describe(summary: dict) -> str:
    """One line for the log: which weights won on validation, and by how much."""
    monitor, source, tuned = summary["monitor"].removeprefix("val_"), summary["source"], summary["fine_tuned"]
    if summary["kept"] == "source":
        return (f"Kept the source weights: validation {monitor} {source:.4f}, the fine-tuned weights' {tuned:.4f} "
                f"did not beat it ({tuned - source:+.4f}).")
    if summary["kept"] == "fine-tuned":
        return f"Kept the fine-tuned weights: validation {monitor} {tuned:.4f} against the source's {source:.4f} ({tuned - source:+.4f})."
    return (f"Kept the weights interpolated at alpha={summary['alpha']:g} between the source (0) and the fine-tuned "
            f"(1): validation {monitor} {summary['value']:.4f}, against the source's {source:.4f} and the fine-tuned "
            f"weights' {tuned:.4f}.")
