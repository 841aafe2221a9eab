"""Hydra entry points, config resolvers, and the run directory's lifecycle.

Every CLI is a `hydra_task`: Hydra composes the config from `conf/`, the task
runs, and a `UserError` becomes one line on stderr and exit code 2 (Hydra
itself would print a traceback). A run directory that a failed task leaves
with nothing worth keeping (no checkpoint to resume from) is removed, so a
bad input never leaves a half-written run behind.
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
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from sentiment_dist.distribute import is_launch_chief, launch_rank
from sentiment_dist.errors import EXIT_USER_ERROR, UserError

log = logging.getLogger(__name__)

# conf/ sits beside the package in a checkout; an installed copy (Docker)
# points at it with SENTIMENT_DIST_CONF.
CONFIG_DIR = os.environ.get("SENTIMENT_DIST_CONF", str(Path(__file__).resolve().parent.parent / "conf"))
# What a run dir holds before training writes anything: Hydra's config and
# log, W&B's run. A failed run with only these is removed.
_SCAFFOLDING = {".hydra", "wandb"}


def _scratch_dir() -> str:
    return os.path.join(tempfile.gettempdir(), f"sentiment-dist-rank{launch_rank()}-{os.getpid()}")


def register_resolvers() -> None:
    """`sd_run_dir`: the given dir on the chief, a scratch dir on other ranks;
    `sd_chief_only`: the value on the chief, null elsewhere; `sd_chief_file`:
    the path on the chief, the null device elsewhere (the log file)."""
    if not OmegaConf.has_resolver("sd_run_dir"):
        OmegaConf.register_new_resolver("sd_run_dir", lambda path: path if is_launch_chief() else _scratch_dir())
        OmegaConf.register_new_resolver("sd_chief_only", lambda value: value if is_launch_chief() else None)
        OmegaConf.register_new_resolver("sd_chief_file", lambda path: path if is_launch_chief() else os.devnull)


def run_dir() -> str:
    """This job's run directory (Hydra's output dir) on the chief."""
    return HydraConfig.get().runtime.output_dir


def _is_disposable(directory: str) -> bool:
    """True when `directory` holds only scaffolding: nothing to resume or read."""
    if not os.path.isdir(directory):
        return False
    return all(name in _SCAFFOLDING or name.endswith(".log") for name in os.listdir(directory))


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
            finished = False
            try:
                result = task(cfg)
                finished = True
                return result
            except UserError as err:
                print(f"error: {err}", file=sys.stderr, flush=True)
                sys.exit(EXIT_USER_ERROR)  # SystemExit passes through Hydra's handler
            finally:
                if not is_launch_chief():
                    # Only ever the scratch dir: with hydra.run.dir=... set by
                    # hand, a worker's output dir is the chief's run dir.
                    if directory == _scratch_dir():
                        shutil.rmtree(directory, ignore_errors=True)
                elif not finished and _is_disposable(directory):
                    _remove_run_dir(directory)

        @functools.wraps(task)
        def main() -> None:
            register_resolvers()
            hydra_main()

        return main

    return decorate


def resolved(cfg: DictConfig) -> dict:
    """The config as plain nested data, every interpolation resolved."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
