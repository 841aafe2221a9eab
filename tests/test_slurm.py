"""Where SLURM and the GPU layout meet the trainer: the multi-worker cluster built from SLURM's
variables (Slurm's node order, a port per job), a real two-worker run started the way srun
would start it, and one device per Horovod process whether it sees one device or all of them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from conftest import TINY, cli_env, module, quiet, read_json, warm_ranks

from sentiment_dist.runtime.errors import UserError
from sentiment_dist.runtime.launch import expand_hostlist, expand_tasks_per_node, slurm_tf_config


def test_hostlists_expand_in_slurms_order():
    assert expand_hostlist("node9,node10") == ["node9", "node10"]  # not sorted by name: node10 < node9
    assert expand_hostlist("node[9-10]") == ["node9", "node10"]
    assert expand_hostlist("gpu[08-10,12]-ib,login1") == ["gpu08-ib", "gpu09-ib", "gpu10-ib", "gpu12-ib", "login1"]
    assert expand_hostlist("rack[1-2]n[1-2]") == ["rack1n1", "rack1n2", "rack2n1", "rack2n2"]
    assert expand_tasks_per_node("2(x3),1", 4) == [2, 2, 2, 1]
    assert expand_tasks_per_node("4", 3) == [4, 4, 4]


def test_tf_config_follows_slurm_procid_with_a_port_per_job():
    env = {"SLURM_JOB_NODELIST": "node9,node10", "SLURM_PROCID": "1", "SLURM_JOB_ID": "123456",
           "SLURM_TASKS_PER_NODE": "1(x2)"}
    config = slurm_tf_config(15000, env)
    # SLURM_PROCID 0 runs on node9 (Slurm's first node), so node9 must be worker 0.
    assert config == {"cluster": {"worker": ["node9:18456", "node10:18456"]}, "task": {"type": "worker", "index": 1}}
    other_job = slurm_tf_config(15000, {**env, "SLURM_JOB_ID": "123457"})
    assert other_job["cluster"]["worker"] == ["node9:18457", "node10:18457"]  # two jobs on one node: two ports
    # Several tasks per node (block distribution), and the step's own node list first.
    step = {**env, "SLURM_STEP_NODELIST": "gpu[1-2]", "SLURM_STEP_TASKS_PER_NODE": "2(x2)", "SLURM_PROCID": "3"}
    assert slurm_tf_config(15000, step)["cluster"]["worker"] == ["gpu1:18456", "gpu1:18457", "gpu2:18456", "gpu2:18457"]
    with pytest.raises(UserError, match="start the workers with srun"):
        slurm_tf_config(15000, {"SLURM_PROCID": "0"})


def two_free_ports() -> int:
    """A port p with p + 1 free too (the two workers' ports)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise AssertionError("no two consecutive free ports")


def test_two_workers_start_from_slurm_variables_alone(tmp_path):
    """What `srun --ntasks=2` on one node gives each task, and nothing else (no TF_CONFIG)."""
    port = two_free_ports()
    # The job's port is slurm_port_base + job_id % 10000, and the base must stay <= 55535: pick the
    # base below the free port and the job id that lands on it (a fixed job id failed for high ports).
    port_base = min(port - 5000, 55535)
    job_id = 40000 + port - port_base
    run_dir = tmp_path / "run"
    command = module("train", *TINY, "trainer.epochs=1", "dataset.max_rows=256", "trainer.batch_size=16",
                     "strategy=multiworker", "strategy.cluster_resolver=slurm",
                     f"strategy.slurm_port_base={port_base}", f"hydra.run.dir={run_dir}")
    slurm = {"SLURM_JOB_ID": str(job_id), "SLURM_JOB_NODELIST": "localhost", "SLURM_TASKS_PER_NODE": "2",
             "SLURM_NTASKS": "2", "SLURM_NNODES": "1"}
    launches = [warm_ranks(command, cli_env(**slurm, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank))) for rank in range(2)]
    workers = [subprocess.Popen(launch, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for launch, env in launches]
    outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], quiet(outputs[0])[-3000:] + quiet(outputs[1])[-3000:]
    assert f"'worker': ['localhost:{port}', 'localhost:{port + 1}']" in outputs[0]  # the chief logs its cluster
    environment = read_json(run_dir / "metrics.json")["environment"]
    assert environment["strategy"] == "multiworker" and environment["world_size"] == 2
    assert "Run directory" not in outputs[1]  # worker 1 is not the chief


PINNING = """
import sys
import tensorflow as tf
from sentiment_dist.runtime.distribute import device_for_local_rank
devices = int(sys.argv[1])
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
logical = tf.config.list_logical_devices("CPU")
print(" ".join(device_for_local_rank(rank, logical).name for rank in range(4)))
"""


@pytest.mark.parametrize("visible", [4, 1])
def test_one_device_per_process_whether_it_sees_one_or_all(visible):
    """Logical CPUs stand in for GPUs: horovodrun/mpirun show every process all of a node's four
    devices (local rank r takes device r); srun --gpus-per-task=1 shows each its own (device 0)."""
    result = subprocess.run([sys.executable, "-c", PINNING, str(visible)], capture_output=True, text=True,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    names = result.stdout.split()
    expected = [f"/device:CPU:{rank if visible == 4 else 0}" for rank in range(4)]
    assert names == expected
