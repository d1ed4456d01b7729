"""`heartmula align SONG --lyrics FILE`: known lyrics -> per-line and per-word times (LRC, SRT, JSON)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from heartmula.cli import add_command
from heartmula.errors import HeartMuLaError
from heartmula.extras import require
from heartmula.files import atomic_output

# A copy of heartmula.transcribe.align.ALIGN_FORMATS: importing that module loads torch, and `--help` must stay
# instant. tests/transcribe/test_align.py checks that they agree.
FORMATS = ("lrc", "srt", "json")


def register(verbs) -> None:
    p = add_command(verbs, "align", help="time known lyrics to a song (karaoke LRC, SRT, JSON)",
                    description="""Forced alignment of known lyrics: Whisper transcribes the song prompted with the
                    lyrics, the lyric words are aligned to the heard words in order (a repeated chorus lands on its own
                    occurrence), then the heard lines are retimed by forced alignment of their own words and each line
                    start moves to the nearest note onset. Every line gets a confidence (share of its words heard);
                    lines not heard are flagged unsung and get no times (left out of LRC and SRT, kept in JSON). Without
                    --out the result is printed.""")
    p.add_argument("audio", help="the song (any audio file)")
    p.add_argument("--lyrics", type=Path, required=True, help="UTF-8 text: one lyric line per line; [section] "
                   "headers and blank lines are allowed")
    p.add_argument("--language", default="auto", help="auto (detect), en, zh, ja, ko, es, or any Whisper code")
    p.add_argument("--format", default="lrc", choices=FORMATS, help="lrc = line times and <word> times "
                   "(enhanced LRC); srt = one cue per line; json = lines, words, confidences and flags")
    p.add_argument("--out", type=Path, help="output file (written atomically)")
    p.add_argument("--model", help="embedded model (base, tiny.en) or a CTranslate2 / Hugging Face Whisper folder")
    p.add_argument("--vad", action="store_true", help="decode only where the voice-activity detector hears a voice "
                   "(faster on long instrumental parts; it misses singing under loud accompaniment)")
    p.add_argument("--no-prompt", action="store_true", help="do not condition Whisper on the lyrics")
    p.add_argument("--min-confidence", type=float, default=0.45, help="lines with a smaller share of their words "
                   "heard are flagged unsung")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = library default)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    require("transcribe", "faster_whisper", "rapidfuzz", feature="heartmula align")
    from heartmula.transcribe import TranscribeConfig
    from heartmula.transcribe.align import AlignConfig, Aligner, render_alignment

    if not Path(args.audio).is_file():
        raise HeartMuLaError(f"{args.audio} does not exist")
    try:
        lyrics = args.lyrics.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HeartMuLaError(f"cannot read the lyrics {args.lyrics} as UTF-8 text: {exc}") from None
    defaults = AlignConfig()
    config = AlignConfig(min_confidence=args.min_confidence,
                         low_confidence=max(defaults.low_confidence, args.min_confidence), prompt=not args.no_prompt)
    transcribe_config = TranscribeConfig(model=args.model, device=args.device, threads=args.threads, vad=args.vad,
                                         language=None if args.language == "auto" else args.language)
    alignment = Aligner(transcribe_config, config).align(args.audio, lyrics)
    for warning in alignment.warnings():
        print(f"heartmula: {warning}", file=sys.stderr)
    text = render_alignment(alignment, args.format)
    if args.out:
        with atomic_output(args.out) as tmp:
            tmp.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
