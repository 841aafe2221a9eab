"""A job forked from the warm Python (tests/warm_python.py) starts, runs and ends as it would in a new
interpreter: the same argv, path, directory, environment, temporary directory, output, exit codes
and exit sequence, and its own random state. The suite's CLI jobs rely on this."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import PYTHON, cli_env
from warm_python import WarmPython

PROBE = """
import atexit, os, random, sys, tempfile, threading, time
print("argv", sys.argv[1:], os.path.basename(sys.argv[0]))
print("path0", sys.path[0] == os.getcwd(), "cwd", os.path.basename(os.getcwd()))
print("env", os.environ.get("PROBE_VALUE"), "tmp", tempfile.gettempdir() == os.environ["TMPDIR"])
print("main", __name__, "stdin", repr(sys.stdin.read()))
print("random", random.random(), "preloaded", "tensorflow" in sys.modules, file=sys.stderr)
atexit.register(lambda: print("atexit ran"))
threading.Thread(target=lambda: (time.sleep(0.3), print("thread finished"))).start()
ending = sys.argv[1]
if ending == "code":
    sys.exit(3)
if ending == "message":
    sys.exit("one sentence")
if ending == "raise":
    raise ValueError("boom")
"""


@pytest.fixture(scope="module")
def warm():
    server = WarmPython()
    yield server
    server.close()


def launch(warm, how: str, ending: str, tmp_path) -> subprocess.CompletedProcess:
    (tmp_path / "probe.py").write_text(PROBE)
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env = cli_env(PROBE_VALUE="seen", TMPDIR=str(tmp_path / "tmp"))
    if how == "warm":
        assert warm.serves(env)
        return warm.run("probe", [ending], tmp_path, env, timeout=60)
    command = [PYTHON]
    if how == "rank":  # what horovodrun starts for a rank: tests/warm_rank.py, which the server forks
        command, env = warm.client(env)
    return subprocess.run([*command, "-m", "probe", ending], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("ending", ["end", "code", "message", "raise"])
@pytest.mark.parametrize("how", ["warm", "rank"])
def test_a_warm_job_is_what_a_new_interpreter_runs(warm, how, ending, tmp_path):
    fresh, forked = launch(warm, "fresh", ending, tmp_path), launch(warm, how, ending, tmp_path)
    assert "preloaded True" in forked.stderr and "preloaded False" in fresh.stderr  # forked, not started anew
    assert forked.returncode == fresh.returncode == {"end": 0, "code": 3, "message": 1, "raise": 1}[ending]
    assert forked.stdout == fresh.stdout
    assert "atexit ran" in forked.stdout and "thread finished" in forked.stdout
    assert "env seen tmp True" in forked.stdout and "path0 True" in forked.stdout and "main __main__" in forked.stdout

    def stderr(result) -> list[str]:
        """Without the random draw, and of a traceback only its last line (the frames above the
        probe's are runpy's in a new interpreter, the fork's in a warm one)."""
        lines = [line for line in result.stderr.splitlines() if not line.startswith("random")]
        return ["Traceback", lines[-1]] if lines and lines[0].startswith("Traceback") else lines

    assert stderr(forked) == stderr(fresh)
    assert stderr(forked) == {"end": [], "code": [], "message": ["one sentence"], "raise": ["Traceback", "ValueError: boom"]}[ending]


def test_each_warm_job_has_its_own_random_state_and_a_timeout_kills_it(warm, tmp_path):
    first, second = (launch(warm, "warm", "end", tmp_path) for _ in range(2))
    assert first.stderr != second.stderr  # "random <value>" differs: reseeded after the fork
    (tmp_path / "sleeper.py").write_text("import time\ntime.sleep(600)\n")
    with pytest.raises(subprocess.TimeoutExpired) as stopped:
        warm.run("sleeper", [], tmp_path, cli_env(), timeout=3)
    assert stopped.value.cmd[-2:] == ["-m", "sleeper"] and stopped.value.timeout == 3
    assert launch(warm, "warm", "code", tmp_path).returncode == 3  # the server carries on


def test_a_job_needing_another_interpreter_start_is_not_served(warm):
    assert not warm.serves(cli_env(PYTHONPATH="/somewhere/sitecustomize"))
    assert not warm.serves(cli_env(TF_ENABLE_ONEDNN_OPTS="0"))
    assert warm.serves(cli_env(TF_CONFIG="{}", WANDB_MODE="offline", HOME="/elsewhere", PYTHON="/usr/bin/python3"))


SIGNALLED = """
import os, signal, sys, time
from pathlib import Path
here = Path(sys.argv[1])
signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))  # a preempted job saves and exits with its own code
(here / "pid").write_text(str(os.getpid()))
if sys.argv[2] == "kill-itself":
    os.kill(os.getpid(), signal.SIGKILL)
while True:
    signal.pause()
"""


def running(pid: int) -> bool:
    """Neither gone nor a zombie. Read once: the server may reap it between two reads."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text(errors="replace")
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("ending", ["sigterm-forwarded", "kill-itself", "client-killed"])
def test_a_warm_rank_passes_signals_on_and_ends_as_the_rank_ended(warm, ending, tmp_path):
    """What a launcher sees of a rank forked through tests/warm_rank.py: its SIGTERM reaches the
    rank, and the rank's exit code or fatal signal comes back; a client SIGKILLed (horovodrun's
    last resort) takes its rank with it."""
    (tmp_path / "signalled.py").write_text(SIGNALLED)
    client, env = warm.client(cli_env())
    job = subprocess.Popen([*client, "-m", "signalled", str(tmp_path), ending], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pid_file = tmp_path / "pid"
    while not pid_file.exists() or not pid_file.read_text():
        assert job.poll() is None or ending == "kill-itself", job.stdout.read()
        time.sleep(0.05)
    rank = int(pid_file.read_text())
    assert rank != job.pid  # the rank is the server's child, not the client
    if ending == "sigterm-forwarded":
        job.send_signal(signal.SIGTERM)
        assert job.wait(timeout=120) == 7
    elif ending == "kill-itself":
        assert job.wait(timeout=120) == -signal.SIGKILL, job.stdout.read()
    else:
        job.kill()
        assert job.wait(timeout=120) == -signal.SIGKILL
        while running(rank):
            time.sleep(0.05)  # the server kills it when the connection drops; the session timeout guards a hang
    assert launch(warm, "rank", "code", tmp_path).returncode == 3  # the server carries on


def test_a_rank_needing_another_interpreter_start_runs_fresh(warm, tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    (tmp_path / "tmp").mkdir()
    client, env = warm.client(cli_env(PROBE_VALUE="seen", TMPDIR=str(tmp_path / "tmp"), PYTHONHASHSEED="7"))
    result = subprocess.run([*client, "-m", "probe", "code"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 3 and "preloaded False" in result.stderr  # started anew, as asked
    assert "env seen tmp True" in result.stdout
