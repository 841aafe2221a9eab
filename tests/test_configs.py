"""Every config composes under the task it is for, against the schema; every kind of
config mistake fails before anything is read, trained or written, in one sentence or in
Hydra's own words."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO, composed, module, run
from omegaconf import OmegaConf

from sentiment_dist.config import schema
from sentiment_dist.config.hydra_task import CONFIG_DIR
from sentiment_dist.runtime.errors import UserError

CONF = Path(CONFIG_DIR)
TASKS = ("train", "pretrain", "finetune", "ulmfit", "transfer_report", "evaluate", "prepare")
# The group each task composes a group's options under (evaluate has only strategy and dataset).
TASK_OF_GROUP = {"finetune": "finetune", "lm": "pretrain", "report": "transfer_report"}
SKIPPED_GROUPS = {"hydra", "experiment", "debug", "debug_task", "base", "hparams_search"}  # hparams_search: tests/test_search.py


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def resolved(task: str, *overrides: str) -> dict:
    cfg = composed(task, *overrides)
    schema.check_ranges(cfg)
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=task != "evaluate")


def test_config_dir_is_the_top_level_conf():
    assert CONF == REPO / "conf"
    assert sorted(p.stem for p in CONF.glob("*.yaml")) == sorted(TASKS)


@pytest.mark.parametrize("task", TASKS)
def test_every_task_composes_against_its_schema(task):
    cfg = composed(task, *(["run_dir=somewhere"] if task == "evaluate" else []))
    assert cfg.task_name == task
    assert OmegaConf.get_type(cfg).__name__ == "".join(part.title() for part in task.split("_")) + "Task"
    resolved(task, *(["run_dir=somewhere"] if task == "evaluate" else []))


@pytest.mark.parametrize(
    "group,option",
    [(g.name, o) for g in sorted(CONF.iterdir()) if g.is_dir() and g.name not in SKIPPED_GROUPS for o in options(g.name)],
)
def test_every_group_option_composes_with_its_schema(group, option):
    cfg = composed(TASK_OF_GROUP.get(group, "train"), f"{group}={option}")
    assert OmegaConf.get_type(cfg[group]) is not dict, f"{group}/{option}.yaml has no schema (defaults: [schema])"


def experiment_task(option: str) -> str:
    """The command an experiment is for, from the `python -m sentiment_dist.<task>` line in its header."""
    found = re.search(r"python -m sentiment_dist\.(\w+)", (CONF / "experiment" / f"{option}.yaml").read_text())
    assert found, f"conf/experiment/{option}.yaml names no command (python -m sentiment_dist.<task>) in its header"
    return found[1]


@pytest.mark.parametrize("option", options("experiment"))
def test_every_experiment_composes_under_its_task(option):
    cfg = resolved(experiment_task(option), f"experiment={option}")
    assert cfg["model"]["name"] and cfg["dataset"]["name"]


@pytest.mark.parametrize("task", [t for t in TASKS if t not in ("evaluate", "prepare")])
@pytest.mark.parametrize("mode", [m for m in options("debug") if m != "none"])
def test_every_debug_mode_composes_under_every_task(task, mode):
    cfg = resolved(task, f"debug={mode}")
    assert cfg["logger"]["name"] == "none"
    assert cfg["dataset"]["max_rows"]
    if task in ("finetune", "transfer_report"):
        assert cfg["source"]["dataset"]["max_rows"]  # the in-job source is cut too
    if task in ("ulmfit", "transfer_report"):
        assert cfg["lm"]["trainer"]["epochs"] <= 2


def test_every_stage_of_a_chain_reads_whole_texts_as_pretrain_does():
    """The lm block lives once (conf/lm/default.yaml): transfer_report's language models lacked
    lm.whole_texts when it was pasted into each task, and read each text's first window only."""
    for task in ("pretrain", "ulmfit", "transfer_report"):
        assert composed(task).lm.whole_texts is True, task


def test_model_configs_keep_the_fused_kernel():
    for option in options("model"):
        assert composed("train", f"model={option}").model.recurrent_dropout == 0


def test_ranges_are_checked_on_nested_and_package_moved_nodes():
    cfg = composed("finetune", "source.trainer.batch_size=0")
    with pytest.raises(UserError, match=r"source\.trainer\.batch_size=0 must be greater than 0"):
        schema.check_ranges(cfg)
    schema.check_ranges(composed("finetune"))


# Every kind of mistake, through the real CLI: (overrides, exit code, what stderr says).
MISTAKES = [
    # unknown keys, wrong types, unknown choices: Hydra's words, exit code 1
    (["trainer.epoch=3"], 1, "Key 'epoch' not in 'TrainerConfig'"),
    (["model=bilstmm"], 1, "Could not find 'model/bilstmm'"),
    (["trainer.epochs=three"], 1, "Value 'three' of type 'str' could not be converted to Integer"),
    (["model.pooling=avg"], 1, "Invalid value 'avg', expected one of [last, max, mean, max_mean, attention]"),
    (["trainer.optimizer=adagrad"], 1, "Invalid value 'adagrad', expected one of [adam, adamw, sgd, rmsprop]"),
    (["trainer.precision=float64"], 1, "Invalid value 'float64'"),
    (["trainer.class_weight=heavy"], 1, "Invalid value 'heavy', expected one of [balanced]"),
    (["dataset.split.seed=x", "dataset=csv"], 1, "could not be converted to Integer"),
    # out of range: one sentence naming the key, exit code 2
    (["trainer.batch_size=0"], 2, "trainer.batch_size=0 must be greater than 0"),
    (["trainer.epochs=0"], 2, "trainer.epochs=0 must be greater than 0"),
    (["trainer.learning_rate=-0.1"], 2, "trainer.learning_rate=-0.1 must be greater than 0"),
    (["model.units=0"], 2, "model.units=0 must be greater than 0"),
    (["model.dropout=1.0"], 2, "model.dropout=1.0 must be in [0, 1)"),
    (["trainer.ema_momentum=1.5"], 2, "trainer.ema_momentum=1.5 must be between 0 and 1"),
    (["trainer.lr_on_plateau.factor=0"], 2, "trainer.lr_on_plateau.factor=0.0 must be between 0 and 1"),
    (["dataset.num_train=0"], 2, "dataset.num_train=0 must be greater than 0"),
    (["dataset=csv", "dataset.path=x.csv", "dataset.split.test_fraction=1.5"], 2, "dataset.split.test_fraction=1.5 must be in [0, 1)"),
    (["dataset.domain=books"], 1, "Invalid value 'books', expected one of [movies, ecommerce]"),
    (["dataset=csv", "dataset.label_mapping.type=stars"], 1, "Invalid value 'stars', expected one of [names, integers, ratings]"),
    (["dataset.num_classes=4"], 2, "dataset.num_classes=4 must be one of 2, 3, 5"),
    (["dataset.num_test=-5"], 2, "dataset.num_test=-5 must be greater than 0"),
    (["dataset.seed=-1"], 2, "dataset.seed=-1 must be at least 0"),
    (["dataset=csv", "dataset.path=x.csv", "dataset.split.validation_fraction=-0.1"], 2, "dataset.split.validation_fraction=-0.1 must be in [0, 1)"),
    (["init.vocab=everything"], 1, "Invalid value 'everything', expected one of [source, extend]"),
]


@pytest.mark.parametrize("overrides,code,message", MISTAKES, ids=[m[0][-1] for m in MISTAKES])
def test_config_mistakes_fail_before_anything_runs(tmp_path, overrides, code, message):
    result = run(module("train", "trainer.verbose=false", *overrides), cwd=tmp_path, check=False, timeout=120)
    assert result.returncode == code, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    if code == 2:
        assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [f"error: {result.stderr.split('error: ', 1)[1].strip()}"]
    assert not re.search(r"Dataset \w+: \d+ train", result.stdout + result.stderr)  # no data was read
    assert not (tmp_path / "outputs").exists()  # nothing written, not even an empty run dir


@pytest.mark.parametrize(
    "task,overrides,message",
    [
        ("finetune", ["finetune.schedule=slanted"], "Invalid value 'slanted', expected one of [frozen, full, gradual]"),
        ("finetune", ["finetune.freeze=[embeding]"], "Invalid value 'embeding'"),
        ("finetune", ["source.trainer.batch_size=0"], "source.trainer.batch_size=0 must be greater than 0"),
        ("pretrain", ["lm.num_sampled=0"], "lm.num_sampled=0 must be greater than 0"),
        ("transfer_report", ["report.sizes=[4]"], "report.sizes=[4] must list numbers of labelled examples of at least 8"),
        ("transfer_report", ["report.schedules=[]"], "report.schedules=[] must name at least one fine-tuning schedule"),
        ("finetune", ["strategy=multiworker", "strategy.communication=carrier_pigeon"], "Invalid value 'carrier_pigeon'"),
    ],
)
def test_a_mistake_in_a_later_stage_fails_before_the_first_stage_trains(tmp_path, task, overrides, message):
    """A typo in finetune.schedule used to surface only after the in-job source had trained."""
    result = run(module(task, "debug=tiny", *overrides), cwd=tmp_path, check=False, timeout=120)
    assert result.returncode in (1, 2) and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists()
