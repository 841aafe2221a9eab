"""W&B for real, offline: what the chief recorded, that other ranks record
nothing, and that W&B failures never stop training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import wandb_records as wr
from conftest import TINY, finetune_main_job, horovodrun, module, offline_wandb_env, read_json, run

WANDB = [*TINY, "logger=wandb"]


def only_wandb_run(root: Path) -> Path:
    runs = list(root.rglob("offline-run-*"))
    assert len(runs) == 1, runs
    return runs[0].parent.parent


def check_recorded(run_dir: Path) -> list:
    records = wr.records(wr.run_file(run_dir))
    metrics = read_json(run_dir / "metrics.json")
    summary = wr.summary(records)
    assert float(summary["test/accuracy"]) == pytest.approx(metrics["test"]["accuracy"])
    assert float(summary["test/macro_f1"]) == pytest.approx(metrics["test"]["macro_f1"])
    config = wr.config(records)
    model = json.loads(config["model"])
    assert model["name"] == "bilstm" and model["units"] == 32  # nested, resolved, with the debug override
    environment = json.loads(config["environment"])
    assert environment["global_batch_size"] and environment["tensorflow"]
    assert {"loss", "val_loss", "val_accuracy", "learning_rate", "examples_per_second"} <= wr.history_keys(records)
    (model_artifact,) = [a for a in wr.artifacts(records) if a.type == "model"]
    files = {entry.path for entry in model_artifact.manifest.contents}
    assert {"model.keras", "vocabulary.txt", "labels.json"} <= files
    return records


def test_single_run_is_recorded_offline(tmp_path):
    result = run(module("train", *WANDB), cwd=tmp_path, env=offline_wandb_env(tmp_path))
    assert "logging offline" in result.stdout
    run_dir = only_wandb_run(tmp_path / "outputs")
    check_recorded(run_dir)
    assert read_json(run_dir / "tracking.json")["mode"] == "offline"


def test_horovod_job_is_one_wandb_run(tmp_path, horovod_available):
    run(horovodrun() + module("train", *WANDB, "strategy=horovod", "trainer.batch_size=16"), cwd=tmp_path, env=offline_wandb_env(tmp_path))
    records = check_recorded(only_wandb_run(tmp_path / "outputs"))
    environment = json.loads(wr.config(records)["environment"])
    assert environment["world_size"] == 2 and environment["horovod"] == "0.28.1"


def test_finetune_joins_the_source_group_and_declares_the_source_model(tmp_path_factory):
    runs = sorted(finetune_main_job(tmp_path_factory).parent.rglob("offline-run-*"))
    assert len(runs) == 2
    by_job = {}
    for path in runs:
        records = wr.records(next(path.glob("run-*.wandb")))
        (header,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        by_job[header.job_type] = (header, records)
    source, target = by_job["train"][0], by_job["finetune"][0]
    assert source.run_group == target.run_group
    source_model = [a for a in wr.artifacts(by_job["train"][1]) if a.type == "model"][0]
    # Offline W&B cannot use_artifact; the reference goes into the config.
    assert json.loads(wr.config(by_job["finetune"][1])["source_model"]) == f"{source_model.name}:latest"


SABOTAGE = '''
import wandb, wandb.sdk.wandb_run as wandb_run
def broken_init(*args, **kwargs):
    if kwargs.get("mode") != "offline":
        raise RuntimeError("injected: W&B service unreachable")
    return real_init(*args, **kwargs)
def broken_log(self, *args, **kwargs):
    raise RuntimeError("injected: W&B log failed")
real_init = wandb.init
wandb.init = broken_init
wandb_run.Run.log = broken_log
'''


def test_wandb_failing_at_init_and_log_time_does_not_stop_training(tmp_path):
    (tmp_path / "sabotage").mkdir()
    (tmp_path / "sabotage" / "sitecustomize.py").write_text(SABOTAGE)
    env = offline_wandb_env(tmp_path, PYTHONPATH=str(tmp_path / "sabotage"), WANDB_MODE="online")
    result = run(module("train", *WANDB), cwd=tmp_path, env=env)
    assert "W&B init (online) failed" in result.stdout and "injected" in result.stdout
    assert "W&B log failed" in result.stdout or "W&B log" in result.stdout
    (run_dir,) = [p.parent for p in tmp_path.rglob("metrics.json")]
    for name in ("model.keras", "vocabulary.txt", "labels.json", "metrics.json", "history.json", "config.yaml"):
        assert (run_dir / name).exists(), name
    assert read_json(run_dir / "metrics.json")["epochs_run"] == 2
