"""Errors a user can cause, and the one place that turns them into an exit code.

A `UserError` carries one sentence that says what is wrong and how to fix it.
Entry points wrap their work in `exit_on_user_error` so that such errors print
that sentence (no traceback) and exit non-zero, while real bugs still show a
full traceback.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

F = TypeVar("F", bound=Callable)
log = logging.getLogger(__name__)

EXIT_USER_ERROR = 2
# "Preempted, resumable": the run saved where it stopped and a rerun with the same run dir
# continues from there. Kubeflow's `restartPolicy: ExitCode` retries 128-255 and fails the job
# on 1-127 (bad input, exit 2, is not retried); its older releases retried only 130, 137, 143
# and 138, the code they reserved for user-defined retryable errors. So 138, in both.
EXIT_PREEMPTED = 138


class UserError(Exception):
    """Something the user can fix: a bad path, a missing column, a config mistake."""


class Preempted(Exception):
    """The job was told to stop (SIGTERM) and saved a resumable checkpoint: exit with
    EXIT_PREEMPTED. Raised on every rank at the same step, so no rank waits in a collective;
    the one that `announce`s (the chief) says where the run can resume from."""

    def __init__(self, message: str, announce: bool = True):
        super().__init__(message)
        self.announce = announce


def fail(message: str) -> NoReturn:
    """One sentence on stderr and exit code 2. SystemExit passes through Hydra's own handler,
    which would print a traceback for any exception (even one raised in a resolver)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    record_exit_code(EXIT_USER_ERROR)
    sys.exit(EXIT_USER_ERROR)


def record_exit_code(code: int) -> None:
    """Write `code` to $SENTIMENT_DIST_EXIT_FILE, when a launcher set it: horovodrun exits 1
    whatever its workers' codes were, so launch/horovodrun.sh reads the job's code from there."""
    path = os.environ.get("SENTIMENT_DIST_EXIT_FILE")
    if path:
        try:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(f"{code}\n")
        except OSError as err:
            log.warning("Cannot write the exit code to %s (%s).", path, err)


def exit_on_user_error(func: F) -> F:
    """Print a `UserError` as one line on stderr and exit with code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UserError as err:
            fail(str(err))

    return wrapper  # type: ignore[return-value]
