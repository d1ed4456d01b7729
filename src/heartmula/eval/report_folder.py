"""The report's output folder: built under a hidden temporary name and renamed onto --out only when complete."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from heartmula.errors import HeartMuLaError


# --- the output folder ---------------------------------------------------------------------------------------------
def check_out(out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise HeartMuLaError(f"--out {out} is a file; give a folder for the report")
        if any(out.iterdir()) and not (out / "report.json").is_file():
            raise HeartMuLaError(f"--out {out} is a non-empty folder that holds no report; give a new or empty "
                                 "folder (a previous report folder is replaced when the new report is complete)")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def publish(tmp: Path, out: Path) -> None:
    """Rename the finished temporary folder onto `out`, replacing an old report only now."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- the run -------------------------------------------------------------------------------------------------------
