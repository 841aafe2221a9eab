"""A crashing worker fails the whole distributed job cleanly. (A job that ends well is checked end
to end, against the single device's weights, in test_equivalence.py.)"""

from __future__ import annotations

import pytest
from conftest import TINY, cli_env, horovodrun, module, multiworker, run

JOBS = {
    "multiworker": lambda: multiworker(2) + module("train", *TINY, "trainer.verbose=true", "strategy=multiworker", "trainer.batch_size=16"),
    "horovod": lambda: horovodrun() + module("train", *TINY, "trainer.verbose=true", "strategy=horovod", "trainer.batch_size=16"),
}


# Rank 1 dies (os._exit, like a segfault or OOM kill) at its second training step, after the chief
# has made its run dir: patched in when the trainer is imported. Not at the first: the chief may then
# be compiling its step in C++ for longer than the launcher's grace between SIGTERM and SIGKILL (5 s
# in horovodrun) on a loaded machine, and a SIGKILLed chief cleans up nothing. After a step both
# have run, the chief is in the next step's collective, which fails as soon as the peer is gone.
CRASH_RANK_1 = """
import importlib.abc, importlib.machinery, json, os, sys
rank = os.environ.get("HOROVOD_RANK") or str(json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index", 0))

class CrashOnSecondStep(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "sentiment_dist.training.loop":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load = spec.loader.exec_module
        def exec_module(module):
            load(module)
            step, steps = module.Trainer._train_step, []
            def crash_on_second(self, batch, *args, **kwargs):
                steps.append(batch)
                if len(steps) == 2:
                    sys.stderr.write("simulated crash on rank 1\\n")
                    os._exit(3)
                return step(self, batch, *args, **kwargs)
            module.Trainer._train_step = crash_on_second
        spec.loader.exec_module = exec_module
        return spec

if rank == "1":
    sys.meta_path.insert(0, CrashOnSecondStep())
"""


@pytest.mark.parametrize("strategy", ["multiworker", "horovod"])
def test_a_crashing_worker_fails_the_job_and_leaves_no_run_dir(strategy, tmp_path, request):
    if strategy == "horovod":
        request.getfixturevalue("horovod_available")
    (tmp_path / "crash").mkdir()
    (tmp_path / "crash" / "sitecustomize.py").write_text(CRASH_RANK_1)
    result = run(JOBS[strategy](), cwd=tmp_path, env=cli_env(PYTHONPATH=str(tmp_path / "crash")), check=False, timeout=240)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "worker 1 failed with exit code 3" in output or "Process 1 exit with status code 3" in output
    assert not list((tmp_path / "outputs").rglob("metrics.json")) if (tmp_path / "outputs").exists() else True
    leftovers = [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()] if (tmp_path / "outputs").exists() else []
    assert leftovers == [], f"half-written run dir: {leftovers}"
