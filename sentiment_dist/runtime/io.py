"""Atomic file writes: a crash mid-write never leaves a file a later load trips over."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call `write(temp_path)` then rename the result onto `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    name = os.path.basename(path)
    suffix = "." + name.split(".", 1)[1] if "." in name else ""  # Keras insists on `.weights.h5`
    fd, temp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        write(temp)
        os.chmod(temp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    def write(temp: str) -> None:
        with open(temp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    atomic_write(path, write)


def atomic_write_json(path: str, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
