"""Real recordings as HeartCLAP items: folders of audio files that all carry the same known tags.

A folder of game or album music says little per track, but some things hold for all of it: a folder of
instrumental music has no voice and no language in any track. A source is written `FOLDER` or
`FOLDER=tag,tag` (default tags: "instrumental"), or `deb:PACKAGE[=tag,tag]` for the audio files of an installed
Debian package (e.g. `deb:wesnoth-1.16-music`); its tracks become manifest-like rows whose `known` field names the
tag categories the source vouches for (e.g. vocal and language for "instrumental"), so that training and
evaluation score only those categories and leave the others unknown.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from heartmula.clap.prompts import normalise_tag, tag_categories
from heartmula.errors import HeartMuLaError

# Tracker modules (.xm, .mod, .it, .s3m) decode through ffmpeg (libopenmpt).
AUDIO_SUFFIXES = (".ogg", ".mp3", ".flac", ".wav", ".opus", ".m4a", ".xm", ".mod", ".it", ".s3m")
INSTRUMENTAL = "instrumental"


@dataclass(frozen=True)
class RealSource:
    name: str
    files: tuple[Path, ...]
    tags: tuple[str, ...] = (INSTRUMENTAL,)

    def known_categories(self) -> frozenset[str]:
        """Tag categories the source's tags settle: every category of its tags; "instrumental" settles the language
        too (no voice, no language)."""
        categories = {tag_categories().get(t, t) for t in self.tags}
        if INSTRUMENTAL in self.tags:
            categories.add("language")
        return frozenset(categories)


def parse_source(text: str) -> RealSource:
    """`FOLDER[=tag,tag]` or `deb:PACKAGE[=tag,tag]` -> a RealSource named after the folder or package."""
    where, _, tags = str(text).partition("=")
    tag_list = tuple(normalise_tag(t) for t in tags.split(",") if t.strip()) or (INSTRUMENTAL,)
    if where.startswith("deb:"):
        package = where[len("deb:") :]
        return RealSource(package, tuple(audio_files(package_files(package))), tag_list)
    path = Path(where).expanduser()
    if not path.is_dir():
        raise HeartMuLaError(f"real-music source {where!r} is not a folder; give FOLDER, FOLDER=tag,tag or "
                             "deb:PACKAGE")
    return RealSource(path.name, tuple(audio_files(sorted(path.rglob("*")))), tag_list)


def package_files(package: str) -> list[Path]:
    """The files an installed Debian package put on this machine (`dpkg-query -L`)."""
    if shutil.which("dpkg-query") is None:
        raise HeartMuLaError(f"deb:{package} needs dpkg-query (a Debian system); give a folder instead")
    listed = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True)
    if listed.returncode != 0:
        raise HeartMuLaError(f"Debian package {package} is not installed: apt-get install {package}")
    return [Path(line) for line in listed.stdout.splitlines() if line.strip()]


def audio_files(paths: list[Path]) -> list[Path]:
    """The audio files among `paths`, each once (links to a file already listed are left out)."""
    found: dict[Path, Path] = {}
    for path in paths:
        if path.suffix.lower() in AUDIO_SUFFIXES and path.is_file():
            found.setdefault(path.resolve(), path)
    return sorted(found.values())


def source_rows(source: RealSource, split: str = "train") -> list[dict]:
    """Manifest-like rows (id, audio, tags, known, source, split) for every audio file of a source."""
    rows = []
    for path in source.files:
        digest = hashlib.sha1(str(path.resolve()).encode("utf-8")).hexdigest()[:12]  # the feature cache's key
        rows.append({"id": f"real-{source.name}-{digest}", "audio": str(path), "tags": ",".join(source.tags),
                     "known": sorted(source.known_categories()), "lyrics": "", "source": source.name,
                     "split": split, "license": "", "duration": 0.0})
    if not rows:
        raise HeartMuLaError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) in real-music source {source.name}")
    return rows
