"""File helpers: atomic output (a crash or Ctrl-C never leaves a half-written result under the final name) and
reading a codes file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from heartmula.errors import HeartMuLaError


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    # Keep the real suffix last so writers that infer the format from the name (soundfile, numpy) still work.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".part{final.suffix}", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates the file private (0600); give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_codes(path: Path):
    """The integer array of a .npy codes file (never unpickled), or a HeartMuLaError naming the file."""
    import numpy as np

    if not path.is_file():
        raise HeartMuLaError(f"codes file {path} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise HeartMuLaError(f"{path} is not a .npy array of codes ({exc})") from None
