"""Lyric variants of a corpus' sung songs: the lyrics, not the tags, must decide whether and how long a song is sung.

In a rendered corpus every song tagged "male vocal" or "female vocal" has lyrics and is sung from start to end, so a
song model can predict the voice from the tags alone and ignore the lyrics (with the same tags, a prompt's lyrics then
give little more singing than empty lyrics). Two variants of each sung song break that shortcut; both keep the song's
tags unchanged, so only the lyrics tell them apart:

    <id>-inst    the accompaniment alone (mix minus the vocal stem) with empty lyrics: no lyrics, no singing;
    <id>-lines   the first k lines of the lyrics (k drawn per song), the voice muted after the k-th line's end:
                 the singing lasts as long as the lyrics given.

The corpus mixes are accompaniment + vocal stem at the same scale (`corpus.mix_levels`), so the subtraction is exact
up to the 16-bit quantisation of the two files. The output corpus' manifest lists the original rows (their audio
paths pointing into the source corpus) and the variants; tokenize it like any corpus. Re-running resumes: variant
audio already written is kept.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heartmula.audio import load_audio, save_audio
from heartmula.errors import HeartMuLaError
from heartmula.manifest import SPLITS, manifest_path, read_manifest, write_manifest

FADE_SECONDS = 0.04  # the muted voice fades out this fast: the next line may start right at the cut
ACCOMPANIMENT_SUFFIX = "-inst"  # id (and audio name) of a sung song's accompaniment-only variant: <id>-inst


@dataclass
class VariantConfig:
    corpus: Path
    out: Path
    seed: int = 0
    splits: tuple[str, ...] = ("train", "val")  # the test split stays untouched for evaluation
    max_kept_lines: int = 12  # the `-lines` variant keeps 1..this many lines (fewer than the song has)
    workers: int = 2
    progress: bool = True


def kept_lines_lyrics(timing: list[dict], count: int) -> str:
    """Lyrics text of the first `count` sung lines, with a [section] header wherever the section changes."""
    lines, section = [], None
    for line in timing[:count]:
        if line["section"] != section:
            section = line["section"]
            lines.append(f"[{section}]")
        lines.append(line["text"])
    return "\n".join(lines)


def mute_after(stem: np.ndarray, seconds: float, sample_rate: int) -> np.ndarray:
    """The vocal stem silenced from `seconds` on, with a short linear fade so the cut does not click."""
    gain = np.ones(stem.shape[-1], dtype=np.float32)
    start = min(int(round(seconds * sample_rate)), len(gain))
    fade = int(FADE_SECONDS * sample_rate)
    ramp = np.linspace(1.0, 0.0, fade, endpoint=False, dtype=np.float32)[: len(gain) - start]
    gain[start : start + len(ramp)] = ramp
    gain[start + len(ramp) :] = 0.0
    return stem * gain


def _variants_of(row: dict, out: Path, config: VariantConfig) -> list[dict]:
    """Write the two variants of one sung row (unless already written) and return their manifest rows."""
    timing = row["timing"]
    rng = np.random.default_rng([config.seed, row.get("index", 0), len(timing)])
    kept = int(rng.integers(1, min(len(timing) - 1, config.max_kept_lines) + 1))
    base = {key: value for key, value in row.items() if key not in ("audio", "vocals", "index")}
    variants = [
        {**base, "id": f"{row['id']}{ACCOMPANIMENT_SUFFIX}", "lyrics": "", "timing": [],
         "audio": f"audio/{row['id']}{ACCOMPANIMENT_SUFFIX}.flac",
         "vocals": None, "variant": {"of": row["id"], "kind": "instrumental"}},
        {**base, "id": f"{row['id']}-lines", "lyrics": kept_lines_lyrics(timing, kept), "timing": timing[:kept],
         # named by the lines kept, what alone decides the audio: a rerun with another --seed never reuses a file
         "audio": f"audio/{row['id']}-lines{kept}.flac", "vocals": f"vocals/{row['id']}-lines{kept}.flac",
         "variant": {"of": row["id"], "kind": "first-lines", "kept_lines": kept, "of_lines": len(timing)}},
    ]
    if all((out / v["audio"]).is_file() and (v["vocals"] is None or (out / v["vocals"]).is_file())
           for v in variants):
        return variants
    mix, rate = load_audio(row["audio"])
    stem, stem_rate = load_audio(row["vocals"], channels=1)
    if stem_rate != rate or stem.shape[1] != mix.shape[1]:
        raise HeartMuLaError(f"{row['id']}: the vocal stem ({stem.shape[1]} samples at {stem_rate} Hz) does not "
                             f"match the mix ({mix.shape[1]} samples at {rate} Hz)")
    accompaniment = mix - stem
    muted = mute_after(stem, timing[kept - 1]["end"], rate)
    # Stems first, mixes last: a variant whose mix exists is complete (save_audio writes atomically).
    save_audio(out / variants[1]["vocals"], muted, rate)
    save_audio(out / variants[1]["audio"], accompaniment + muted, rate)
    save_audio(out / variants[0]["audio"], accompaniment, rate)
    return variants


def _relative(row: dict, out: Path) -> dict:
    """An original row (absolute audio paths) whose paths point from the new manifest's folder into the source."""
    return {**row, **{key: os.path.relpath(row[key], out.resolve()) for key in ("audio", "vocals") if row[key]}}


def make_lyric_variants(config: VariantConfig) -> list[dict]:
    """Write the variants of every sung row of the chosen splits into `config.out`; return the new manifest's rows
    (originals first, then the variants in corpus order)."""
    from tqdm import tqdm

    source = manifest_path(config.corpus)
    rows = read_manifest(source)
    out = Path(config.out)
    if out.resolve() == source.parent.resolve():
        raise HeartMuLaError("--out must be a new folder, not the source corpus (its manifest would be replaced)")
    unknown = [s for s in config.splits if s not in SPLITS]
    if unknown or not config.splits:
        raise HeartMuLaError(f"--splits takes some of {', '.join(SPLITS)}; got {', '.join(config.splits) or 'none'}")
    if config.max_kept_lines < 1:
        raise HeartMuLaError(f"--max-kept-lines must be at least 1, got {config.max_kept_lines}")
    sung = [r for r in rows if r["split"] in config.splits and r["vocals"] and len(r["timing"]) >= 2]
    if not sung:
        raise HeartMuLaError(f"{source} has no sung songs with a vocal stem and at least two timed lines in the "
                             f"splits {', '.join(config.splits)}: variants need the stems `data build` writes")
    (out / "audio").mkdir(parents=True, exist_ok=True)
    (out / "vocals").mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=config.workers) as pool:
        futures = [pool.submit(_variants_of, row, out, config) for row in sung]
        variants = [v for f in tqdm(futures, desc="lyric variants", unit="song", disable=not config.progress)
                    for v in f.result()]
    originals = [_relative(r, out) for r in rows]
    write_manifest(out / "manifest.jsonl", originals + variants)
    return originals + variants
