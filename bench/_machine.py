"""What a benchmark ran on: the CPU model matters here, since machines of one cloud instance kind may carry CPU models
of different speed (`platform.processor()` only says the architecture on Linux)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    return {"cpu_model": cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform()}
