"""Where the test suite's time goes: CPU seconds per test, counted over every process it starts.

`--durations` gives each test's wall time, which on 2 cores mostly says how many other tests ran
beside it. This counts what the suite costs: each Python process the tests start (a CLI job, a
rank under horovodrun or MultiWorker, an xdist worker) records its own CPU time when it exits,
through a `sitecustomize` put on PYTHONPATH for this run only, and is charged to the test that
started it (PYTEST_CURRENT_TEST, inherited; or its parent process's test, for ranks whose
launcher clears the environment). A CLI job or a rank forked from a warm Python (tests/warm_python.py)
records only its own CPU time; the imports it skipped are counted once, in that server's record.
Processes ended by SIGKILL record nothing: the fault tests' victims are missing from the totals,
which `time` (user + sys) of the whole run includes.

    python benchmarks/suite_cost.py [--workers 3] [pytest arguments, e.g. tests/test_cli.py]

Writes benchmarks/results/suite_cost.json and .md: the wall time, the CPU time of the run and of
the processes counted, how many of them imported TensorFlow, and the tests and modules that cost
the most.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imdb_data import REPO, write_results

RECORDER = '''
import atexit, json, os, resource, sys, time
_started = time.time()
def _record():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    entry = {"pid": os.getpid(), "ppid": os.getppid(), "test": os.environ.get("PYTEST_CURRENT_TEST", ""),
             "argv": sys.argv[:3], "tensorflow": "tensorflow" in sys.modules,
             "rank": any(k in os.environ for k in ("HOROVOD_RANK", "TF_CONFIG", "SLURM_PROCID")),
             "cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": time.time() - _started}
    try:
        with open(os.environ["SUITE_COST_FILE"], "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\\n")  # one short line: appends from many processes stay whole
    except OSError:
        pass
atexit.register(_record)
'''


NO_TEST = "(no test: xdist workers with their in-process tests, ranks launched without the test's environment)"


def charged(entries: list[dict]) -> list[tuple[str, dict]]:
    """Each process with the test it is charged to: '' for the xdist workers (whose in-process tests
    are theirs) and for a rank whose launcher dropped the environment and whose parent left no record."""
    by_pid = {entry["pid"]: entry for entry in entries}

    def test_of(entry: dict, hops: int = 0) -> str:
        if entry["test"] or hops > 8:
            return entry["test"].rsplit(" (", 1)[0]
        parent = by_pid.get(entry["ppid"])
        return test_of(parent, hops + 1) if parent else ""

    return [(test_of(entry), entry) for entry in entries]


def kind(entry: dict, by_pid: dict[int, dict]) -> str:
    """How a process was started, from its own argv and its parent's."""
    argv = " ".join(map(str, entry["argv"]))
    parent = by_pid.get(entry["ppid"])
    parent_argv = " ".join(map(str, parent["argv"])) if parent else ""
    if "warm_python.py" in argv:
        return "warm Python server (tests/warm_python.py)"
    if "warm_python.py" in parent_argv:
        if entry.get("rank"):
            return "rank of a 2-process job, forked from the warm Python"
        return "CLI job forked from the warm Python"
    if "warm_rank.py" in argv:
        return "client of a forked rank (tests/warm_rank.py)"
    if "horovodrun" in argv:
        return "horovodrun and its helpers"
    if "multiworker.py" in parent_argv or (parent is None and entry["tensorflow"] and "sentiment_dist" in argv):
        return "rank of a 2-process job, a new interpreter (horovodrun, launch/multiworker.py)"
    if entry["argv"][:1] == ["-c"] and "pytest" in parent_argv:
        return "xdist worker (its in-process tests)"
    if entry["tensorflow"]:
        return "other TensorFlow process (a CLI job in a new interpreter, a sweep trial)"
    return "other process without TensorFlow"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="3", help="pytest -n (make test's choice on 2 cores: 3)")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--keep", type=Path, help="also copy every process's record (JSON lines) here")
    args, pytest_args = parser.parse_known_args()
    with tempfile.TemporaryDirectory(prefix="suite-cost-") as scratch:
        (Path(scratch) / "sitecustomize.py").write_text(RECORDER)
        records = Path(scratch) / "processes.jsonl"
        path = os.pathsep.join(p for p in (scratch, os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "PYTHONPATH": path, "SUITE_COST_FILE": str(records)}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", args.workers, *pytest_args]
        before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
        code = subprocess.run(command, cwd=REPO, env=env).returncode
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        entries = [json.loads(line) for line in records.read_text().splitlines()] if records.exists() else []
        if args.keep and records.exists():
            args.keep.write_text(records.read_text())
    run_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    per_test, per_module = collections.defaultdict(lambda: [0.0, 0, 0]), collections.defaultdict(float)
    for test, entry in charged(entries):
        row = per_test[test or NO_TEST]
        row[0] += entry["cpu_s"]
        row[1] += 1
        row[2] += entry["tensorflow"]
        per_module[test.split("::")[0] or NO_TEST] += entry["cpu_s"]
    counted = sum(entry["cpu_s"] for entry in entries)
    by_pid, per_kind = {entry["pid"]: entry for entry in entries}, collections.defaultdict(lambda: [0, 0.0])
    for entry in entries:
        row = per_kind[kind(entry, by_pid)]
        row[0] += 1
        row[1] += entry["cpu_s"]
    kinds = sorted(({"kind": name, "processes": n, "cpu_s": round(cpu, 1)} for name, (n, cpu) in per_kind.items()),
                   key=lambda row: -row["cpu_s"])
    summary = {
        "pytest_exit_code": code, "wall_s": round(wall, 1), "cpu_s": round(run_cpu, 1),
        "cpu_s_counted": round(counted, 1), "processes": len(entries),
        "tensorflow_processes": sum(entry["tensorflow"] for entry in entries),
        "tensorflow_cpu_s": round(sum(entry["cpu_s"] for entry in entries if entry["tensorflow"]), 1),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "workers": args.workers,
    }
    tests = sorted(({"test": test, "cpu_s": round(cpu, 1), "processes": n, "tensorflow_processes": tf_n}
                    for test, (cpu, n, tf_n) in per_test.items()), key=lambda row: -row["cpu_s"])
    modules = sorted(({"module": module, "cpu_s": round(cpu, 1), "share": round(cpu / max(counted, 1e-9), 3)}
                      for module, cpu in per_module.items()), key=lambda row: -row["cpu_s"])
    write_results(
        "suite_cost", "Where the test suite's time goes (CPU seconds, every process counted)",
        {"summary": summary, "kinds": kinds, "modules": modules, "tests": tests},
        [("The run", [summary], [(key, key) for key in summary]),
         ("Processes by how they were started", kinds, [("kind", "kind"), ("processes", "processes"), ("cpu_s", "CPU s")]),
         ("Modules", modules, [("module", "module"), ("cpu_s", "CPU s"), ("share", "share")]),
         (f"The {args.top} costliest tests", tests[: args.top],
          [("test", "test"), ("cpu_s", "CPU s"), ("processes", "processes"), ("tensorflow_processes", "TensorFlow")])],
        notes=["Processes ended by SIGKILL (the fault tests' victims) record nothing: `cpu_s` (the run's user + "
               "sys, children included) minus `cpu_s_counted` is roughly their share, plus pip and TensorFlow threads "
               "not waited for.",
               "A test's CPU s includes the session-shared runs it was the first to ask for."])
    sys.exit(code)


if __name__ == "__main__":
    main()
