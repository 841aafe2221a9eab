"""Who this process is, as its launcher announced it: read from the environment, before
TensorFlow or Horovod start (and without importing them, so Hydra can decide where the run
dir goes in a fraction of a second)."""

from __future__ import annotations

import json
import os

from sentiment_dist.runtime.errors import UserError


def launch_rank() -> int:
    """This process's rank as its launcher announced it, before any init.

    Hydra needs to know whether it runs on the chief before TensorFlow or
    Horovod start (only the chief gets a run directory); `Distribution`
    checks after init that it agrees with this.
    """
    for name in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    tf_config = os.environ.get("TF_CONFIG")
    if tf_config:
        try:
            parsed = json.loads(tf_config)
            task, cluster = parsed.get("task", {}), parsed.get("cluster", {})
            task_type, index = task.get("type", "worker"), int(task.get("index", 0))
        except (ValueError, AttributeError, TypeError) as err:
            raise UserError(
                f"TF_CONFIG is not a TensorFlow cluster description ({type(err).__name__}: {err}); it must be JSON like "
                '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}: fix or unset it.'
            ) from None
        if task_type == "chief":
            return 0
        return index + (1 if "chief" in cluster else 0)
    if os.environ.get("SLURM_PROCID", "").isdigit() and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return int(os.environ["SLURM_PROCID"])
    return 0


def is_launch_chief() -> bool:
    return launch_rank() == 0
