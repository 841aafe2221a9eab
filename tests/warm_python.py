"""`python -m sentiment_dist.<task>` without paying for the import of TensorFlow each time.

Importing TensorFlow, Keras, Hydra and pandas costs about 3.5 s of CPU, and the suite runs about
140 CLI jobs directly (the ranks that horovodrun and the multi-worker launcher start are not
among them: those are always fresh interpreters). Each xdist worker keeps one server: a Python that
has imported those libraries, and nothing of sentiment_dist beyond its package `__init__`. For each
job it forks a child that becomes what `python -m sentiment_dist.<task> args...` would be: the
test's working directory, environment, argv and `sys.path[0]`; stdout and stderr to files;
freshly seeded `random` and `numpy.random`; no cached temporary directory. The task module and
everything it imports of sentiment_dist then run in the child, fresh, as in a new interpreter;
the child exits through the interpreter's own sequence (wait for threads, atexit, flush) with the
exit code Python would give. Set SENTIMENT_DIST_TEST_FRESH=1 to run every job in a new interpreter.

Protocol: one JSON request per line on the server's stdin; it answers with the child's pid, then
with its wait status, on its stdout.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
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
_READ_WHEN_USED = {"PYTHONUNBUFFERED", "TF_CONFIG", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"}


def _read_at_start(env: dict) -> dict:
    return {k: v for k, v in env.items() if k.startswith(_READ_AT_START) and k not in _READ_WHEN_USED}


class WarmPython:
    """One server per test process, started at its first job, stopped at exit."""

    def __init__(self) -> None:
        self._server: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._scratch = ""
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
            with open(os.path.join(self._scratch, "server.log"), "ab") as log:
                self._server = subprocess.Popen([sys.executable, str(Path(__file__).resolve())], cwd=self._scratch,
                                                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                                bufsize=0)
            self._buffer = b""
        return self._server

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


def _become(request: dict) -> int:
    """In the forked child: be `python -m <module> <argv>` and return its exit code."""
    import atexit
    import io
    import random
    import runpy
    import traceback

    import numpy as np

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True, write_through=unbuffered)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), errors="backslashreplace", line_buffering=True)
    sys.path[0] = os.getcwd()  # what `python -m` puts first (here: this file's directory, tests/)
    tempfile.tempdir = None  # TMPDIR is the test's
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


def serve() -> None:
    import importlib

    # sentiment_dist first: it keeps Keras from importing the libraries it never uses here.
    for name in ("sentiment_dist", "tensorflow", "keras", "hydra", "omegaconf", "numpy", "pandas"):
        importlib.import_module(name)

    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _become(request)
            finally:
                os._exit(code)  # never back into this loop
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"status": status}), flush=True)


if __name__ == "__main__":
    serve()
