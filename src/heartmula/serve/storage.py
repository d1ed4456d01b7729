"""Storage failures named by their cause (disk full, read-only, I/O error), for the job store and the worker.

A failed write is a server problem, not a user error: the API answers 503 with the cause, the worker fails the job
with it, and /api/health reports it until writes work again.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from pathlib import Path

DISK_FULL = "disk full"
READ_ONLY = "read-only"
IO_ERROR = "I/O error"
BUSY = "database busy"
MIN_FREE_BYTES = 1 << 20  # below this, a write failure without an errno is put down to a full disk

_ERRNO_CAUSES = {
    errno.ENOSPC: DISK_FULL, errno.EDQUOT: DISK_FULL, errno.EFBIG: DISK_FULL,
    errno.EROFS: READ_ONLY, errno.EACCES: READ_ONLY, errno.EPERM: READ_ONLY, errno.EIO: IO_ERROR,
}
_SQLITE_CAUSES = (  # message fragments of sqlite3.OperationalError and the cause each names
    ("disk is full", DISK_FULL), ("readonly", READ_ONLY), ("read-only", READ_ONLY), ("disk i/o", IO_ERROR),
    ("unable to open", READ_ONLY), ("locked", BUSY), ("busy", BUSY),
)


class StorageError(Exception):
    """The data folder or the job database cannot be written; `cause` is one of the constants above."""

    def __init__(self, cause: str, what: str):
        super().__init__(f"{what}: {cause}")
        self.cause = cause


def storage_cause(exc: BaseException, folder: str | os.PathLike | None = None) -> str | None:
    """The storage problem behind `exc`, or None when it is not one.

    Writers that lose the errno (libsndfile reports "System error") are explained by probing `folder`: too little
    free space is a full disk, a folder that refuses a new file is read-only."""
    if isinstance(exc, StorageError):
        return exc.cause
    if isinstance(exc, OSError) and exc.errno in _ERRNO_CAUSES:
        return _ERRNO_CAUSES[exc.errno]
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return next((cause for fragment, cause in _SQLITE_CAUSES if fragment in text), None)
    if folder is not None and (isinstance(exc, OSError) or type(exc).__name__ == "LibsndfileError"):
        return probe_folder(Path(folder))
    return None


def probe_folder(folder: Path) -> str | None:
    """DISK_FULL or READ_ONLY when `folder` (or its nearest existing parent) cannot take a small new file."""
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    try:
        if shutil.disk_usage(folder).free < MIN_FREE_BYTES:
            return DISK_FULL
        probe = folder / ".write-probe"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as exc:
        return _ERRNO_CAUSES.get(exc.errno, IO_ERROR)
    return None


def as_storage_error(exc: BaseException, what: str, folder: str | os.PathLike | None = None) -> StorageError | None:
    cause = storage_cause(exc, folder)
    return None if cause is None else StorageError(cause, what)
