"""Hyper-parameter sweeps: `python -m sentiment_dist.train -m hparams_search=imdb_optuna`.

Hydra's Optuna sweeper proposes values for config keys (`conf/hparams_search/`) and runs each
trial as an ordinary run in `<sweep dir>/<n>`; the task returns the run's validation metric
(`search.objective`). What the sweeper (hydra-optuna-sweeper 1.3) does not do, this module does:

- Before the first trial, every value the sweep can propose is composed (each choice, both ends of
  each interval, every combination of config-group choices). The sweeper composes a trial only when
  it samples it, and a value Hydra refuses there (an unknown key, a wrong type, an option that does
  not exist) aborts the whole sweep, hours in. Here it fails in one sentence, before any trial.
- A trial whose input is bad (a `UserError`: a value out of range, a loss that went NaN) returns
  no value, which the sweeper records as a FAIL trial, and the sweep goes on. Raising would end
  the sweep unless `max_failure_rate` allowed it, and a NaN return leaves the trial RUNNING and
  ends the sweep with a traceback.
- A trial whose strategy needs one process per rank (`horovod`, `multiworker`) runs as its own
  job: `search.trial_launcher` (`horovodrun -np 2 ...`, `launch/multiworker.py -n 2 --`) starts it
  in the trial's run dir, and the trial reads the job's metrics back.
- Every trial's W&B run joins the sweep's group, with its trial number and parameters in the
  config; the sweep ends by naming the best trial's run dir and the command that re-runs it.

Nothing here imports TensorFlow: a search-space mistake is reported in a second or two.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from sentiment_dist.config import schema
from sentiment_dist.runtime.errors import EXIT_USER_ERROR, UserError, fail
from sentiment_dist.runtime.launch import RANK_VARIABLES

log = logging.getLogger(__name__)

# How a trial launched as its own job (search.trial_launcher) learns its place in the sweep.
MEMBER_ENV = "SENTIMENT_DIST_SWEEP_MEMBER"
MULTI_PROCESS = {"horovod", "multiworker"}
# Lower is better for these objectives; higher for the others.
MINIMIZED = {"val_loss", "val_perplexity"}
RESULTS = "optimization_results.yaml"  # written by the Optuna sweeper into the sweep dir
COMBINATIONS = 64  # at most this many config-group combinations composed up front


def _hydra() -> DictConfig | None:
    return HydraConfig.get() if HydraConfig.initialized() else None


def _is_optuna(hydra: DictConfig) -> bool:
    return "optuna" in str(hydra.sweeper.get("_target_", ""))


def optuna_trial() -> bool:
    """True in a job an Optuna sweeper launched: it must return a number and survive bad input."""
    hydra = _hydra()
    return hydra is not None and hydra.mode == RunMode.MULTIRUN and _is_optuna(hydra)


def sweep_member() -> dict | None:
    """This job's place in a sweep (W&B group, trial number, parameters), or None outside one.

    The group is the study's name when the study is kept in storage (a resumed sweep joins it),
    else the sweep dir's name, which every trial of one `-m` run shares."""
    if os.environ.get(MEMBER_ENV):
        return json.loads(os.environ[MEMBER_ENV])
    hydra = _hydra()
    if hydra is None or hydra.mode != RunMode.MULTIRUN:
        return None
    optuna = _is_optuna(hydra)
    study = hydra.sweeper.get("study_name") if optuna and hydra.sweeper.get("storage") else None
    searched = set((hydra.sweeper.get("params") or {}).keys()) if optuna else set()
    overrides = list(hydra.overrides.task)
    sweep_dir = str(hydra.sweep.dir)
    return {
        "group": study or os.path.basename(os.path.normpath(sweep_dir)),
        "trial": int(hydra.job.num),
        "study": study,
        "sweep_dir": os.path.abspath(sweep_dir),
        "params": {key: value for key, _, value in (o.partition("=") for o in overrides) if key in searched},
        "overrides": overrides,
    }


def objective(cfg: DictConfig, result: dict | None) -> float | None:
    """The number the sweeper optimises: `search.objective` of the run's validation split.
    None (a FAIL trial) when the run produced none or it is not finite."""
    if result is None:
        return None
    name = str(cfg.search.objective)
    validation = result.get("validation") or {}
    key = name.removeprefix("val_")
    if key not in validation:
        scalars = sorted(f"val_{k}" for k, v in validation.items() if isinstance(v, int | float))
        raise UserError(f"search.objective={name} is not a validation metric of this command; use one of {scalars}.")
    value = float(validation[key])
    if not math.isfinite(value):
        print(f"error: {name} is {value}; the trial counts as failed.", file=sys.stderr, flush=True)
        return None
    return value


def trial_failed(message: str) -> None:
    """A trial's bad input: its sentence, and what becomes of the sweep."""
    number = sweep_member()["trial"]  # type: ignore[index]
    print(f"error: {message}", file=sys.stderr, flush=True)
    log.warning("Trial %d failed: Optuna records it as failed and the sweep goes on.", number)


def run_trial_job(cfg: DictConfig, directory: str) -> dict | None:
    """Run this trial as its own job under `search.trial_launcher`, in `directory`; its metrics,
    or None when the job refused its input (exit code 2: it has printed why)."""
    hydra = HydraConfig.get()
    member = sweep_member()
    overrides = [o for o in hydra.overrides.task if not o.startswith("search.trial_launcher=")]
    command = [
        *cfg.search.trial_launcher, sys.executable, "-m", f"sentiment_dist.{hydra.job.config_name}",
        *overrides, "search.trial_launcher=null", f"hydra.run.dir={os.path.abspath(directory)}",
    ]
    number = member["trial"]  # type: ignore[index]
    log.info("Trial %d runs as its own job: %s", number, shlex.join(command))
    # horovodrun exits 1 whatever its ranks' codes; the chief also writes its code to this file
    # (outside the run dir, which a job that refused its input removes).
    handle, exit_file = tempfile.mkstemp(prefix=f"sentiment-dist-trial-{number}-", suffix=".exit-code")
    os.close(handle)
    env = {**os.environ, MEMBER_ENV: json.dumps(member), "SENTIMENT_DIST_EXIT_FILE": exit_file}
    process = subprocess.Popen(command, env=env)
    try:
        code = process.wait()
        with open(exit_file, encoding="utf-8") as recorded:
            code = int(recorded.read().strip() or code) if code != 0 else code
    except BaseException:  # the sweep is stopped: stop the job too
        process.terminate()
        process.wait()
        raise
    finally:
        os.remove(exit_file)
    if code == EXIT_USER_ERROR:
        log.warning("Trial %d failed (its job's error is above): Optuna records it as failed and the sweep goes on.", number)
        return None
    if code != 0:
        raise RuntimeError(f"trial {number}'s job exited with code {code}: {shlex.join(command)}")
    from sentiment_dist.jobs.rundir import RunDir  # TensorFlow: only once a job has finished

    return RunDir(directory).read_metrics()


# -- before the first trial ------------------------------------------------------------------


def _first_line(err: BaseException) -> str:
    """The part of Hydra's or OmegaConf's message that says what is wrong."""
    cause = err.__cause__ or err
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("full_key", "reference_type", "object_type"))]
    return lines[0].rstrip(".") if lines else type(err).__name__


def _candidates(distribution: Any) -> list[Any]:
    """The values to try: every choice, or both ends of a range (Optuna includes `high`)."""
    choices = getattr(distribution, "choices", None)
    return list(choices) if choices is not None else [distribution.low, distribution.high]


def search_space(config: DictConfig) -> tuple[dict[str, list[Any]], list[str]]:
    """What the Optuna sweeper will sample: {key: values to try}, and the fixed overrides every
    trial gets; read with the sweeper's own parser from hydra.sweeper.params and the command line."""
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    try:
        distributions, fixed = create_params_from_overrides(params + list(config.hydra.overrides.task))
    except Exception as err:  # a malformed sweep: interval(0.1), tag(log, interval(0, 1)), ...
        raise UserError(f"the search space cannot be read ({_first_line(err)}); fix hydra.sweeper.params "
                        "or the sweep on the command line.") from None
    space = {key: _candidates(d) for key, d in distributions.items() if key not in fixed}
    return space, [f"{key}={value}" for key, value in fixed.items()]


def check_search_space(config: DictConfig, config_name: str) -> None:
    """Compose every value the sweep can propose; refuse the sweep, in one sentence, if Hydra
    would refuse one of them. Values out of a range rule only warn: their trials will fail
    (the sweeper records them as failed) while the others run."""
    launcher_env = [v for v in (*RANK_VARIABLES, "TF_CONFIG") if os.environ.get(v)]
    if launcher_env:
        raise UserError(f"a sweep runs in one process, not under a launcher ({launcher_env[0]} is set); start it "
                        "plainly and give multi-process trials search.trial_launcher=[horovodrun,-np,2,...].")
    space, fixed = search_space(config)
    choices = config.hydra.runtime.choices
    groups = {key: values for key, values in space.items() if key in choices}  # change which keys exist
    problems: list[str] = []
    out_of_range: list[str] = []

    def composed(overrides: list[str], label: str) -> DictConfig | None:
        try:
            return compose(config_name=config_name, overrides=fixed + overrides)
        except Exception as err:  # Hydra's composition errors: what would abort the sweep
            problems.append(f"{label} ({_first_line(err)})")
            return None

    base = composed([f"{k}={vs[0]}" for k, vs in groups.items()], "the config without the searched values")
    if base is not None:
        _check_objective(base, config)
        try:
            schema.check_ranges(base)
        except UserError as err:
            raise UserError(f"every trial would fail: {err}") from None
    # Every value, in as few compositions as there are candidates for the longest key (composing
    # takes a tenth of a second): column i sets each key to its i-th candidate. Only a column that
    # fails is composed value by value, with the searched groups at their first option (a key may
    # exist only under the group options the search names), to name the values at fault.
    refused: set[str] = set()
    tried: set[str] = set()
    for i in range(max((len(values) for values in space.values()), default=0)):
        column = [f"{key}={values[min(i, len(values) - 1)]}" for key, values in space.items()]
        try:
            schema.check_ranges(compose(config_name=config_name, overrides=fixed + column))
            continue
        except Exception:  # find which values
            pass
        for override in column:
            if override in tried:
                continue
            tried.add(override)
            key = override.partition("=")[0]
            first = [f"{k}={vs[0]}" for k, vs in groups.items() if k != key]
            cfg = composed([*first, override], f"{override}, with {' '.join(first)}," if first else override)
            if cfg is None:
                refused.add(override)
                continue
            try:
                schema.check_ranges(cfg)
            except UserError:
                out_of_range.append(override)
    # Every combination of group options (they decide which keys exist), with the other searched
    # values all at their first, then all at their last candidates.
    others = [key for key in space if key not in groups]
    combinations = list(itertools.product(*([f"{k}={v}" for v in vs] for k, vs in groups.items())))[:COMBINATIONS]
    for combination in combinations:
        for end, which in ((0, "first"), (-1, "last")):
            overrides = [*combination, *(f"{k}={space[k][end]}" for k in others)]
            if refused & set(overrides):
                continue  # already reported alone
            label = " ".join(combination) + f" with the other searched values at their {which}" if others else " ".join(combination)
            cfg = composed(overrides, label)
            if cfg is None:
                break  # one report per combination
            _check_strategy(cfg, config)
    if problems:
        raise UserError(f"the search space holds values this config refuses: {'; '.join(dict.fromkeys(problems))}; "
                        "fix them in hydra.sweeper.params (conf/hparams_search/) or on the command line.")
    if out_of_range:
        log.warning("Out of range, so their trials will fail: %s.", ", ".join(dict.fromkeys(out_of_range)))


def _check_objective(cfg: DictConfig, config: DictConfig) -> None:
    objective = str(cfg.search.objective)
    direction = config.hydra.sweeper.get("direction")
    if OmegaConf.is_list(direction):  # several objectives: the task returns one, so this cannot be meant
        raise UserError("hydra.sweeper.direction lists several directions; a trial returns one objective "
                        "(search.objective): set one direction.")
    wanted = "minimize" if objective in MINIMIZED else "maximize"
    if getattr(direction, "name", direction) != wanted:  # an Enum in the sweeper's schema, or a string
        raise UserError(f"search.objective={objective} is better {'lower' if wanted == 'minimize' else 'higher'}; "
                        f"set hydra.sweeper.direction={wanted}.")


def _check_strategy(cfg: DictConfig, config: DictConfig) -> None:
    """A Horovod or multi-worker trial needs a launcher that starts its processes."""
    name = str(cfg.strategy.name)
    if name in MULTI_PROCESS and not cfg.search.trial_launcher and "slurm" not in str(config.hydra.launcher._target_).lower():
        raise UserError(
            f"strategy={name} runs one process per rank: give each trial its own launcher "
            "(search.trial_launcher=[horovodrun,-np,2,-H,localhost:2] or [python,launch/multiworker.py,-n,2,--]), "
            "or submit trials with hydra/launcher=slurm hydra.launcher.tasks_per_node=<ranks> (srun starts them)."
        )


def resumed_study(config: DictConfig) -> None:
    """A study kept in storage is resumed: say how far it got, and refuse a search space Optuna
    would refuse at the first trial (a categorical parameter whose choices changed)."""
    sweeper = config.hydra.sweeper
    if not sweeper.get("storage") or not sweeper.get("study_name"):
        return
    import optuna
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage)
    except KeyError:  # no such study yet
        return
    params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    distributions, _ = create_params_from_overrides(params + list(config.hydra.overrides.task))
    for trial in study.trials:
        for key, before in trial.distributions.items():
            try:
                if key in distributions:
                    optuna.distributions.check_distribution_compatibility(before, distributions[key])
            except ValueError:
                raise UserError(f"study {sweeper.study_name} searched {key} over {before}, which Optuna cannot "
                                "change in a study: keep it, or start another with hydra.sweeper.study_name=<new>.") from None
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = f"; best so far {study.best_value:.4f}" if done else ""
    log.info("Resuming study %s: %d trials so far (%d completed%s); %d more.",
             sweeper.study_name, len(study.trials), len(done), best, sweeper.n_trials)


# -- after the last trial --------------------------------------------------------------------


def _trial_dirs(sweep_dir: Path, siblings: bool) -> list[Path]:
    roots = sorted(sweep_dir.parent.iterdir()) if siblings else [sweep_dir]
    return [p.parent.parent for root in roots if root.is_dir() for p in sorted(root.glob("*/.hydra/overrides.yaml"))]


def report_best(config: DictConfig, config_name: str) -> None:
    """Name the best trial's run dir and the command that re-runs it (also in optimization_results.yaml)."""
    from sentiment_dist.jobs.rundir import RunDir

    sweep_dir = Path(str(config.hydra.sweep.dir))
    results_file = sweep_dir / RESULTS
    if not results_file.exists():
        return
    results = OmegaConf.load(results_file)
    objective = str(config.search.objective)
    wanted = [f"{key}={value}" for key, value in results.best_params.items()]
    finished = [d for d in _trial_dirs(sweep_dir, False) if RunDir(str(d)).finished]
    best, gap = None, math.inf
    for directory in _trial_dirs(sweep_dir, bool(config.hydra.sweeper.get("storage"))):
        overrides = [str(o) for o in OmegaConf.load(directory / ".hydra" / "overrides.yaml")]
        if not RunDir(str(directory)).finished or not set(wanted) <= set(overrides):
            continue
        value = RunDir(str(directory)).read_metrics()["validation"][objective.removeprefix("val_")]
        if abs(value - results.best_value) < gap:
            best, gap, best_overrides = directory, abs(value - results.best_value), overrides
    n_trials = int(config.hydra.sweeper.n_trials)
    print(f"Sweep done: {n_trials} trials, {len(finished)} finished, {n_trials - len(finished)} failed; "
          f"best {objective} {results.best_value:.4f}", flush=True)
    if best is None:
        return
    launcher = list(config.search.trial_launcher or [])
    overrides = [o for o in best_overrides if not o.startswith("search.trial_launcher=")]
    command = shlex.join([*launcher, "python", "-m", f"sentiment_dist.{config_name}", *overrides])
    print(f"Best run directory: {best.resolve()}\nRe-run it: {command}", flush=True)
    results.best_run_dir = str(best.resolve())
    results.command = command
    OmegaConf.save(results, results_file)


class SweepCallback(Callback):
    """Hydra's hooks around a multirun (`conf/hydra/default.yaml`): check the search space before
    the first trial, report the best trial after the last. Grid sweeps pass through untouched."""

    def on_multirun_start(self, config: DictConfig, config_name: str | None = None, **kwargs: Any) -> None:
        if not _is_optuna(config.hydra) or config_name is None:
            return
        try:
            check_search_space(config, config_name)
            resumed_study(config)
        except UserError as err:
            fail(str(err))

    def on_multirun_end(self, config: DictConfig, config_name: str | None = None, **kwargs: Any) -> None:
        if _is_optuna(config.hydra) and config_name is not None:
            report_best(config, config_name)
