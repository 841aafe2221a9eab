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


class UserError(Exception):
    """Something the user can fix: a bad path, a missing column, a config mistake."""


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
