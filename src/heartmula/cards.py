"""Model cards: the Hugging Face YAML header at the top of a model folder's card (MODEL_CARD.md in the embedded
defaults, README.md in a folder downloaded from the hub).

Read without a YAML library: top-level `key: value` scalars and `- item` lists, which is all the licence fields
use; nested mappings are skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

CARD_FILES = ("MODEL_CARD.md", "README.md")
DEFAULTS_DIR = Path(__file__).resolve().parent / "defaults"
DEFAULT_MODEL_DIRS = {"lm": DEFAULTS_DIR / "lm", "codec": DEFAULTS_DIR / "codec", "clap": DEFAULTS_DIR / "clap"}
CODE_LICENSE = "Apache-2.0"


def _scalar(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        inner = text[1:-1]
        return inner.replace('\\"', '"').replace("\\\\", "\\") if text[0] == '"' else inner.replace("''", "'")
    return text


def parse_front_matter(text: str) -> dict[str, str | list[str]]:
    """The header between a first line `---` and the next `---`; {} when the text has none."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    meta: dict[str, str | list[str]] = {}
    key = None
    for line in lines[1:]:
        stripped = line.strip()
        if stripped == "---":
            return meta
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("- ") and key is not None:
            items = meta[key] if isinstance(meta.get(key), list) else []
            meta[key] = [*items, _scalar(stripped[2:])]
        elif not line[0].isspace() and ":" in line:
            key, _, value = line.partition(":")
            key = key.strip()
            meta[key] = _scalar(value) if value.strip() else []
    return {}  # never closed: not a header


def card_metadata(folder: str | os.PathLike) -> dict[str, str | list[str]]:
    for name in CARD_FILES:
        path = Path(folder) / name
        if path.is_file():
            return parse_front_matter(path.read_text(encoding="utf-8"))
    return {}


def license_line(folder: str | os.PathLike) -> str | None:
    """The licence a model folder's card declares, e.g. "apache-2.0" or "other: NAME (terms: PATH)"; None when
    the folder has no card header naming one."""
    meta = card_metadata(folder)
    license = meta.get("license")
    if not isinstance(license, str) or not license:
        return None
    if license != "other":
        return license
    name = meta.get("license_name") or "unnamed licence"
    link = meta.get("license_link")
    if not isinstance(link, str) or not link:
        return f"other: {name}"
    local = Path(folder) / link
    return f"other: {name} (terms: {local if local.is_file() else link})"


def default_license_lines() -> dict[str, str]:
    """The licence of each embedded default model that is installed."""
    lines = {}
    for name, folder in DEFAULT_MODEL_DIRS.items():
        line = license_line(folder)
        if line is not None:
            lines[name] = line
    return lines
