"""What a library index holds and returns, in both backends (heartmula.clap.index, heartmula.clap.qdrant_index)."""

from __future__ import annotations

from dataclasses import dataclass

FORMAT_VERSION = "heartclap-index-1"


@dataclass
class Track:
    path: str
    title: str = ""
    tags: str = ""
    duration: float | None = None
    size: int | None = None
    mtime: float | None = None
    row: int | None = None


@dataclass
class Hit:
    score: float
    track: Track
