"""Parameter groups, each with its own Keras optimizer (discriminative learning rates).

Why one optimizer per group and not `keras.optimizers.MultiOptimizer`:
`MultiOptimizer.apply` takes a gradient for every variable it was built
with, on every step. Gradual unfreezing trains some groups and not others:
given `None` for a frozen group, its inner optimizer raises "No gradients
provided for any variable"; given zeros, AdamW's weight decay still moves the
frozen weights, and Adam counts the steps, so a group unfrozen after 1,000
frozen steps misses most of its bias correction: its first step is 2.5x a
fresh Adam's (measured in tests/test_finetune.py::test_multi_optimizer_cannot_freeze_a_group).
Here only the groups that train take a step, and each group's step counter
starts when it does.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from omegaconf import DictConfig

from sentiment_dist.runtime.errors import UserError

OPTIMIZERS = {
    "adam": lambda lr, cfg, **ema: keras.optimizers.Adam(lr, **ema),
    "adamw": lambda lr, cfg, **ema: keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay, **ema),
    "sgd": lambda lr, cfg, **ema: keras.optimizers.SGD(lr, momentum=cfg.momentum, **ema),
    "rmsprop": lambda lr, cfg, **ema: keras.optimizers.RMSprop(lr, **ema),
}


@dataclass
class ParamGroup:
    """Variables trained together at `multiplier` times the base learning rate; with `anchor` > 0,
    pulled back toward the values they start from (L2-SP, see `Trainer`)."""

    name: str
    variables: list
    multiplier: float = 1.0
    optimizer: keras.optimizers.Optimizer | None = None
    trainable: bool = True
    anchor: float = 0.0


def param_groups(variables: dict[str, list], multipliers: DictConfig | dict | None) -> list[ParamGroup]:
    """One group per entry of `variables` (layer group -> variables) at
    `multipliers[group]` times the base rate; every group at the base rate for None."""
    multipliers = dict(multipliers or {})
    return [ParamGroup(name, group, float(multipliers.get(name, 1.0))) for name, group in variables.items()]


def make_optimizer(cfg: DictConfig, learning_rate: float, several_groups: bool) -> keras.optimizers.Optimizer:
    """`trainer.optimizer` at `learning_rate`, with Keras' weight averaging when
    `trainer.ema_momentum` is set and loss scaling under mixed_float16."""
    ema = {"use_ema": True, "ema_momentum": float(cfg.ema_momentum)} if cfg.ema_momentum is not None else {}
    optimizer = OPTIMIZERS[cfg.optimizer](learning_rate, cfg, **ema)
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        if several_groups:
            raise UserError(
                "trainer.precision=mixed_float16 cannot scale the loss for several learning-rate "
                "groups (fine-tuning, continued pretraining); use trainer.precision=mixed_bfloat16, or "
                "lm.lr_multipliers=null for one group when continuing pretraining."
            )
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def reduce_gradients_outside(optimizer: keras.optimizers.Optimizer) -> None:
    """Stop Keras from all-reducing gradients a second time: the one private attribute touched.

    The trainer sums gradients over replicas itself so that clipping sees the
    global gradient, as on one device. Keras' TensorFlow optimizer sums them
    again inside `apply` whenever it runs in a replica context, and it must run
    there: applying in a cross-replica context (`merge_call`) fails inside
    Keras (`maybe_merge_call` on no replica context, measured with Keras 3.15).
    No public switch exists, so the reduction is replaced by the identity.
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if not hasattr(inner, "_all_reduce_sum_gradients"):
        raise RuntimeError("this Keras version no longer reduces gradients in the optimizer; revisit")
    inner._all_reduce_sum_gradients = lambda grads_and_vars: grads_and_vars


class GroupOptimizers:
    """What Keras callbacks see as `model.optimizer`: every group's optimizer.

    `ReduceLROnPlateau` lowers each of `optimizers` in turn (keeping the ratios
    between groups) and logs `learning_rate_<group>`; `learning_rate` is the
    base rate (multiplier 1), which warm-up sets.
    """

    def __init__(self, groups: list[ParamGroup]):
        self.groups = groups
        self.optimizers = [group.optimizer for group in groups]

    @property
    def learning_rate(self) -> float:
        group = self.groups[0]
        return float(keras.ops.convert_to_numpy(group.optimizer.learning_rate)) / group.multiplier

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        for group in self.groups:
            group.optimizer.learning_rate = value * group.multiplier

    @property
    def iterations(self):
        return self.optimizers[0].iterations

    @property
    def variables(self) -> list:
        return [v for optimizer in self.optimizers for v in optimizer.variables]


class SteppedGroups:
    """The model Keras' `SwapEMAWeights` callback sees: its `optimizer` lists the
    groups that have taken a step. An optimizer's averages start at zero and
    become the weights on its first step, so swapping in a group that is still
    frozen would zero it; such a group keeps its weights."""

    def __init__(self, groups: list[ParamGroup]):
        self.groups = groups

    @property
    def optimizer(self):
        return self

    @property
    def optimizers(self) -> list:
        stepped = [group.optimizer for group in self.groups if int(group.optimizer.iterations.numpy()) > 0]
        return [getattr(optimizer, "inner_optimizer", optimizer) for optimizer in stepped]
