"""`python -m sentiment_dist.<task>` without paying for the import of TensorFlow each time.

Importing TensorFlow, Keras, Horovod, Hydra, pandas and matplotlib costs 3.5-7 s of CPU (by
machine), and the suite runs about 150 CLI jobs and about 70 ranks of 2-process jobs. Each xdist
worker keeps one server: a Python that has imported those libraries, and nothing of
sentiment_dist beyond its package `__init__`. For each job it forks a child that becomes what
`python -m sentiment_dist.<task> args...` would be: the job's working directory, environment, argv and
`sys.path[0]`; its stdin, stdout and stderr; freshly seeded `random` and `numpy.random`; no cached
temporary directory. The task module and everything it imports of sentiment_dist then run in the
child, fresh, as in a new interpreter; the child exits through the interpreter's own sequence
(wait for threads, atexit, flush) with the exit code Python would give. Set
SENTIMENT_DIST_TEST_FRESH=1 to run every job in a new interpreter.

Two ways in:
- A CLI job the test runs itself (`WarmPython.run`): one JSON request per line on the server's
  stdin, with files for stdout and stderr; the server answers with the child's pid, then with its
  wait status, on its stdout.
- A rank that horovodrun or launch/multiworker.py starts, or a job the test signals: the test puts
  tests/warm_rank.py in the command in front of `-m sentiment_dist.<task>` (`warm_ranks`). That
  small client sends its request and its own stdin, stdout and stderr to the server's Unix socket,
  forwards the signals it gets to the child and ends as the child ended, so the launcher sees the
  exit code or signal it would have seen. A child whose client dies (SIGKILL) is killed by the
  server.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# Environment variables read when the interpreter or TensorFlow starts, not when a job runs: a job
# given other values than the server started with (a sitecustomize on PYTHONPATH, another oneDNN
# setting) needs a new interpreter.
_READ_AT_START = ("PYTHON", "TF_", "KERAS_", "LD_", "OMP_", "MKL_", "OPENBLAS_", "MALLOC_")
_READ_WHEN_USED = {"PYTHONUNBUFFERED", "TF_CONFIG", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS",
                   "PYTHON"}  # the last: the interpreter launch/horovodrun.sh runs, not a Python setting


def _read_at_start(env: dict) -> dict:
    return {k: v for k, v in env.items() if k.startswith(_READ_AT_START) and k not in _READ_WHEN_USED}


class WarmPython:
    """One server per test process, started at its first job, stopped at exit."""

    def __init__(self) -> None:
        self._server: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._scratch = ""
        self._socket = ""
        self._buffer = b""  # the server's answers read but not yet taken

    def serves(self, env: dict) -> bool:
        """Whether a job in `env` starts as it would in a new interpreter (see _READ_AT_START)."""
        return _read_at_start(env) == _read_at_start(self._server_env())

    @staticmethod
    def _server_env() -> dict:
        return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}

    def _start(self) -> subprocess.Popen:
        if self._server is None or self._server.poll() is not None:
            env = self._server_env()
            self._scratch = self._scratch or tempfile.mkdtemp(prefix="warm-python-")
            self._socket = os.path.join(self._scratch, f"ranks-{len(os.listdir(self._scratch))}.sock")
            with open(os.path.join(self._scratch, "server.log"), "ab") as log:
                self._server = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), self._socket],
                                                cwd=self._scratch, env=env, stdin=subprocess.PIPE,
                                                stdout=subprocess.PIPE, stderr=log, bufsize=0)
            self._buffer = b""
            self._answer()  # {"listening": ...}: the imports are done, and ranks can connect
        return self._server

    def warm_ranks(self, command: list[str], env: dict) -> tuple[list[str], dict]:
        """`command` (a horovodrun or launch/multiworker.py launch, or a job the test signals) and
        `env`, changed so that the `python -m sentiment_dist.<task>` it runs is forked from this
        server; unchanged if it runs none. One whose environment differs in start-up variables
        runs fresh."""
        for at in range(len(command) - 2):
            if command[at:at + 2] == [sys.executable, "-m"] and command[at + 2].startswith("sentiment_dist."):
                client, env = self.client(env)
                return [*command[:at], *client, *command[at + 1:]], env
        return command, env

    def client(self, env: dict) -> tuple[list[str], dict]:
        """What runs `-m <module> args...` forked from this server (tests/warm_rank.py), and its `env`."""
        with self._lock:
            self._start()
        return [sys.executable, "-I", str(Path(__file__).with_name("warm_rank.py"))], {
            **env, "SENTIMENT_DIST_WARM_SOCKET": self._socket}

    def _answer(self, timeout: float | None = None) -> dict | None:
        """The server's next answer, or None if none came in `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self._server.stdout], [], [], left)[0]:
                return None
            chunk = os.read(self._server.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError("the warm Python server died; rerun with SENTIMENT_DIST_TEST_FRESH=1 to compare")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def run(self, module: str, argv: list[str], cwd, env: dict, timeout: float) -> subprocess.CompletedProcess:
        """What `subprocess.run([python, "-m", module, *argv], ...)` with captured output returns."""
        args = [sys.executable, "-m", module, *argv]
        with self._lock:
            server = self._start()
            fd, out = tempfile.mkstemp(dir=self._scratch)
            os.close(fd)
            err = out + ".err"
            request = {"module": module, "argv": argv, "cwd": str(cwd), "env": env, "stdout": out, "stderr": err}
            message = memoryview((json.dumps(request) + "\n").encode())
            while message:
                message = message[os.write(server.stdin.fileno(), message):]
            pid = self._answer()["pid"]
            answer = self._answer(timeout)
            if answer is None:
                os.kill(pid, signal.SIGKILL)  # still unreaped: the server waits for it
                self._answer()
            stdout, stderr = Path(out).read_text(errors="replace"), Path(err).read_text(errors="replace")
            os.unlink(out)
            os.unlink(err)
        if answer is None:
            raise subprocess.TimeoutExpired(args, timeout, stdout, stderr)
        return subprocess.CompletedProcess(args, os.waitstatus_to_exitcode(answer["status"]), stdout, stderr)

    def close(self) -> None:
        if self._server is not None and self._server.poll() is None:
            self._server.stdin.close()
            self._server.wait(timeout=30)
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)


# -- the server ----------------------------------------------------------------------------------


def _become(request: dict, stdio: tuple[int, ...]) -> int:
    """In the forked child: be `python -m <module> <argv>` with `stdio` as fds 0-2, and return its
    exit code."""
    import atexit
    import io
    import random
    import runpy
    import traceback

    import numpy as np

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)
    for fd in set(stdio) - {0, 1, 2}:
        os.close(fd)
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True, write_through=unbuffered)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), errors="backslashreplace", line_buffering=True)
    sys.path[0] = os.getcwd()  # what `python -m` puts first (here: this file's directory, tests/)
    tempfile.tempdir = None  # TMPDIR is the job's
    random.seed()
    np.random.seed()
    sys.argv = [request["module"], *request["argv"]]
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:
        code = _exit_code(stop.code)
    except BaseException:
        traceback.print_exc()
        code = 1
    threading._shutdown()  # the interpreter's own exit sequence: threads, atexit, flush
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    return code


def _exit_code(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _files(request: dict) -> tuple[int, ...]:
    """A CLI job's stdio: no input, its output to the files the test reads."""
    opened = [os.open(os.devnull, os.O_RDONLY)]
    for path in (request["stdout"], request["stderr"]):
        opened.append(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
    return tuple(opened)


def _receive(connection: socket.socket) -> tuple[dict, list[int]]:
    """A rank client's request (a length-prefixed JSON) and its stdin, stdout and stderr."""
    connection.settimeout(30)  # the client sends it all at once, right after connecting
    data, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
    try:
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
            chunk = connection.recv(1 << 20)
            if not chunk:
                raise ConnectionError("the client left before sending its whole request")
            data += chunk
        if len(fds) != 3:
            raise ValueError(f"{len(fds)} standard streams came with it, not 3")
        connection.settimeout(None)
        return json.loads(data[4:]), fds
    except (OSError, ValueError):
        for fd in fds:
            os.close(fd)
        raise


def _say(answer: dict) -> None:
    os.write(1, (json.dumps(answer) + "\n").encode())


def _send(connection: socket.socket, answer: dict) -> None:
    """To a rank client; one that is gone (killed by its launcher) is noticed by the loop, not here."""
    try:
        connection.sendall((json.dumps(answer) + "\n").encode())
    except OSError:
        pass


def _gone(connection: socket.socket) -> bool:
    """Whether a client whose connection became readable has gone: it sends nothing after its request."""
    try:
        return not connection.recv(1)
    except OSError:
        return True


def serve(socket_path: str) -> None:
    import importlib

    at_start = _read_at_start(dict(os.environ))  # before sentiment_dist sets its defaults
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(64)
    # sentiment_dist first: it keeps Keras from importing the libraries it never uses here.
    for name in ("sentiment_dist", "tensorflow", "keras", "hydra", "omegaconf", "numpy", "pandas", "horovod.tensorflow"):
        try:
            importlib.import_module(name)
        except ImportError:  # Horovod not built: its jobs fail on their own, with the message set-up gives
            pass
    # Every run dir gets plots, on the file-only backend the jobs choose (jobs/plots.py): about
    # 0.5 s of imports that each job would pay again.
    import matplotlib

    matplotlib.use("Agg")
    importlib.import_module("matplotlib.pyplot")
    _say({"listening": socket_path})

    # pid -> "stdin" for a CLI job; for a rank, its client's connection (None once the client is gone)
    jobs: dict[int, socket.socket | str | None] = {}
    pending = b""
    stdin_open = True

    def fork(request: dict, stdio: tuple[int, ...], connection: socket.socket | None = None) -> int:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for held in (listener, connection, *jobs.values()):
                    if isinstance(held, socket.socket):
                        held.close()
                code = _become(request, stdio)
            finally:
                os._exit(code)  # never back into this loop
        for fd in stdio:
            os.close(fd)
        return pid

    while stdin_open or jobs:
        clients = {job.fileno(): (pid, job) for pid, job in jobs.items() if isinstance(job, socket.socket)}
        ready = select.select([*([0] if stdin_open else []), listener, *clients], [], [], 0.05)[0]
        if 0 in ready:
            chunk = os.read(0, 65536)
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                pid = fork(request, _files(request))
                jobs[pid] = "stdin"
                _say({"pid": pid})
            if not chunk:  # the test process is done: nothing waits for what is still running
                stdin_open = False
                for pid in jobs:
                    os.kill(pid, signal.SIGKILL)
        if listener in ready:
            connection, _ = listener.accept()
            try:
                request, fds = _receive(connection)
            except (OSError, ValueError) as error:  # the client then stops, saying the server went away
                print(f"warm_python: a client's request was unreadable: {error}", file=sys.stderr)
                connection.close()
            else:
                if _read_at_start(request["env"]) != at_start:
                    for fd in fds:
                        os.close(fd)
                    _send(connection, {"fresh": "its start-up environment differs from this server's"})
                    connection.close()
                else:
                    pid = fork(request, tuple(fds), connection)
                    jobs[pid] = connection
                    _send(connection, {"pid": pid})
        for fd, (pid, connection) in clients.items():
            if fd in ready and _gone(connection):
                os.kill(pid, signal.SIGKILL)
                connection.close()
                jobs[pid] = None
        while jobs:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if not pid:
                break
            job = jobs.pop(pid, None)
            if job == "stdin":
                _say({"status": status})
            elif isinstance(job, socket.socket):
                _send(job, {"status": status})
                job.close()
    listener.close()


if __name__ == "__main__":
    serve(sys.argv[1])
