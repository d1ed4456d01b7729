"""Bring-your-own songs: a folder of audio files (+ optional sidecar lyrics and tags) becomes a corpus manifest.

For `song.mp3` the sidecars are `song.txt` (lyrics, may carry [verse]/[chorus] headers) and `song.tags`
(comma-separated tags, or one per line). A file that cannot be read is reported and skipped; the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from heartmula.audio import load_audio, save_audio
from heartmula.data.card import write_data_card
from heartmula.data.corpus import split_of_work
from heartmula.errors import HeartMuLaError
from heartmula.files import atomic_output
from heartmula.manifest import MANIFEST_NAME, write_manifest

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".aiff", ".aif", ".wma", ".webm")
DEFAULT_LICENSE = "user-provided; license not stated (pass --license)"
_SPANISH_HINTS = re.compile(r"[ñ¿¡áéíóú]|\b(el|la|los|las|que|de|y|en|mi|tu|corazón|amor|por|para|con)\b")
_ENGLISH_HINTS = re.compile(r"\b(the|and|you|my|is|in|of|to|love|me|it|i|your|we)\b")


@dataclass(frozen=True)
class ImportConfig:
    folder: Path
    out_dir: Path
    sample_rate: int = 48000
    channels: int = 2
    license: str = DEFAULT_LICENSE
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    progress: bool = True


@dataclass
class ImportReport:
    rows: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)


def guess_language(lyrics: str) -> str | None:
    """The corpus language of a lyrics text from its script (and, for Latin text, common words)."""
    text = re.sub(r"\[[^\]]*\]", " ", lyrics).lower()
    counts = {
        "ko": len(re.findall(r"[\uac00-\ud7a3]", text)),
        "ja": len(re.findall(r"[\u3040-\u30ff]", text)),
        "zh": len(re.findall(r"[\u4e00-\u9fff]", text)),
        "latin": len(re.findall(r"[a-zñáéíóúü]", text)),
    }
    if not any(counts.values()):
        return None
    if counts["ko"] and counts["ko"] >= counts["ja"]:
        return "ko"
    if counts["ja"]:  # kana anywhere means Japanese, even when kanji dominate
        return "ja"
    if counts["zh"] >= counts["latin"]:
        return "zh"
    return "es" if len(_SPANISH_HINTS.findall(text)) > len(_ENGLISH_HINTS.findall(text)) else "en"


def read_sidecar(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise HeartMuLaError(f"{what} file {path.name} is not UTF-8 text") from None
    except OSError as exc:
        raise HeartMuLaError(f"cannot read {what} file {path.name}: {exc.strerror}") from None


def normalize_tag_text(text: str) -> str:
    tags = [t.strip().lower() for t in re.split(r"[,\n]", text) if t.strip()]
    return ",".join(dict.fromkeys(tags))


def item_id_for(relative: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", Path(relative).stem.lower()).strip("-")[:40] or "song"
    return f"{slug}-{hashlib.sha1(relative.encode()).hexdigest()[:8]}"


def find_audio_files(folder: Path, exclude: Path | None = None) -> list[Path]:
    files = []
    for path in sorted(folder.rglob("*")):
        if exclude is not None and exclude in path.parents:
            continue  # never import our own output when it sits inside the folder
        if path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES:
            files.append(path)
    return files


def import_one(config: ImportConfig, path: Path) -> dict:
    relative = path.relative_to(config.folder).as_posix()
    item_id = item_id_for(relative)
    record = config.out_dir / "items" / f"{item_id}.json"
    if record.is_file():
        return json.loads(record.read_text(encoding="utf-8"))
    lyrics_path, tags_path = path.with_suffix(".txt"), path.with_suffix(".tags")
    lyrics = read_sidecar(lyrics_path, "lyrics").strip() if lyrics_path.is_file() else ""
    tags = normalize_tag_text(read_sidecar(tags_path, "tags")) if tags_path.is_file() else ""
    audio, rate = load_audio(path, config.sample_rate, config.channels)
    audio_rel = f"audio/{item_id}.flac"
    save_audio(config.out_dir / audio_rel, audio, rate)
    row = {
        "id": item_id,
        "audio": audio_rel,
        "vocals": None,
        "lyrics": lyrics,
        "timing": [],
        "language": guess_language(lyrics) if lyrics else None,
        "tags": tags,
        "duration": round(audio.shape[1] / rate, 3),
        "sample_rate": rate,
        "source": {"corpus": "import", "work": relative, "title": path.stem},
        "license": config.license,
        "split": split_of_work(f"import:{relative}", config.val_fraction, config.test_fraction),
    }
    with atomic_output(record) as tmp:
        tmp.write_text(json.dumps(row, ensure_ascii=False, sort_keys=True), encoding="utf-8")
    return row


def import_folder(config: ImportConfig) -> ImportReport:
    """Import every audio file under `config.folder`; write the manifest, a report of skipped files, a data card."""
    from tqdm import tqdm

    folder = Path(config.folder)
    if not folder.is_dir():
        raise HeartMuLaError(f"{folder} is not a folder: pass the folder holding your songs")
    out = Path(config.out_dir)
    files = find_audio_files(folder, exclude=out.resolve() if out.resolve().is_relative_to(folder.resolve())
                             else None)
    if not files:
        raise HeartMuLaError(f"{folder} holds no audio files ({', '.join(AUDIO_SUFFIXES)})")
    (out / "items").mkdir(parents=True, exist_ok=True)
    report = ImportReport()
    for path in tqdm(files, desc="import", unit="file", disable=not config.progress):
        relative = path.relative_to(folder).as_posix()
        try:
            report.rows.append(import_one(config, path))
        except HeartMuLaError as exc:
            report.skipped.append((relative, str(exc)))
        except Exception as exc:  # a broken file must never stop the import of the others
            report.skipped.append((relative, f"{type(exc).__name__}: {exc}"))
    report.rows.sort(key=lambda r: r["id"])
    write_manifest(out / MANIFEST_NAME, report.rows)
    with atomic_output(out / "import-report.txt") as tmp:
        lines = [f"imported {len(report.rows)} of {len(files)} files from {folder}"]
        lines += [f"skipped {p}: {reason}" for p, reason in report.skipped]
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if report.rows:
        write_data_card(report.rows, out / "data-card.md", title=f"imported from {folder.name}")
    return report


def default_import_dir(folder: str | os.PathLike) -> Path:
    return Path(f"{Path(folder).resolve().name}-corpus")
