"""The corpus manifest: one JSON object per line (JSONL), the format every trainer reads.

Row fields (all present on every row):
  id            unique item id
  audio         FLAC path of the mix, relative to the manifest's folder
  vocals        FLAC path of the vocal-only stem, or null
  lyrics        full lyrics with [section] headers; "" for an instrumental
  timing        list of sung lines: {section, text, start, end, syllables: [{text, start, end}]} (seconds)
  language      en / zh / ja / ko / es, or null
  tags          comma-separated style tags (upstream style): genre, instruments, mood, tempo, vocal, language, key
  duration      seconds
  sample_rate   Hz
  source        {corpus, collection, work, title} for rendered items; {corpus: "import", work: relative path}
  license       license of the item's sources, in words
  split         train / val / test (decided by source work: a work never spans two splits)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from heartmula.errors import HeartMuLaError
from heartmula.files import atomic_output

REQUIRED_FIELDS = ("id", "audio", "vocals", "lyrics", "timing", "language", "tags", "duration", "sample_rate",
                   "source", "license", "split")
SPLITS = ("train", "val", "test")
MANIFEST_NAME = "manifest.jsonl"


def manifest_path(path: str | os.PathLike) -> Path:
    """Accept the manifest file or the corpus folder holding it."""
    path = Path(path)
    return path / MANIFEST_NAME if path.is_dir() else path


def read_manifest(path: str | os.PathLike, split: str | None = None, absolute_paths: bool = True) -> list[dict]:
    """Rows of a manifest (optionally one split). Audio paths become absolute unless `absolute_paths` is False."""
    path = manifest_path(path)
    if not path.is_file():
        raise HeartMuLaError(f"no manifest at {path}: build one with `heartmula data build` or `heartmula data import`")
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise HeartMuLaError(f"{path} line {number} is not JSON ({exc.msg}); rebuild the manifest") from None
            missing = [k for k in REQUIRED_FIELDS if k not in row]
            if missing:
                raise HeartMuLaError(f"{path} line {number} lacks {', '.join(missing)}; rebuild the manifest")
            if split is not None and row["split"] != split:
                continue
            if absolute_paths:
                for key in ("audio", "vocals"):
                    if row[key]:
                        row[key] = str((path.parent / row[key]).resolve())
            rows.append(row)
    return rows


def write_manifest(path: str | os.PathLike, rows: list[dict]) -> Path:
    path = Path(path)
    with atomic_output(path) as tmp:
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    return path


def parse_tags(tags: str) -> list[str]:
    return [t.strip() for t in tags.split(",") if t.strip()]


def parse_lyrics_sections(lyrics: str) -> list[tuple[str, list[str]]]:
    """[(section name, lines)] from lyrics with [section] headers; text before any header is section ''."""
    sections: list[tuple[str, list[str]]] = []
    for raw in lyrics.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            sections.append((line[1:-1].strip().lower(), []))
        else:
            if not sections:
                sections.append(("", []))
            sections[-1][1].append(line)
    return sections
