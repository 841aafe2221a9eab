"""Hyper-parameter sweeps for real: Optuna through Hydra (`-m hparams_search=...`), trials run
in-process, by submitit as separate processes, and as their own horovodrun jobs; the W&B sweep
file checked with W&B's own sweep engine; the SLURM launcher's batch script as submitit writes it."""

from __future__ import annotations

import json
import math
import os
import shlex
from pathlib import Path

import optuna
import pytest
import wandb_records as wr
import yaml
from conftest import BIN, PYTHON, REPO, TINY, cli_env, module, quiet, read_json, run
from omegaconf import OmegaConf

SEARCH = ["-m", "hparams_search=synthetic_optuna", *TINY]
RUN_FILES = ["config.yaml", "vocabulary.txt", "labels.json", "model.keras", "history.json", "metrics.json",
             "training_curves.png", "confusion_matrix.png", ".hydra/overrides.yaml"]


def sweep_dirs(tmp_path: Path, task: str = "train") -> list[Path]:
    return sorted(p for p in (tmp_path / "outputs" / task / "multirun").iterdir() if p.is_dir())


def trials(sweep_dir: Path) -> dict[int, Path]:
    return {int(p.name): p for p in sweep_dir.iterdir() if p.name.isdigit()}


def study(tmp_path: Path, name: str = "synthetic_optuna", task: str = "train") -> optuna.Study:
    storage = f"sqlite:///{tmp_path / 'outputs' / task / 'multirun' / 'optuna.db'}"
    return optuna.load_study(study_name=name, storage=storage)


def val_f1(run_dir: Path) -> float:
    return read_json(run_dir / "metrics.json")["validation"]["macro_f1"]


def wandb_run(run_dir: Path):
    """The run record (group) and config W&B wrote offline for a run dir."""
    records = wr.records(wr.run_file(run_dir))
    (run_record,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    return run_record, {key: json.loads(value) for key, value in wr.config(records).items()}


# -- the search space, before any trial ------------------------------------------------------


def hydra_config(task: str, *overrides: str):
    """What the sweep's callback is handed: the composed config with its `hydra` node."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    return GlobalHydra.instance().hydra.compose_config(  # type: ignore[union-attr]
        config_name=task, overrides=list(overrides), run_mode=RunMode.MULTIRUN, with_log_configuration=False)


@pytest.fixture
def hydra_session():
    from hydra import initialize_config_dir

    from sentiment_dist.config import schema
    from sentiment_dist.config.hydra_task import CONFIG_DIR, register_resolvers

    schema.register()
    register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        yield


@pytest.mark.parametrize("task, search", [("train", "synthetic_optuna"), ("train", "imdb_optuna"),
                                          ("finetune", "transfer_optuna"), ("pretrain", "optuna")])
def test_every_shipped_search_space_composes(hydra_session, task, search):
    from sentiment_dist.config.search import check_search_space, search_space

    overrides = [f"hparams_search={search}", *(["search.objective=val_perplexity", "hydra.sweeper.direction=minimize"]
                                               if task == "pretrain" else [])]
    config = hydra_config(task, *overrides)
    check_search_space(config, task)  # raises on any value the config refuses
    space, _ = search_space(config)
    assert len(space) >= (6 if search != "optuna" else 0)
    assert config.hydra.sweeper.sampler.seed == 42 and config.search.objective.startswith("val_")


def test_values_the_config_refuses_are_named_in_one_sentence_before_any_trial(hydra_session):
    """An unknown choice, an unknown key, a missing group option, a float for an integer: each would
    abort the sweep at the first trial sampling it; all are named at once, before any trial."""
    from sentiment_dist.config.search import check_search_space
    from sentiment_dist.runtime.errors import UserError

    mistakes = ["model.pooling=choice(max,avg)", "model.poling=choice(max,mean)", "model=choice(lstm,gru)",
                "trainer.epochs=interval(2,4)"]  # int(interval(2,4)) samples integers
    with pytest.raises(UserError) as raised:
        check_search_space(hydra_config("train", "hparams_search=synthetic_optuna", *mistakes), "train")
    message = str(raised.value)
    for fragment in ("model.pooling=avg", "Invalid value 'avg', expected one of [last, max",
                     "model.poling=max", "Key 'poling' not in 'ModelConfig'", "model=gru", "Could not find 'model/gru'",
                     "trainer.epochs=2.0", "could not be converted to Integer"):
        assert fragment in message, message
    assert "\n" not in message and message.startswith("the search space holds values this config refuses: ")


@pytest.mark.parametrize("mistake, fragments", [
    ("trainer.learning_rate=tag(log,interval(0,0.1))", ["the search space cannot be read", "must be larger than 0"]),
    ("search.objective=val_loss", ["search.objective=val_loss is better lower; set hydra.sweeper.direction=minimize"]),
    ("strategy=horovod", ["strategy=horovod runs one process per rank", "search.trial_launcher=[horovodrun"]),
    ("trainer.batch_size=0", ["every trial would fail: trainer.batch_size=0 must be greater than 0"]),
])
def test_a_sweep_that_cannot_work_is_one_sentence_before_any_trial(hydra_session, mistake, fragments):
    from sentiment_dist.config.search import check_search_space
    from sentiment_dist.runtime.errors import UserError

    with pytest.raises(UserError) as raised:
        check_search_space(hydra_config("train", "hparams_search=synthetic_optuna", mistake), "train")
    assert all(fragment in str(raised.value) for fragment in fragments), str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_resumed_study_keeps_its_categorical_choices(hydra_session, tmp_path):
    """Optuna refuses, at the first trial, a categorical parameter whose choices changed within a
    study; the sweep says so before it starts."""
    from optuna.distributions import CategoricalDistribution

    from sentiment_dist.config.search import resumed_study
    from sentiment_dist.runtime.errors import UserError

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    earlier = optuna.create_study(study_name="synthetic_optuna", storage=storage, direction="maximize")
    trial = earlier.ask({"model.pooling": CategoricalDistribution(["last", "max", "mean"])})
    earlier.tell(trial, 0.7)
    config = hydra_config("train", "hparams_search=synthetic_optuna", f"hydra.sweeper.storage={storage}")
    resumed_study(config)  # the same space: resumed
    with pytest.raises(UserError, match="study synthetic_optuna searched model.pooling over .* hydra.sweeper.study_name=<new>"):
        resumed_study(hydra_config("train", "hparams_search=synthetic_optuna", f"hydra.sweeper.storage={storage}",
                                   "model.pooling=choice(max,mean)"))


def test_a_key_of_another_group_option_is_checked_under_the_options_searched(hydra_session):
    """strategy.cpu_devices exists under mirrored only: a search over single and mirrored would
    abort at the first trial that samples single with it."""
    from sentiment_dist.config.search import check_search_space
    from sentiment_dist.runtime.errors import UserError

    check_search_space(hydra_config("train", "hparams_search=optuna", "strategy=choice(mirrored)",
                                    "strategy.cpu_devices=choice(1,2)"), "train")
    with pytest.raises(UserError, match=r"strategy.cpu_devices=1, with strategy=single, \(Key 'cpu_devices' not in"):
        check_search_space(hydra_config("train", "hparams_search=optuna", "strategy=choice(single,mirrored)",
                                        "strategy.cpu_devices=choice(1,2)"), "train")


def test_the_objective_is_a_validation_metric_and_nan_fails_the_trial():
    from sentiment_dist.config.search import objective
    from sentiment_dist.runtime.errors import UserError

    cfg = OmegaConf.create({"search": {"objective": "val_macro_f1"}})
    result = {"validation": {"macro_f1": 0.8, "accuracy": 0.9}, "test": {"macro_f1": 0.99}}
    assert objective(cfg, result) == 0.8
    assert objective(cfg, {"validation": {"macro_f1": math.nan}}) is None
    with pytest.raises(UserError, match="not a validation metric of this command; use one of"):
        objective(OmegaConf.create({"search": {"objective": "val_perplexity"}}), result)


def test_the_sweep_refuses_a_bad_space_before_its_first_trial(tmp_path):
    result = run(module("train", *SEARCH, "model.pooling=choice(max,avg)"), cwd=tmp_path, check=False)
    assert result.returncode == 2, quiet(result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "model.pooling=avg" in errors[0]
    assert "Launching" not in result.stdout + result.stderr and not (tmp_path / "outputs" / "train").exists()


# -- sweeps --------------------------------------------------------------------------------


def test_an_optuna_sweep_runs_each_trial_as_a_run_and_names_the_best(tmp_path):
    result = run(module("train", *SEARCH, "hydra.sweeper.n_trials=3"), cwd=tmp_path)
    (sweep_dir,) = sweep_dirs(tmp_path)
    runs = trials(sweep_dir)
    assert sorted(runs) == [0, 1, 2]
    for run_dir in runs.values():
        assert all((run_dir / name).is_file() for name in RUN_FILES), sorted(os.listdir(run_dir))
    # The sweeper's results: the best value is the best trial's recorded validation macro-F1.
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    best = max(runs.values(), key=val_f1)
    assert results.best_value == pytest.approx(val_f1(best))
    overrides = OmegaConf.load(best / ".hydra" / "overrides.yaml")
    assert {f"{k}={v}" for k, v in results.best_params.items()} <= set(overrides)
    assert {t.state for t in study(tmp_path).trials} == {optuna.trial.TrialState.COMPLETE}
    # The console ends with the best run dir and the command that re-runs it.
    tail = result.stdout.strip().splitlines()[-3:]
    assert tail[0].startswith("Sweep done: 3 trials, 3 finished, 0 failed; best val_macro_f1")
    assert tail[1] == f"Best run directory: {best.resolve()}" == f"Best run directory: {results.best_run_dir}"
    command = shlex.split(tail[2].removeprefix("Re-run it: "))
    assert command[:3] == ["python", "-m", "sentiment_dist.train"] and "-m" not in command[3:]
    rerun = run([PYTHON, *command[1:], "--cfg", "job"], cwd=tmp_path)  # composes the best trial's config
    assert yaml.safe_load(rerun.stdout)["model"] == yaml.safe_load((best / "config.yaml").read_text())["model"]


def test_a_bad_trial_fails_alone_and_the_study_resumes(tmp_path):
    """dropout=1.5 is out of range: those trials fail (one sentence each) and the others finish.
    Rerunning the command adds trials to the same study, kept in SQLite beside the sweep dirs."""
    bad = [*SEARCH, "model.dropout=choice(0.1,1.5)", "hydra.sweeper.sampler.seed=0"]
    result = run(module("train", *bad, "hydra.sweeper.n_trials=3"), cwd=tmp_path)
    assert "Out of range, so their trials will fail: model.dropout=1.5" in result.stdout
    states = [(t.params["model.dropout"], t.state) for t in study(tmp_path).trials]
    assert {state for dropout, state in states if dropout == 1.5} == {optuna.trial.TrialState.FAIL}
    assert {state for dropout, state in states if dropout == 0.1} == {optuna.trial.TrialState.COMPLETE}
    assert len({dropout for dropout, _ in states}) == 2  # both kinds happened
    assert result.stderr.count("error: model.dropout=1.5 must be in [0, 1); set it in range.") == \
        sum(dropout == 1.5 for dropout, _ in states)
    (sweep_dir,) = sweep_dirs(tmp_path)
    finished = sum(dropout == 0.1 for dropout, _ in states)
    assert len(trials(sweep_dir)) == finished  # failed trials leave no run dir behind
    assert f"Sweep done: 3 trials, {finished} finished, {3 - finished} failed" in result.stdout

    resumed = run(module("train", *bad, "hydra.sweeper.n_trials=1"), cwd=tmp_path)
    assert "Resuming study synthetic_optuna: 3 trials so far" in resumed.stdout
    assert len(study(tmp_path).trials) == 4 and len(sweep_dirs(tmp_path)) == 2
    # The best trial of the whole study, in whichever sweep dir it ran.
    best = max((p for d in sweep_dirs(tmp_path) for p in trials(d).values()), key=val_f1)
    assert f"Best run directory: {best.resolve()}" in resumed.stdout


def test_submitit_runs_each_trial_as_its_own_process_in_one_wandb_group(tmp_path):
    env = {**cli_env(HOME=str(tmp_path)), "WANDB_MODE": "offline"}
    run(module("train", *SEARCH, "logger=wandb", "hydra/launcher=submitit_local", "hydra.sweeper.n_trials=2",
               "hydra.sweeper.n_jobs=2", "hydra.launcher.timeout_min=10"), cwd=tmp_path, env=env, timeout=600)
    (sweep_dir,) = sweep_dirs(tmp_path)
    runs = trials(sweep_dir)
    assert sorted(runs) == [0, 1]
    # submitit's local executor: one process per trial, its job id is the process id.
    jobs = sorted(p for p in (sweep_dir / ".submitit").iterdir() if p.name.isdigit())
    assert len(jobs) == 2 and len({int(job.name) for job in jobs} | {os.getpid()}) == 3
    logs = [next(job.glob("*_log.out")).read_text() for job in jobs]
    assert sorted(log_text.count("Run directory: ") for log_text in logs) == [1, 1]
    assert {line.split("Run directory: ")[1].strip() for log_text in logs for line in log_text.splitlines()
            if "Run directory: " in line} == {str(p.resolve()) for p in runs.values()}
    for number, run_dir in runs.items():
        run_record, config = wandb_run(run_dir)
        assert run_record.run_group == "synthetic_optuna"  # the study: one group for the whole sweep
        assert config["sweep"]["trial"] == number and config["sweep"]["study"] == "synthetic_optuna"
        assert config["sweep"]["params"]["model.units"] == str(config["model"]["units"])
        assert set(config["sweep"]["params"]) == set(yaml.safe_load(
            (REPO / "conf/hparams_search/synthetic_optuna.yaml").read_text())["hydra"]["sweeper"]["params"])


def test_a_horovod_trial_runs_as_its_own_horovodrun_job(tmp_path, horovod_available):
    env = {**cli_env(HOME=str(tmp_path)), "WANDB_MODE": "offline"}
    launcher = f"search.trial_launcher=[{BIN / 'horovodrun'},-np,2,-H,localhost:2,--gloo]"
    result = run(module("train", *SEARCH, "logger=wandb", "strategy=horovod", launcher, "hydra.sweeper.n_trials=1",
                        "trainer.batch_size=16"), cwd=tmp_path, env=env, timeout=600)
    (sweep_dir,) = sweep_dirs(tmp_path)
    runs = trials(sweep_dir)
    assert sorted(runs) == [0]
    for number, run_dir in runs.items():
        environment = read_json(run_dir / "metrics.json")["environment"]
        assert environment["strategy"] == "horovod" and environment["world_size"] == 2
        run_record, config = wandb_run(run_dir)  # the chief's W&B run, in the sweep's group
        assert run_record.run_group == "synthetic_optuna" and config["sweep"]["trial"] == number
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert results.best_value == pytest.approx(max(val_f1(p) for p in runs.values()))
    assert f"Re-run it: {BIN / 'horovodrun'} -np 2 -H localhost:2 --gloo python -m sentiment_dist.train" in result.stdout


# -- a W&B sweep and SLURM, as far as they go offline -------------------------------------------


def test_the_wandb_sweep_file_is_valid_and_its_runs_compose(tmp_path):
    """W&B's own sweep engine (the `sweeps` package its local controller uses) validates the file
    and proposes runs; each command the agent would run composes (`--cfg job`, no training)."""
    import sweeps
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    config = yaml.safe_load((REPO / "launch" / "sweeps" / "wandb_imdb.yaml").read_text())
    assert sweeps.schema_violations_from_proposed_config(config) == []
    proposed: list = []
    for _ in range(2):
        suggestion = sweeps.next_run(sweeps.SweepConfig(config), proposed)
        proposed.append(suggestion)
        values = {key: {"value": getattr(v["value"], "item", lambda v=v: v["value"])()} for key, v in suggestion.config.items()}
        args = create_sweep_command_args({"args": values})["args_no_hyphens"]
        words = {"${env}": [], "${interpreter}": [PYTHON], "${args_no_hyphens}": args}
        command = [w for word in create_sweep_command(config["command"]) for w in words.get(word, [word])]
        composed = yaml.safe_load(run([*command, "--cfg", "job"], cwd=tmp_path).stdout)
        assert composed["model"]["units"] == values["model.units"]["value"]
        assert composed["trainer"]["learning_rate"] == pytest.approx(values["trainer.learning_rate"]["value"])
        assert composed["dataset"]["name"] == "imdb" and composed["logger"]["group"] == "imdb-wandb-sweep"


def test_the_slurm_launcher_asks_for_the_gpus_of_each_trial(tmp_path, monkeypatch, hydra_session):
    """The batch script submitit would hand to sbatch for one trial (no cluster here: submitit only
    checks that `srun` exists before it writes the script)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    (tmp_path / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    config = hydra_config("train", "hparams_search=imdb_optuna", "hydra/launcher=slurm",
                          "hydra.launcher.gpus_per_node=4", "hydra.launcher.tasks_per_node=4",
                          f"hydra.sweep.dir={tmp_path}/sweep", "hydra.job.name=train")
    params = OmegaConf.to_container(config.hydra.launcher, resolve=True)
    folder, params = params.pop("submitit_folder"), {k: v for k, v in params.items() if k != "_target_"}
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -u -m submitit.core._submit", "1")
    for line in ("#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=4", "#SBATCH --nodes=1", "#SBATCH --cpus-per-task=8"):
        assert line in script, script
    assert "srun" in script  # each task started by srun: one Horovod rank per GPU
