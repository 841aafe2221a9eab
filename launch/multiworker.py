#!/usr/bin/env python3
"""Start N MultiWorkerMirroredStrategy workers on this machine.

    python launch/multiworker.py -n 2 -- python -m sentiment_dist.train strategy=multiworker

Each worker gets a TF_CONFIG naming every worker's localhost port and its own
index; worker 0 is the chief. If any worker fails, the others are stopped
(a collective would otherwise wait for it forever) and the launcher exits
with that worker's code, naming the rank. A SIGTERM to the launcher goes to
every worker (they save where they are and exit with 138, "preempted"); a
worker that exits with 138 is not a failure: the others are stopping at the
same step, and the launcher waits for them and exits with 138 too. Standard
library only.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
EXIT_PREEMPTED = 138  # sentiment_dist.runtime.errors: saved, rerun with the same run dir to resume
PREEMPTED_GRACE = 120  # seconds the other workers get to finish saving and exit on their own


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def die_with_parent() -> None:
    """In each worker: get SIGKILL if the launcher dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def stop(processes: list[subprocess.Popen], grace: float = 30) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.time() + grace
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--num-workers", type=int, default=2)
    parser.add_argument("--base-port", type=int, default=0, help="first port (default: any free ports)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the training command")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or args.num_workers < 1:
        parser.error("give -n N >= 1 and a command after --")
    ports = [args.base_port + i for i in range(args.num_workers)] if args.base_port else free_ports(args.num_workers)
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    processes = []
    for index in range(args.num_workers):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        processes.append(subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=die_with_parent))
    # A preemption notice for the job: every worker gets it (each has its own session).
    signal.signal(signal.SIGTERM, lambda *_: [os.killpg(p.pid, signal.SIGTERM) for p in processes if p.poll() is None])
    try:
        while True:
            codes = [process.poll() for process in processes]
            if EXIT_PREEMPTED in codes:
                rank = codes.index(EXIT_PREEMPTED)
                deadline = time.time() + PREEMPTED_GRACE
                while any(process.poll() is None for process in processes) and time.time() < deadline:
                    time.sleep(0.2)
                stop(processes)
                print(f"multiworker: worker {rank} was preempted (exit code {EXIT_PREEMPTED}); the job saved where it "
                      "stopped: rerun it with the same hydra.run.dir to continue.", file=sys.stderr)
                return EXIT_PREEMPTED
            failed = [(rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                rank, code = failed[0]
                print(f"multiworker: worker {rank} failed with exit code {code}; stopping the others.", file=sys.stderr)
                stop(processes)
                return code if code > 0 else 1
            if all(code == 0 for code in codes):
                return 0
            time.sleep(0.2)
    except KeyboardInterrupt:
        stop(processes)
        return 130


if __name__ == "__main__":
    sys.exit(main())
