"""Errors a user can cause, and the one place that turns them into an exit code.

A `UserError` carries one sentence that says what is wrong and how to fix it.
Entry points wrap their work in `exit_on_user_error` so that such errors print
that sentence (no traceback) and exit non-zero, while real bugs still show a
full traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

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


def exit_on_user_error(func: F) -> F:
    """Print a `UserError` as one line on stderr and exit with code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)

    return wrapper  # type: ignore[return-value]
