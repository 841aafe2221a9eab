"""Atomic file writes: a crash mid-write never leaves a file a later load trips over."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

from sentiment_dist.runtime.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call `write(temp_path)` then rename the result onto `path`.

    A full or read-only disk is the user's to fix: it ends in one sentence
    (`UserError`), and the file is either whole or absent."""
    directory = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    suffix = "." + name.split(".", 1)[1] if "." in name else ""  # Keras insists on `.weights.h5`
    temp = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
        os.close(fd)
        write(temp)
        os.chmod(temp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files
        os.replace(temp, path)
    except BaseException as err:
        if temp and os.path.exists(temp):
            os.remove(temp)
        reason = disk_error(err)
        if reason:
            raise UserError(f"cannot write {path} ({reason}); {remedy(reason)} or point paths.log_dir at another, then "
                            "rerun: a run resumes from its last checkpoint.") from None
        raise


_FULL = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded", errno.EFBIG: "File too large"}
_REFUSED = (errno.EROFS, errno.EACCES, errno.EPERM)
_FILE_IN_THE_WAY = "a file stands where a directory must be"


def disk_error(err: BaseException) -> str | None:
    """The reason when `err` (or what caused it: h5py and Keras wrap it) is the location's fault,
    not a bug: a full disk, a read-only one or no permission, or a file where a directory must be
    (makedirs raises EEXIST for it, opening a path through it ENOTDIR)."""
    while err is not None:
        if isinstance(err, OSError):
            if err.errno in _FULL or err.errno in _REFUSED:
                return err.strerror or str(err)
            if err.errno in (errno.ENOTDIR, errno.EEXIST):
                return _FILE_IN_THE_WAY
        for reason in (*_FULL.values(), "Read-only file system", "Permission denied"):
            if reason in str(err):  # TensorFlow's errors carry the reason in their text only
                return reason
        err = err.__cause__ or err.__context__
    return None


def remedy(reason: str) -> str:
    """What the user can do about `reason` (from disk_error), to start a sentence's advice."""
    if reason in _FULL.values():
        return "free space on that disk"
    if reason == _FILE_IN_THE_WAY:
        return "move the file out of the way"
    return "make that location writable"


def first_missing(path: str) -> str | None:
    """The outermost directory of `path` that does not exist yet (None: `path` exists): what to
    remove when making `path` fails half-way."""
    missing, current = None, os.path.abspath(path)
    while not os.path.lexists(current):
        missing, current = current, os.path.dirname(current)
    return missing


def atomic_write_text(path: str, text: str) -> None:
    def write(temp: str) -> None:
        with open(temp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    atomic_write(path, write)


def atomic_write_json(path: str, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=jsonable) + "\n")


def jsonable(value: Any) -> Any:
    """numpy values as the plain ones JSON writes (`json.dumps(..., default=jsonable)`)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def first_difference(mine: Any, theirs: Any, prefix: str) -> tuple[str, Any, Any]:
    """(dotted key, mine, theirs) of the first place two nested configs differ (they must differ)."""
    if isinstance(mine, dict) and isinstance(theirs, dict):
        for key in sorted(set(mine) | set(theirs)):
            if mine.get(key) != theirs.get(key):
                return first_difference(mine.get(key), theirs.get(key), f"{prefix}.{key}")
    return prefix, mine, theirs
