"""Forced-alignment accuracy of `heartmula align` against the corpus' known line timings, on held-out songs.

For each language, up to --per-language songs of the val and test splits (`--splits`; instrumentals skipped) are
aligned on their mix with their own lyrics and language, by the embedded base or `--model`. A line's onset error
is |aligned start - known start|; lines flagged unsung count as misses (every corpus line is sung) and are not
in the error statistics.

    python bench/align_accuracy.py --corpus work/corpus10h [--per-language 4] [--no-prompt] [--model DIR]
        [--splits val,test] [--out bench/results/align_accuracy.json] [--resume] [--cache DIR]

The result is rewritten after every song ("complete": false until the last); --resume keeps the songs that an
interrupted run of the same method measured. --cache DIR keeps Whisper's outputs per window (see _whisper_cache.py)
so that a re-run after a change to the post-processing decodes only what changed.

The corpus folder holds manifest.jsonl, or items/*.json while it is being built (same rows).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from _machine import machine
from _whisper_cache import CachedBackend

from heartmula.errors import HeartMuLaError
from heartmula.transcribe import TranscribeConfig
from heartmula.transcribe.align import AlignConfig, Aligner, read_lyrics


def held_out_rows(corpus: Path, splits: tuple[str, ...] = ("val", "test")) -> list[dict]:
    manifest = corpus / "manifest.jsonl"
    if manifest.is_file():
        rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        rows = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((corpus / "items").glob("*.json"))]
    return [r for r in rows if r["split"] in splits and r["timing"] and r["language"]]


def pick(rows: list[dict], per_language: int) -> list[dict]:
    by_language: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: r["id"]):
        by_language.setdefault(row["language"], [])
        if len(by_language[row["language"]]) < per_language:
            by_language[row["language"]].append(row)
    return [row for language in sorted(by_language) for row in by_language[language]]


def song_errors(aligner: Aligner, corpus: Path, row: dict) -> dict:
    lines = read_lyrics(row["lyrics"])
    if [text for _, text in lines] != [t["text"] for t in row["timing"]]:
        raise ValueError(f"{row['id']}: the lyrics' lines differ from the timed lines")
    started = time.perf_counter()
    try:
        result = aligner.align(corpus / row["audio"], row["lyrics"])
    except HeartMuLaError as exc:  # nothing heard: every line is a miss
        return {"id": row["id"], "language": row["language"], "split": row["split"], "lines": len(lines),
                "unsung_flagged": len(lines), "low_flagged": 0, "onset_errors": [], "error": str(exc),
                "seconds": round(time.perf_counter() - started, 1), "duration": row["duration"]}
    errors = [abs(line.start - known["start"]) for line, known in zip(result.lines, row["timing"])
              if line.start is not None]
    return {"id": row["id"], "language": row["language"], "split": row["split"], "lines": len(lines),
            "unsung_flagged": sum(line.status == "unsung" for line in result.lines),
            "low_flagged": sum(line.status == "low" for line in result.lines),
            "onset_errors": [round(e, 3) for e in errors], "seconds": round(time.perf_counter() - started, 1),
            "duration": row["duration"]}


def summary(songs: list[dict]) -> dict:
    errors = np.array([e for s in songs for e in s["onset_errors"]])
    lines = sum(s["lines"] for s in songs)
    return {"songs": len(songs), "lines": lines, "timed_lines": len(errors),
            "unsung_flagged_share": round(sum(s["unsung_flagged"] for s in songs) / max(lines, 1), 3),
            "median_onset_error": round(float(np.median(errors)), 3) if len(errors) else None,
            "p90_onset_error": round(float(np.percentile(errors, 90)), 3) if len(errors) else None,
            "share_within_0.5s": round(float(np.mean(errors <= 0.5)), 3) if len(errors) else None}


METHOD = ("{model}, language given, lyrics prompt {prompt}; Needleman-Wunsch over normalised "
          "words (characters for zh/ja), lines under 45% heard unsung; unheard lines forced-aligned in gaps that "
          "hold them at the song's pace; "
          "forced alignment of the known lines; line starts moved 0.2 s earlier, then to the strongest note onset "
          "up to 0.4 s before; mixes of {splits} songs (settings chosen on val and train songs, test reported apart)")


def method(args: argparse.Namespace) -> str:
    """What a run measures: two runs with the same method can share songs (--resume)."""
    model = "embedded Whisper base (int8)" if args.model == "base" else f"Whisper {args.model}"
    return METHOD.format(model=model, prompt="off" if args.no_prompt else "on", splits=args.splits.replace(",", "+"))


def write_result(args: argparse.Namespace, songs: list[dict], planned: int) -> None:
    """The result so far (written after every song, so that an interrupted run keeps what it measured)."""
    languages = sorted({s["language"] for s in songs})
    command = [a for a in sys.argv[1:] if a != "--resume"]
    if "--cache" in command:  # where the cache lives does not change what is measured
        at = command.index("--cache")
        del command[at:at + 2]
    result = {
        "command": "python bench/align_accuracy.py " + " ".join(command),
        "method": method(args),
        "complete": len(songs) == planned, "songs_planned": planned,
        "per_language": {language: summary([s for s in songs if s["language"] == language]) for language in languages},
        "per_split": {split: summary([s for s in songs if s["split"] == split]) for split in args.splits.split(",")},
        "all": summary(songs), "songs": songs, "machine": machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    partial.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    partial.replace(args.out)


def earlier_songs(args: argparse.Namespace) -> dict[str, dict]:
    """Songs measured by an interrupted run of the same method (--resume)."""
    if not args.resume or not args.out.is_file():
        return {}
    earlier = json.loads(args.out.read_text(encoding="utf-8"))
    if earlier.get("method") != method(args):
        return {}
    return {song["id"]: song for song in earlier["songs"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--per-language", type=int, default=4)
    parser.add_argument("--splits", default="val,test", help="manifest splits to align (a corpus no transcriber was "
                        "trained on can use all: train,val,test)")
    parser.add_argument("--model", default="base", help="transcriber: 'base' (embedded) or a Whisper folder")
    parser.add_argument("--no-prompt", action="store_true", help="do not condition Whisper on the lyrics")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", action="store_true", help="keep the songs an interrupted run already measured")
    parser.add_argument("--cache", type=Path, help="keep Whisper's outputs per window in this folder")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "align_accuracy.json")
    args = parser.parse_args()
    rows = pick(held_out_rows(args.corpus, tuple(args.splits.split(","))), args.per_language)
    done = earlier_songs(args)
    songs = []
    for row in rows:
        if row["id"] in done:
            songs.append(done[row["id"]])
            continue
        config = TranscribeConfig(model=args.model, threads=args.threads, language=row["language"], vad=False)
        aligner = Aligner(config, AlignConfig(prompt=not args.no_prompt))
        if args.cache is not None:
            aligner.transcriber.backend = CachedBackend(aligner.transcriber.backend, args.cache)
        songs.append(song_errors(aligner, args.corpus, row))
        print(row["id"], row["language"], summary(songs[-1:]), file=sys.stderr)
        write_result(args, songs, len(rows))
    write_result(args, songs, len(rows))
    result = json.loads(args.out.read_text(encoding="utf-8"))
    print(json.dumps({k: result[k] for k in ("per_language", "per_split", "all")}, indent=1), file=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
