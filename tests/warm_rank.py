"""A rank of a 2-process job (or a job a test signals), forked from the warm Python (tests/warm_python.py).

    python -I tests/warm_rank.py -m sentiment_dist.<task> args...

horovodrun or launch/multiworker.py starts this instead of `python -m sentiment_dist.<task>`
(`WarmPython.warm_ranks` puts it in the command). It sends its argv, directory, environment and
its own stdin, stdout and stderr to the server at $SENTIMENT_DIST_WARM_SOCKET, which forks the
rank; it forwards the signals it gets (a launcher's SIGTERM, SIGINT) to that rank and ends as the
rank ended: with the same exit code, or killed by the same signal. If it is killed itself
(SIGKILL), the server sees its connection close and kills the rank. With no server to reach, or
one that cannot serve this environment, it becomes `python -m ...` itself. Standard library only:
it starts in milliseconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def become_fresh(argv: list[str]) -> None:
    os.execv(sys.executable, [sys.executable, *argv])


def main() -> None:
    argv = sys.argv[1:]
    path = os.environ.get("SENTIMENT_DIST_WARM_SOCKET", "")
    if argv[:1] != ["-m"] or len(argv) < 2 or not path:
        become_fresh(argv)
    rank: list[int] = []
    early: list[int] = []  # signals that came before the rank's pid did: forwarded once it is known

    def forward(signum, _frame) -> None:
        if rank:
            os.kill(rank[0], signum)
        else:
            early.append(signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(path)
    except OSError:
        connection.close()
        become_fresh(argv)
    request = json.dumps({"module": argv[1], "argv": argv[2:], "cwd": os.getcwd(), "env": dict(os.environ)})
    message = len(request.encode()).to_bytes(4, "big") + request.encode()
    sent = socket.send_fds(connection, [message], [0, 1, 2])
    if sent < len(message):  # not an empty send: the server may already have answered and closed
        connection.sendall(message[sent:])
    answers = connection.makefile("rb")
    answer = json.loads(answers.readline() or b"{}")
    if "fresh" in answer:
        connection.close()
        become_fresh(argv)
    if "pid" not in answer:
        sys.exit("warm_rank: the warm Python server went away before it started the job")
    rank.append(answer["pid"])
    for signum in early:
        os.kill(rank[0], signum)
    line = answers.readline()  # the job's wait status, when it ends
    if not line:
        sys.exit("warm_rank: the warm Python server went away while the job ran")
    status = json.loads(line)["status"]
    if os.WIFSIGNALED(status):
        if os.WTERMSIG(status) in FORWARDED:
            signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
        os.kill(os.getpid(), os.WTERMSIG(status))
    sys.exit(os.waitstatus_to_exitcode(status) & 0xFF if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


if __name__ == "__main__":
    main()
