"""Optional features and the pip extras that install them (`[project.optional-dependencies]` in pyproject.toml).

The core install (`pip install heartmula`) runs generate, encode, decode and stream with the embedded models. Every
other feature needs an extra; its packages are imported through `optional_import` or checked with `require`, so
that a missing one ends in a HeartMuLaError naming the extra instead of an ImportError traceback.

    faster_whisper = optional_import("faster_whisper", "transcribe")
    require("serve", "fastapi", "uvicorn", feature="heartmula serve")
"""

from __future__ import annotations

import importlib
from types import ModuleType

from heartmula.errors import HeartMuLaError

# extra -> what it makes work (the subject of the error message when no feature is named)
EXTRAS = {
    "transcribe": "lyrics transcription",
    "clap": "HeartCLAP text embeddings (search and tagging by text)",
    "serve": "the web server",
    "data": "the corpus builder",
    "eval": "the evaluation recipes",
    "train": "training (LoRA and preference tuning included)",
    "play": "playback through a sound device",
    "scale": "running beyond one machine (Ray batch generation, the Qdrant and PostgreSQL library indexes)",
}


def missing_extra_message(extra: str, feature: str | None = None, reason: str = "") -> str:
    """'<feature> needs the '<extra>' extra: pip install 'heartmula[<extra>]'' (+ the import error, if any)."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; known: {', '.join(EXTRAS)}")
    message = f"{feature or EXTRAS[extra]} needs the '{extra}' extra: pip install 'heartmula[{extra}]'"
    return f"{message} ({reason})" if reason else message


def optional_import(module: str, extra: str, feature: str | None = None) -> ModuleType:
    """`importlib.import_module(module)`; a HeartMuLaError naming `extra` when it cannot be imported."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise HeartMuLaError(missing_extra_message(extra, feature, str(exc))) from None


def require(extra: str, *modules: str, feature: str | None = None) -> None:
    """Import each of `modules` (top-level names), failing with the extra's name at the first one missing. Called
    where a command starts, so that it fails before loading models or reading inputs."""
    for module in modules:
        optional_import(module, extra, feature)


__all__ = ["EXTRAS", "missing_extra_message", "optional_import", "require"]
