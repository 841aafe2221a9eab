"""`hydra_task`: what makes a task function a command, and the run directory's lifecycle.

Hydra composes the config from `conf/` against the schema
(`sentiment_dist.config.schema`), which refuses unknown keys, wrong types and
unknown choices in Hydra's own words; `check_ranges` then refuses values out
of range. Only then does the task run. A `UserError` (the config, the
environment or the data is wrong) becomes one line on stderr and exit code 2,
never a traceback, and a run directory that a failed task leaves with nothing
worth keeping (no checkpoint to resume from) is removed.

Commands import the library inside their task function: TensorFlow takes
seconds to import, and a config mistake is reported before that, in well
under a second.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from sentiment_dist.config import schema, search
from sentiment_dist.jobs.rundir import RunDir
from sentiment_dist.runtime.errors import EXIT_PREEMPTED, Preempted, UserError, fail, record_exit_code
from sentiment_dist.runtime.io import first_missing
from sentiment_dist.runtime.launch import is_launch_chief, launch_rank

log = logging.getLogger(__name__)

# conf/ sits beside the package in a checkout; an installed copy (Docker)
# points at it with SENTIMENT_DIST_CONF.
CONFIG_DIR = os.environ.get("SENTIMENT_DIST_CONF", str(Path(__file__).resolve().parent.parent.parent / "conf"))


def exit_preempted(stop: Preempted, directory: str) -> NoReturn:
    """The log line saying where the run resumes from, then exit code 138 at once.

    os._exit: the state is saved and W&B finished; TensorFlow's multi-worker runtime can
    hang in its teardown after a preemption notice, past the grace period."""
    if stop.announce:
        log.warning("Preempted: %s; rerun the same command with hydra.run.dir=%s to continue from there "
                    "(exit code %d).", stop, os.path.abspath(directory), EXIT_PREEMPTED)
        record_exit_code(EXIT_PREEMPTED)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_PREEMPTED)


def _scratch_dir() -> str:
    return os.path.join(tempfile.gettempdir(), f"sentiment-dist-rank{launch_rank()}-{os.getpid()}")


def _writable_run_dir(path: str, kind: str = "run", setting: str = "paths.log_dir (or hydra.run.dir)") -> str:
    """`path`, created and written to; or one sentence when it cannot be (nowhere to create it, a
    file in the way, a read-only or full disk), and nothing left of what was created."""
    missing = first_missing(path)
    try:
        os.makedirs(path, exist_ok=True)
        descriptor, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
        try:
            os.write(descriptor, b"x")  # a full disk fails on writing, not on creating
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
            os.remove(probe)
    except OSError as err:
        if missing:
            shutil.rmtree(missing, ignore_errors=True)
        verb = "create" if missing else "write to"
        fail(f"cannot {verb} the {kind} directory {path} ({err.strerror or err}); set {setting} to a writable directory.")
    return path


class OutputDirs(Callback):
    """Hydra creates the run dir (a sweep's dir) itself, and a path it cannot create ends in its
    traceback: a dir named on the command line (`hydra.run.dir=`, `hydra.sweep.dir=`) is checked
    first here, as `sd_run_dir` checks the default one (conf/hydra/default.yaml)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if is_launch_chief() or run_dir_named(config):
            _writable_run_dir(str(config.hydra.run.dir), "run", "hydra.run.dir (or paths.log_dir)")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if is_launch_chief():
            _writable_run_dir(str(config.hydra.sweep.dir), "sweep", "hydra.sweep.dir (or paths.log_dir)")


def register_resolvers() -> None:
    """`sd_run_dir`: the given dir on the chief (created and checked), a scratch dir on other ranks;
    `sd_chief_only`: the value on the chief, null elsewhere; `sd_chief_file`: the path on the chief,
    the null device elsewhere (the log file); `sd_mkdir`: the directory, created."""
    if not OmegaConf.has_resolver("sd_run_dir"):
        OmegaConf.register_new_resolver(
            "sd_run_dir", lambda path: _writable_run_dir(path) if is_launch_chief() else _scratch_dir()
        )
        OmegaConf.register_new_resolver("sd_chief_only", lambda value: value if is_launch_chief() else None)
        OmegaConf.register_new_resolver("sd_chief_file", lambda path: path if is_launch_chief() else os.devnull)
    if not OmegaConf.has_resolver("sd_mkdir"):
        # Optuna opens its SQLite storage before any trial has created a directory.
        OmegaConf.register_new_resolver("sd_mkdir", lambda path: os.makedirs(path, exist_ok=True) or path)


def run_dir() -> str:
    """This job's run directory (Hydra's output dir) on the chief."""
    return HydraConfig.get().runtime.output_dir


def run_dir_given() -> bool:
    """Whether the command line names the run dir (`hydra.run.dir=...`): then every process,
    chief or not, knows it from the start."""
    return run_dir_named(HydraConfig.get())


def run_dir_named(config: DictConfig) -> bool:
    hydra = config.hydra if "hydra" in config else config
    return any(override.split("=", 1)[0].lstrip("+") == "hydra.run.dir" for override in hydra.overrides.hydra)


def _is_disposable(directory: str) -> bool:
    """True when `directory` holds nothing to resume or read (RunDir.RESUMABLE). Anything else
    (Hydra's config and log, W&B's run, a history with no checkpoint beside it) goes with it."""
    return os.path.isdir(directory) and not RunDir(directory).resumable


def _remove_run_dir(directory: str) -> None:
    """Remove `directory` and the parents it leaves empty (outputs/train/), up to the working directory."""
    shutil.rmtree(directory, ignore_errors=True)
    stop = Path.cwd().resolve()
    parent = Path(directory).resolve().parent
    while parent != stop and stop in parent.parents:
        try:
            parent.rmdir()  # only succeeds when empty
        except OSError:
            break
        parent = parent.parent


def hydra_task(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], None]]:
    """Turn `task(cfg)` into a console-script `main()` driven by Hydra."""

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[[], None]:
        @hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=config_name)
        def hydra_main(cfg: DictConfig) -> Any:
            directory = run_dir()
            # A launcher stopping this rank (a peer failed) sends SIGTERM:
            # exit through the cleanup below instead of dying mid-way.
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
            finished, preempted = False, None
            # A trial of an Optuna sweep returns its objective, and bad input fails that trial only.
            trial = search.optuna_trial()
            try:
                schema.check_ranges(cfg)
                if trial and OmegaConf.select(cfg, "search.trial_launcher"):
                    result = search.run_trial_job(cfg, directory)
                else:
                    result = task(cfg)
                finished = result is not None  # None: a trial's own job refused its input
                return search.objective(cfg, result) if trial else result
            except Preempted as stop:  # saved where it stopped: the run dir is kept (it has a checkpoint)
                preempted = stop
            except UserError as err:
                if not trial:
                    fail(str(err))
                search.trial_failed(str(err))
                return None
            except Exception:
                if trial:  # the sweeper keeps only the message; the traceback is what finds the bug
                    log.exception("Trial failed:")
                raise
            finally:
                if not is_launch_chief():
                    # Only ever the scratch dir: with hydra.run.dir=... set by
                    # hand, a worker's output dir is the chief's run dir.
                    if directory == _scratch_dir():
                        shutil.rmtree(directory, ignore_errors=True)
                elif not finished and _is_disposable(directory):
                    # A trial goes alone: its sweep dir holds the others and the sweep's results.
                    shutil.rmtree(directory, ignore_errors=True) if trial else _remove_run_dir(directory)
            if preempted is not None:
                exit_preempted(preempted, directory)

        @functools.wraps(task)
        def main() -> None:
            try:
                launch_rank()  # a malformed launcher environment (TF_CONFIG) is refused before Hydra starts
            except UserError as err:
                fail(str(err))
            schema.register()
            register_resolvers()
            hydra_main()

        return main

    return decorate


def resolved(cfg: DictConfig) -> dict:
    """The config as plain nested data, every interpolation resolved, choices as strings."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[return-value]
