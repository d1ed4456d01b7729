"""Shared by the lyric-intelligibility benches: which sung corpus songs to test, and their lyric scoring unit."""

from __future__ import annotations

import argparse
from pathlib import Path

from heartmula.manifest import read_manifest


def song_arguments(parser: argparse.ArgumentParser, songs: int, results: Path) -> None:
    parser.add_argument("corpus", type=Path, help="corpus folder (manifest.jsonl inside) or the manifest itself")
    parser.add_argument("--language", default="en")
    parser.add_argument("--songs", type=int, default=songs, help="the first N sung items of the language")
    parser.add_argument("--seconds", type=float, default=30.0, help="window at the start of each song")
    parser.add_argument("--splits", default="train,val,test", help="manifest splits to draw from (val,test: songs "
                        "no default model was trained on)")
    parser.add_argument("--out", type=Path, default=results)


def sung_rows(args: argparse.Namespace) -> tuple[Path, list[dict]]:
    """The manifest path and its first `args.songs` rows sung in `args.language` (of `args.splits`)."""
    manifest = args.corpus / "manifest.jsonl" if args.corpus.is_dir() else args.corpus
    splits = args.splits.split(",")
    rows = [r for r in read_manifest(manifest) if r["language"] == args.language and r["vocals"]
            and r["split"] in splits][: args.songs]
    if not rows:
        raise SystemExit(f"{manifest} has no sung {args.language} items")
    return manifest, rows


def sung_text(row: dict, seconds: float) -> str:
    """The syllables sung in the first `seconds` of a song (the reference its transcript is scored against)."""
    return " ".join(t["text"] for t in row["timing"] if t["start"] < seconds)


def lyric_unit(language: str) -> str:
    return "wer" if language in ("en", "es") else "cer"
