"""Helpers for tests that run the real CLIs in subprocesses."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from warm_python import WarmPython

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BIN = Path(PYTHON).parent

# Small, fast, deterministic runs; W&B off unless a test turns it on.
TINY = ["debug=tiny", "trainer.verbose=false"]


def cli_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def offline_wandb_env(home: Path, **extra: str) -> dict[str, str]:
    """cli_env() with no W&B API key and no netrc (HOME is `home`): W&B's own rule makes a run offline."""
    env = cli_env(HOME=str(home))
    for key in ("WANDB_MODE", "WANDB_API_KEY"):
        env.pop(key, None)
    return {**env, **extra}


# `python -m sentiment_dist.<task>` run by `run`, and the ranks of the horovodrun and multi-worker
# launches it runs, fork from a Python that has imported TensorFlow (tests/warm_python.py);
# SENTIMENT_DIST_TEST_FRESH=1 starts a new interpreter for each instead.
WARM = None if os.environ.get("SENTIMENT_DIST_TEST_FRESH") == "1" else WarmPython()


def warm_ranks(command: list[str], env: dict) -> tuple[list[str], dict]:
    """`command` and `env` for a launch (horovodrun, launch/multiworker.py) whose ranks fork from
    the warm Python, or a job the test signals; for tests that start it themselves."""
    return (command, env) if WARM is None else WARM.warm_ranks(command, env)


def pytest_sessionfinish(session) -> None:
    if WARM is not None:
        WARM.close()


def run(args: list[str], cwd: Path, timeout: int = 300, env: dict | None = None, check: bool = True):
    """Run a command; on unexpected failure show its output in the assertion."""
    env = env or cli_env()
    if WARM is not None and args[:2] == [PYTHON, "-m"] and args[2].startswith("sentiment_dist.") and WARM.serves(env):
        result = WARM.run(args[2], args[3:], cwd, env, timeout)
    else:
        launched, env = warm_ranks(args, env)
        result = subprocess.run(launched, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{args} exited {result.returncode}\n--- stdout\n{quiet(result.stdout)[-4000:]}\n--- stderr\n{quiet(result.stderr)[-6000:]}"
        )
    return result


def quiet(text: str) -> str:
    """Output without TensorFlow's C++ start-up lines."""
    return "\n".join(line for line in text.splitlines() if line[:5] not in ("E0000", "W0000", "I0000", "WARNI"))


def module(name: str, *overrides: str) -> list[str]:
    return [PYTHON, "-m", f"sentiment_dist.{name}", *overrides]


def horovodrun() -> list[str]:
    return [str(BIN / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo"]


def multiworker(n: int = 2) -> list[str]:
    return [PYTHON, str(REPO / "launch" / "multiworker.py"), "-n", str(n), "--"]


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def only_run_dir(root: Path) -> Path:
    """The one run dir under `root` (outputs/<task>/<time>); fails if there are more."""
    runs = [p.parent for p in root.rglob("metrics.json")]
    assert len(runs) == 1, f"expected one run dir under {root}, found {runs}"
    return runs[0]


@pytest.fixture(scope="session")
def horovod_available() -> bool:
    """Horovod is part of set-up (make test builds it); its absence is a failure, not a skip."""
    assert shutil.which("horovodrun", path=str(BIN)), "horovodrun missing: run `make setup` (launch/build_horovod.sh)"
    return True


def composed(task: str = "train", *overrides: str):
    """The config `python -m sentiment_dist.<task> <overrides>` would run with (schema-checked)."""
    from hydra import compose, initialize_config_dir

    from sentiment_dist.config import schema
    from sentiment_dist.config.hydra_task import CONFIG_DIR, register_resolvers

    schema.register()
    register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=task, overrides=list(overrides))


def tiny_model(**overrides):
    """A small BiLSTM config (or `name=...` another family) for unit tests."""
    values = {"sequence_length": 10, "embedding_dim": 6, "units": 4, "dropout": 0.0, **overrides}
    name = values.pop("name", "bilstm")
    return composed("train", f"model={name}", *(f"model.{k}={v}" for k, v in values.items())).model


def tiny_trainer(**overrides):
    return composed("train", *(f"trainer.{k}={'null' if v is None else v}" for k, v in overrides.items())).trainer


def trained_classifier(tmp_path_factory) -> Path:
    """A small classifier trained once in the session (about 0.9 test accuracy on the synthetic
    movies, well above chance): the run test_cli evaluates, predicts with and exports, and the
    strong source test_finetune's guard fine-tunes. The run's output is in `<run dir>/../output.txt`."""
    return session_run(tmp_path_factory, "trained_classifier", module("train", *TINY, "model=bilstm", "dataset.max_rows=2048"))


def bilstm_language_model(tmp_path_factory) -> Path:
    """A bidirectional language model on the source domain (sampled softmax), logged to W&B offline,
    trained once in the session: test_pretrain reads and continues it, test_transfer adapts it."""
    env = offline_wandb_env(tmp_path_factory.mktemp("bilstm_home"))
    return session_run(tmp_path_factory, "bilstm_lm", module("pretrain", *TINY, "model=bilstm", "trainer.epochs=3",
                                                               "logger=wandb"), env=env)


def classifier_from_language_model(tmp_path_factory) -> Path:
    """A classifier whose embedding and encoder start from `bilstm_language_model`, trained once in
    the session. The run's output is in `<run dir>/../output.txt`."""
    lm = bilstm_language_model(tmp_path_factory)
    return session_run(tmp_path_factory, "classifier_from_lm", module("train", *TINY, "model=bilstm", f"init.from={lm}"))


def finetune_main_job(tmp_path_factory) -> Path:
    """`python -m sentiment_dist.finetune debug=tiny logger=wandb`, W&B offline, run once in the
    session: the main job (the source trained, then fine-tuned, in one command), which test_finetune
    checks as a run dir and test_tracking as two W&B runs. Its output is in `<run dir>/../output.txt`."""
    env = offline_wandb_env(tmp_path_factory.mktemp("finetune_home"))
    return session_run(tmp_path_factory, "finetune_main_job", module("finetune", *TINY, "logger=wandb"), env=env)


def session_run(tmp_path_factory, name: str, command: list[str], env: dict | None = None) -> Path:
    """The run dir of `command` (given `hydra.run.dir`; in `env`, cli_env() by default), run once
    per test session: the first xdist worker to ask runs it, the others wait for it and share the
    result. Tests only read it."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "run" / "metrics.json").exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            result = run([*command, f"hydra.run.dir={out / 'run'}"], cwd=out, env=env)
            (out / "output.txt").write_text(result.stdout + result.stderr)
    return out / "run"



# Tests that start several TensorFlow processes (a launcher and its ranks) or a chain of jobs, the
# longest kinds first: in a --durations run the 40 slowest tests all matched one of these. Collected
# first, they are the first that xdist hands out, so the long ones run side by side from the start
# and the short ones fill in around them, instead of a long job starting late and ending the suite
# alone. Modules that train nothing are left where they are.
LONG_RUNNING = ("elastic", "worker_lost", "transfer_report", "report", "sigterm", "sigkill", "horovod", "multiworker",
                "mirrored", "preempt", "resume", "chain", "submitit", "sweep", "trial", "export", "wandb", "recorded",
                "mixture", "store", "main_job", "predict", "finetune", "guard")
TRAINS_NOTHING = {"test_configs.py", "test_launchers.py", "test_models.py", "test_pipeline.py", "test_synthetic.py",
                  "test_data_text.py", "test_data_files.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        module, _, name = item.nodeid.partition("::")
        if module.rsplit("/", 1)[-1] in TRAINS_NOTHING:
            return len(LONG_RUNNING)
        return next((n for n, word in enumerate(LONG_RUNNING) if word in name.lower()), len(LONG_RUNNING))

    items.sort(key=rank)  # stable: in each rank, as collected
