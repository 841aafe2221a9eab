"""Who am I, how many are we, how is data sharded, how are gradients reduced.

This module is the one place that knows who the chief is. The trainer is
written once against `Distribution`; `strategy=` picks the subclass:

- `single`:      one device, the default `tf.distribute` strategy.
- `mirrored`:    `tf.distribute.MirroredStrategy` over local GPUs (or N logical
                 CPU devices, for tests and laptops).
- `multiworker`: `tf.distribute.MultiWorkerMirroredStrategy` from `TF_CONFIG`
                 or SLURM.
- `horovod`:     one process per GPU, `horovod.tensorflow` collectives;
                 `strategy=horovod_elastic`: the same under `hvd.elastic`, where
                 workers may leave and join while the job runs.

Every strategy sees the same data: the input is cut into *global* batches of
`batch_size * num_replicas` examples in one seeded order, and replica `r`
takes slice `r` of each global batch. Per-replica losses are sums divided by
the global batch size and gradients are summed across replicas, so one step
under any strategy is the same step a single device takes on the whole global
batch (the equivalence test checks this numerically).
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
from omegaconf import DictConfig

from sentiment_dist.runtime.errors import UserError
from sentiment_dist.runtime.launch import launch_rank, slurm_tf_config

log = logging.getLogger(__name__)


def graph_function(fn: Callable | None = None, **options: Any) -> Callable:
    """`tf.function` without AutoGraph. Nothing traced here branches or loops on a tensor in
    Python (Keras 3 layers cannot: the same code runs under JAX), so AutoGraph's rewrite of every
    function the step calls only costs time: about 1 s of CPU in every process that trains or
    scores (9.2 -> 8.2 CPU-s for `train debug=tiny`, mean of 6). Python control flow on a tensor
    now fails at trace time, loudly, instead of being converted."""
    if fn is None:
        return lambda f: tf.function(f, autograph=False, **options)
    return tf.function(fn, autograph=False, **options)


# Scoring batches of token ids cut to their longest row: any number of rows, any length (one trace).
TOKEN_ROWS = tf.TensorSpec([None, None], tf.int32)


class TracedPerSpec:
    """The step `trace(spec)` builds, traced again only when the batch spec changes.

    Steps are given the pipeline's `element_spec`, which leaves the length open when batches are
    cut by length and the row count open for a short last batch: one trace for all of them (a
    retrace for each new shape cost about 1 s of CPU in every fine-tune stage). `reset()` when what
    the step closes over changed (the trainable groups, the world size, the preemption guard)."""

    def __init__(self, trace: Callable[[Any], Callable]):
        self._trace = trace
        self._step: Callable | None = None
        self._spec = None

    def __call__(self, spec) -> Callable:
        if self._step is None or spec != self._spec:
            self._step, self._spec = self._trace(spec), spec
        return self._step

    def reset(self) -> None:
        self._step = None


@dataclass(frozen=True)
class InputShard:
    """What one input pipeline must produce: its slice of every global batch."""

    pipeline_id: int
    num_pipelines: int
    num_replicas: int  # replicas fed by all pipelines together

    @property
    def replicas_per_pipeline(self) -> int:
        return self.num_replicas // self.num_pipelines


class Distribution:
    """Single device; the base every strategy refines."""

    name = "single"
    elastic = False  # workers may leave and join while the job runs (elastic Horovod)

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self._reset_callbacks: list[Callable[[], None]] = []
        self.strategy: tf.distribute.Strategy = self._make_strategy()

    # -- identity ---------------------------------------------------------
    def _make_strategy(self) -> tf.distribute.Strategy:
        return tf.distribute.get_strategy()

    @property
    def rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        """Number of processes."""
        return 1

    @property
    def num_replicas(self) -> int:
        """Number of model replicas across all processes (devices in sync)."""
        return self.strategy.num_replicas_in_sync

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        return {
            "strategy": self.name,
            "world_size": self.world_size,
            "num_replicas": self.num_replicas,
            "rank": self.rank,
            "devices": [d.name for d in tf.config.list_logical_devices() if d.device_type != "CPU"]
            or ["CPU"],
        }

    def _check_launch_rank(self) -> None:
        if launch_rank() != self.rank:
            raise UserError(
                f"the launcher says this process is rank {launch_rank()} but {self.name} "
                f"says {self.rank}; launch strategy={self.name} with its own launcher "
                "(see launch/)."
            )

    # -- placement --------------------------------------------------------
    def scope(self):
        return self.strategy.scope()

    def distribute_dataset(self, make: Callable[[InputShard], tf.data.Dataset]) -> Iterable:
        """Build each input pipeline with `make` and feed its per-replica batches."""

        def from_context(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
            return make(InputShard(ctx.input_pipeline_id, ctx.num_input_pipelines, ctx.num_replicas_in_sync))

        if self.num_replicas == self.world_size:
            # One replica per process (one device, Horovod, a one-GPU MultiWorker worker): the
            # pipeline's own batches, read by a plain iterator, as the replica's.
            return make(InputShard(self.rank, self.world_size, self.num_replicas))
        return self.strategy.distribute_datasets_from_function(from_context, options=self._input_options())

    def _input_options(self) -> tf.distribute.InputOptions | None:
        """TensorFlow's default: one pipeline per worker, its batches split over the worker's
        devices by an iterator of TensorFlow's own. That iterator has tf.data's model autotuning
        on, and deleting it at each epoch's end stalls for up to seconds (see `data/pipeline.py`);
        MirroredStrategy can do without it, MultiWorker only with one device per worker."""
        return None

    def run(self, fn: Callable, args: tuple) -> Any:
        return self.strategy.run(fn, args=args)

    # -- collectives ------------------------------------------------------
    def all_reduce_sum(self, values: list[tf.Tensor]) -> list[tf.Tensor]:
        """Sum tensors over all replicas, called inside the replica function."""
        context = tf.distribute.get_replica_context()
        if self.num_replicas == 1:
            return values
        return context.all_reduce(tf.distribute.ReduceOp.SUM, values)

    def reduce_sum(self, per_replica: Any) -> Any:
        """Sum a replica function's outputs over all replicas (cross-replica)."""
        return tf.nest.map_structure(
            lambda v: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None), per_replica
        )

    def shared(self, compute: Callable[[], Any]) -> Any:
        """`compute()` as the chief computes it, on every process (it must be picklable). A
        `UserError` it raises is raised on every process (none is left waiting for the result).

        Elastic jobs compute it on every process instead: a worker that joins a running job
        has no one to receive it from, so `compute` must give the same everywhere."""
        outcome = None
        if self.is_chief:
            try:
                outcome = ("value", compute())
            except UserError as err:
                outcome = ("error", str(err))
        kind, value = self.broadcast_object(outcome)
        if kind == "error":
            raise UserError(value)
        return value

    def require_everywhere(self, problem: str | None, elsewhere: str) -> None:
        """Raise `problem` where it happened and, on the other processes, `elsewhere` naming the
        ranks it happened on: every process stops, none waits in a collective for the others."""
        failed = self._sum_over_processes(np.eye(self.world_size, dtype=np.int32)[self.rank] * (problem is not None))
        ranks = [rank for rank, count in enumerate(failed) if count]
        if problem is not None:
            raise UserError(problem)
        if ranks:
            raise UserError(f"{elsewhere} (rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} failed).")

    def gather(self, array: np.ndarray) -> np.ndarray:
        """Every process's `array` (one shape everywhere), stacked by rank: `[world_size, ...]`,
        on every process."""
        slots = np.zeros((self.world_size, *array.shape), array.dtype)
        slots[self.rank] = array
        return self._sum_over_processes(slots)

    def _sum_over_processes(self, array: np.ndarray) -> np.ndarray:
        """Sum of `array` over processes (each process's first replica contributes its own)."""
        if self.world_size == 1:
            return array
        per_process = self.num_replicas // self.world_size

        def contribute():
            context = tf.distribute.get_replica_context()
            first = tf.equal(context.replica_id_in_sync_group % per_process, 0)
            value = tf.constant(array)
            return context.all_reduce(tf.distribute.ReduceOp.SUM, tf.where(first, value, tf.zeros_like(value)))

        result = graph_function(lambda: self.strategy.run(contribute))()
        return self.strategy.experimental_local_results(result)[0].numpy()

    def wait_until(self, done: Callable[[], bool]) -> None:
        """Return on every process once the chief has made `done()` true (a barrier)."""
        self.broadcast_object(None)

    def on_reset(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever the set of workers changes (elastic jobs): ranks, the
        world size and who the chief is are then new."""
        self._reset_callbacks.append(callback)

    def notify_reset(self) -> None:
        for callback in self._reset_callbacks:
            callback()

    def broadcast_object(self, obj: Any) -> Any:
        """Give every process the chief's `obj` (picklable)."""
        if self.world_size == 1:
            return obj
        payload = np.frombuffer(pickle.dumps(obj), dtype=np.uint8) if self.is_chief else np.zeros(0, np.uint8)
        size = int(self._sum_from_chief(np.array([payload.size], np.int64))[0])
        buffer = np.zeros(size, np.int32)
        if self.is_chief:
            buffer[:] = payload
        return pickle.loads(self._sum_from_chief(buffer).astype(np.uint8).tobytes())

    def _sum_from_chief(self, array: np.ndarray) -> np.ndarray:
        """All-reduce in which only global replica 0 (on the chief) contributes."""

        def contribute():
            context = tf.distribute.get_replica_context()
            value = tf.constant(array)
            mine = tf.equal(context.replica_id_in_sync_group, 0)
            return context.all_reduce(tf.distribute.ReduceOp.SUM, tf.where(mine, value, tf.zeros_like(value)))

        result = graph_function(lambda: self.strategy.run(contribute))()  # eager collectives are slow
        return self.strategy.experimental_local_results(result)[0].numpy()

    def broadcast_variables(self, variables: list) -> None:
        """Make every process hold the chief's values.

        tf.distribute creates mirrored variables from the chief's initial
        values and keeps them in sync, so there is nothing to do.
        """

    def checkpoint_write_dir(self, directory: str) -> str | None:
        """Where this process saves checkpoints: the chief into `directory`, others nowhere."""
        return directory if self.is_chief else None


class MirroredDistribution(Distribution):
    name = "mirrored"

    def _input_options(self) -> tf.distribute.InputOptions:
        # One pipeline per replica, read on the host by a plain iterator (no stall at the epoch's
        # end): each gathers its slice of the global batch (`InputShard`), the rows the
        # per-worker split gave it. A batch of token ids is tens of kilobytes (64 x 200 int32:
        # 51 KB), microseconds to copy to the GPU inside the step.
        return tf.distribute.InputOptions(
            experimental_replication_mode=tf.distribute.InputReplicationMode.PER_REPLICA,
            experimental_fetch_to_device=False, experimental_place_dataset_on_device=False)

    def _make_strategy(self) -> tf.distribute.Strategy:
        cpu_devices = int(self.cfg.get("cpu_devices") or 0)
        if cpu_devices > 0:
            cpu = tf.config.list_physical_devices("CPU")[0]
            try:
                tf.config.set_logical_device_configuration(
                    cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_devices)]
                )
            except RuntimeError as err:  # TF already initialised its devices
                raise RuntimeError("strategy.cpu_devices must be set before TensorFlow starts") from err
            devices = [f"/cpu:{i}" for i in range(cpu_devices)]
            return tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
        gpus = tf.config.list_physical_devices("GPU")
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
        cross_device_ops = {
            "nccl": tf.distribute.NcclAllReduce,
            "hierarchical_copy": tf.distribute.HierarchicalCopyAllReduce,
            "reduction_to_one_device": tf.distribute.ReductionToOneDevice,
        }[self.cfg.get("cross_device_ops", "nccl") if gpus else "reduction_to_one_device"]()
        return tf.distribute.MirroredStrategy(cross_device_ops=cross_device_ops)


class MultiWorkerDistribution(Distribution):
    name = "multiworker"

    def _make_strategy(self) -> tf.distribute.Strategy:
        resolver_name = self.cfg.get("cluster_resolver", "tf_config")
        if resolver_name == "slurm":
            # Not TF's SlurmClusterResolver: it sorts the hosts by name, so node10 comes before
            # node9 while SLURM_PROCID follows Slurm's own order, and its fixed port collides
            # when two jobs share a node. Ours keeps Slurm's order and a port per job.
            tf_config = slurm_tf_config(int(self.cfg.get("slurm_port_base", 15000)))
            resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
                tf.train.ClusterSpec(tf_config["cluster"]), task_type="worker",
                task_id=tf_config["task"]["index"], rpc_layer="grpc",
            )
            log.info("Multi-worker cluster from SLURM: %s", tf_config)
        else:
            if not os.environ.get("TF_CONFIG"):
                raise UserError(
                    "strategy=multiworker needs TF_CONFIG (or strategy.cluster_resolver=slurm); "
                    "start workers with launch/multiworker.py."
                )
            resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        gpus = tf.config.list_physical_devices("GPU")
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
        implementation = {
            "auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
            "ring": tf.distribute.experimental.CommunicationImplementation.RING,
            "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
        }[self.cfg.get("communication", "auto")]
        handler = signal.getsignal(signal.SIGTERM)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=resolver,
            communication_options=tf.distribute.experimental.CommunicationOptions(implementation=implementation),
        )
        # The strategy's runtime installs a C++ SIGTERM handler that swallows the signal (a
        # preempted worker would train on until SIGKILL); put the process's own back. While
        # training, sentiment_dist.training.preemption turns SIGTERM into a checkpoint.
        if callable(handler):
            signal.signal(signal.SIGTERM, handler)
        return strategy

    @property
    def rank(self) -> int:
        resolver = self.strategy.cluster_resolver
        has_chief = "chief" in resolver.cluster_spec().as_dict()
        if resolver.task_type == "chief":
            return 0
        return int(resolver.task_id) + (1 if has_chief else 0)

    @property
    def world_size(self) -> int:
        spec = self.strategy.cluster_resolver.cluster_spec().as_dict()
        return sum(len(spec.get(kind, [])) for kind in ("chief", "worker"))

    def checkpoint_write_dir(self, directory: str) -> str | None:
        # Every worker must take part in saving (it may run collectives), but
        # only the chief's copy is kept; the others write to scratch dirs.
        if self.is_chief:
            return directory
        return os.path.join(tempfile.gettempdir(), f"sentiment-dist-worker{self.rank}-{os.getpid()}")


class HorovodDistribution(Distribution):
    name = "horovod"

    def _make_strategy(self) -> tf.distribute.Strategy:
        try:
            import horovod.tensorflow as hvd
        except ImportError as err:
            raise UserError(
                "strategy=horovod needs Horovod; build it with launch/build_horovod.sh "
                "(make setup does this)."
            ) from err
        self.hvd = hvd
        hvd.init()  # Horovod registers its own shutdown at exit
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            gpu = device_for_local_rank(hvd.local_rank(), gpus)
            tf.config.experimental.set_memory_growth(gpu, True)
            tf.config.set_visible_devices(gpu, "GPU")
        self._check_launch_rank()
        return tf.distribute.get_strategy()

    @property
    def rank(self) -> int:
        return self.hvd.rank()

    @property
    def world_size(self) -> int:
        return self.hvd.size()

    @property
    def num_replicas(self) -> int:
        return self.hvd.size()

    def describe(self) -> dict[str, Any]:
        import horovod

        return {**super().describe(), "horovod": horovod.__version__, "local_rank": self.hvd.local_rank()}

    def run(self, fn: Callable, args: tuple) -> Any:
        return fn(*args)

    def all_reduce_sum(self, values: list[tf.Tensor]) -> list[tf.Tensor]:
        if self.world_size == 1:
            return values
        # Dense gradients: an embedding's IndexedSlices would be allgathered,
        # which costs more than reducing the dense table for our vocab sizes.
        return [self.hvd.allreduce(tf.convert_to_tensor(v), op=self.hvd.Sum) for v in values]

    def reduce_sum(self, per_replica: Any) -> Any:
        if self.world_size == 1:
            return per_replica
        return tf.nest.map_structure(lambda v: self.hvd.allreduce(v, op=self.hvd.Sum), per_replica)

    def broadcast_object(self, obj: Any) -> Any:
        return self.hvd.broadcast_object(obj, root_rank=0) if self.world_size > 1 else obj

    def _sum_over_processes(self, array: np.ndarray) -> np.ndarray:
        if self.world_size == 1:
            return array
        return self.hvd.allreduce(tf.constant(array), op=self.hvd.Sum, name="sum_over_processes").numpy()

    def broadcast_variables(self, variables: list) -> None:
        # hvd.broadcast_variables assigns through tf.Variable internals that
        # Keras 3 variables lack; broadcasting values and assigning works for both.
        if self.world_size > 1:
            for index, variable in enumerate(variables):
                value = self.hvd.broadcast(tf.convert_to_tensor(variable), root_rank=0, name=f"broadcast_{index}")
                variable.assign(value)


class ElasticHorovodDistribution(HorovodDistribution):
    """Horovod whose workers may leave (a lost machine) and join while the job runs.

    Training runs under `hvd.elastic.run` (`sentiment_dist.training.elastic`), whose state
    sync gives every worker the chief's variables at each (re)start, so nothing is broadcast
    before it: a worker that joins mid-job runs the command from the top alone, and must get
    through everything before training without waiting for the others. Ranks, the world size
    and the chief are read live (`hvd.rank()`), since they change at a reset."""

    elastic = True

    def shared(self, compute: Callable[[], Any]) -> Any:
        return compute()

    def require_everywhere(self, problem: str | None, elsewhere: str) -> None:
        # No collective before the elastic section (a worker may join alone): each checks for itself.
        if problem is not None:
            raise UserError(problem)

    def wait_until(self, done: Callable[[], bool]) -> None:
        started = time.monotonic()
        while not done():  # the chief writes it to the shared run dir
            if started is not None and time.monotonic() - started > 60:
                log.warning("Still waiting, after a minute, for the chief to finish writing the run dir "
                            "(if it died there, rerun the job on the same hydra.run.dir).")
                started = None
            time.sleep(1.0)

    def broadcast_variables(self, variables: list) -> None:
        """Nothing: the elastic state's sync broadcasts every variable when training (re)starts."""


def device_for_local_rank(local_rank: int, devices: list) -> Any:
    """The device a process with `local_rank` uses: one per process, by local rank when the
    process sees every device of its node (horovodrun, mpirun), the only one when the launcher
    gave each process its own (`srun --gpus-per-task=1`, a Kubernetes pod per GPU)."""
    if len(devices) > 1 and local_rank >= len(devices):
        log.warning("Local rank %d shares a device with rank %d: %d processes on %d devices.",
                    local_rank, local_rank % len(devices), local_rank + 1, len(devices))
    return devices[local_rank % len(devices)]


STRATEGIES: dict[str, type[Distribution]] = {
    "single": Distribution,
    "mirrored": MirroredDistribution,
    "multiworker": MultiWorkerDistribution,
    "horovod": HorovodDistribution,
}


def make_distribution(cfg: DictConfig) -> Distribution:
    """Create the strategy named by `cfg.name`; call before any other TF work."""
    kind = ElasticHorovodDistribution if cfg.name == "horovod" and cfg.get("elastic") else STRATEGIES[cfg.name]
    distribution = kind(cfg)
    if distribution.rank != launch_rank():
        distribution._check_launch_rank()
    log.debug("distribution %s", distribution.describe())
    return distribution

