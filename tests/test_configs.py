"""Every config file in every group composes and resolves; typos fail in Hydra's words."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, module, run
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sentiment_dist.config import CONFIG_DIR, register_resolvers

CONF = Path(CONFIG_DIR)
PRIMARY = sorted(p.stem for p in CONF.glob("*.yaml"))
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_resolved(config_name: str, overrides: list[str]) -> dict:
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=config_name != "evaluate")


def test_config_dir_is_the_top_level_conf():
    assert CONF == REPO / "conf"
    assert {"dataset", "model", "strategy", "trainer", "logger", "experiment", "debug", "paths"} <= set(GROUPS)


@pytest.mark.parametrize("config_name", PRIMARY)
def test_every_primary_config_composes(config_name):
    assert compose_resolved(config_name, [])["task_name"]


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS if g != "experiment" and g != "debug" for o in options(g)])
def test_every_group_option_composes(group, option):
    cfg = compose_resolved("finetune" if group == "finetune" else "train", [f"{group}={option}"])
    assert cfg[group]


@pytest.mark.parametrize("option", options("experiment"))
def test_every_experiment_composes(option):
    primary = option.split("_")[0]  # ulmfit_* and pretrain_* recipes are for those jobs
    if primary not in ("ulmfit", "pretrain"):
        transfer = "source" in (CONF / "experiment" / f"{option}.yaml").read_text()  # a train-then-fine-tune recipe
        primary = "finetune" if transfer else "train"
    cfg = compose_resolved(primary, [f"experiment={option}"])
    assert cfg["source"]["model"]["name"] if primary == "finetune" else cfg["model"]["name"]
    assert cfg["dataset"]["name"]


@pytest.mark.parametrize("option", options("debug"))
def test_every_debug_config_composes(option):
    primary = {"tiny_transfer": "finetune", "tiny_report": "transfer_report", "tiny_pretrain": "pretrain",
               "tiny_ulmfit": "ulmfit"}.get(option, "train")
    cfg = compose_resolved(primary, [f"debug={option}"])
    assert cfg["logger"]["name"] == "none"


def test_model_configs_keep_the_fused_kernel():
    for option in options("model"):
        assert OmegaConf.load(CONF / "model" / f"{option}.yaml").recurrent_dropout == 0


@pytest.mark.parametrize(
    "override,message",
    [
        ("trainer.epoch=3", "Key 'epoch' is not in struct"),
        ("model=bilstmm", "Could not find 'model/bilstmm'"),
    ],
)
def test_config_typos_fail_with_hydras_message(tmp_path, override, message):
    result = run(module("train", override), cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("metrics.json"))
