"""Who this process is, as its launcher announced it: read from the environment, before
TensorFlow or Horovod start (and without importing them, so Hydra can decide where the run
dir goes in a fraction of a second)."""

from __future__ import annotations

import json
import os

from sentiment_dist.runtime.errors import UserError

# What horovodrun (Gloo or MPI) and other MPI launchers set: this process was started as one rank of several.
RANK_VARIABLES = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


def launch_rank() -> int:
    """This process's rank as its launcher announced it, before any init.

    Hydra needs to know whether it runs on the chief before TensorFlow or
    Horovod start (only the chief gets a run directory); `Distribution`
    checks after init that it agrees with this.
    """
    for name in RANK_VARIABLES:
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


# -- SLURM ----------------------------------------------------------------------------


def expand_hostlist(hostlist: str) -> list[str]:
    """Slurm's compressed host list in Slurm's own order: `node[9-10],gpu[01,03]-ib` ->
    `node9, node10, gpu01-ib, gpu03-ib` (what `scontrol show hostnames` prints, without
    needing scontrol; ranges keep their zero padding, several bracket groups multiply)."""
    hosts, depth, item = [], 0, ""
    for char in hostlist + ",":
        if char == "," and depth == 0:
            if item.strip():
                hosts.extend(_expand_host(item.strip()))
            item = ""
            continue
        depth += {"[": 1, "]": -1}.get(char, 0)
        item += char
    return hosts


def _expand_host(pattern: str) -> list[str]:
    if "[" not in pattern:
        return [pattern]
    prefix, rest = pattern.split("[", 1)
    ranges, suffix = rest.split("]", 1)
    values = []
    for part in ranges.split(","):
        first, _, last = part.partition("-")
        width = len(first)
        values.extend(str(n).zfill(width) for n in range(int(first), int(last or first) + 1))
    return [prefix + value + tail for value in values for tail in _expand_host(suffix)]


def expand_tasks_per_node(spec: str, nodes: int) -> list[int]:
    """`SLURM_TASKS_PER_NODE` (`2(x3),1`) as one count per node."""
    counts = []
    for part in spec.split(","):
        count, _, repeat = part.partition("(x")
        counts.extend([int(count)] * int(repeat.rstrip(")") or 1))
    return counts if len(counts) == nodes else [counts[0]] * nodes


def slurm_tf_config(port_base: int, env: dict | None = None) -> dict:
    """A TF_CONFIG for this srun task: every task of the step as `host:port`, hosts in
    Slurm's node order and tasks in its default block distribution (so worker i is
    SLURM_PROCID i), one port per job (`port_base + SLURM_JOB_ID % 10000`, + the task's
    index on its node) so that two jobs sharing a node do not collide."""
    env = os.environ if env is None else env
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    if not nodelist or not env.get("SLURM_PROCID", "").isdigit():
        raise UserError(
            "strategy.cluster_resolver=slurm needs the SLURM_* variables srun sets (SLURM_JOB_NODELIST, "
            "SLURM_PROCID); start the workers with srun (launch/slurm/multiworker.sbatch) or use TF_CONFIG."
        )
    hosts = expand_hostlist(nodelist)
    tasks = expand_tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or "1",
                                  len(hosts))
    port = port_base + int(env.get("SLURM_JOB_ID", "0") or 0) % 10000
    workers = [f"{host}:{port + local}" for host, count in zip(hosts, tasks, strict=True) for local in range(count)]
    return {"cluster": {"worker": workers}, "task": {"type": "worker", "index": int(env["SLURM_PROCID"])}}
