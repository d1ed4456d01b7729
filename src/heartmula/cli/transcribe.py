"""`heartmula transcribe`: songs -> timed lyrics (txt, LRC, SRT, JSON)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from heartmula.cli import add_command
from heartmula.errors import HeartMuLaError
from heartmula.extras import require
from heartmula.files import atomic_output

# Copies of heartmula.transcribe's lists: importing that package loads torch, and `--help` must stay instant.
# tests/transcribe/test_transcribe_cli.py checks that they agree.
FORMATS = ("txt", "lrc", "srt", "json")
VOCAL_METHODS = ("off", "center", "hpss", "center+hpss")


def register(verbs) -> None:
    p = add_command(verbs, "transcribe", help="transcribe the lyrics of songs, with timestamps",
                    description="""Transcribe lyrics with Whisper. Without --model the embedded multilingual Whisper
                    base runs (CTranslate2 int8, no download); --model tiny.en is a faster English-only option; a
                    HeartTranscriptor-oss or any Hugging Face Whisper folder runs on transformers. Folders are searched
                    for audio files. Without --out the result is printed.""")
    p.add_argument("audio", nargs="*", help="audio files or folders")
    p.add_argument("--model", help="embedded model (base, tiny.en) or a CTranslate2 / Hugging Face Whisper folder "
                   "(default: base)")
    p.add_argument("--language", default="auto", help="auto (detect once per song), en, zh, ja, ko, es, or any "
                   "Whisper language code")
    p.add_argument("--format", default="txt", choices=FORMATS, help="txt = lyrics with blank lines between "
                   "sections; lrc/srt = timed lines; json = segments and words with times")
    p.add_argument("--out", type=Path, help="folder for the results (<name>.<format>, written atomically)")
    p.add_argument("--backend", choices=["ctranslate2", "transformers"], help="default: the model's own")
    p.add_argument("--compute-type", help="ctranslate2: int8 (default), int8_float32, float32; transformers: "
                   "float32 (default), bfloat16")
    p.add_argument("--decoding", default="fast", choices=["fast", "upstream"], help="fast = 5 beams with "
                   "temperature fallback; upstream = HeartTranscriptor's settings (2 beams, fallback 0-0.4, "
                   "compression 1.8, no-speech 0.4)")
    p.add_argument("--beam-size", type=int, help="override the preset's beam size")
    p.add_argument("--vocals", default="off", choices=VOCAL_METHODS, help="isolate vocals before recognition "
                   "(lightweight STFT masking, no weights)")
    p.add_argument("--no-vad", action="store_true", help="decode fixed 30 s windows instead of vocal-activity "
                   "chunks")
    p.add_argument("--section-gap", type=float, default=3.0, help="a pause this long (s) starts a new section")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = library default)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    p.add_argument("--export-transformers", type=Path, metavar="DIR", help="instead of transcribing, write the "
                   "CTranslate2 model (--model, default base) as a transformers Whisper folder (for fine-tuning)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def output_paths(inputs: list[str], files: list[Path], out: Path, fmt: str) -> list[Path]:
    """DIR/<stem>.<fmt> for files named directly, DIR/<path inside the folder>.<fmt> for files found in folders;
    two inputs may not land on one name."""
    paths = []
    folders = [Path(i) for i in inputs if Path(i).is_dir()]
    for file in files:
        root = next((f for f in folders if f in file.parents), None)
        relative = file.relative_to(root) if root else Path(file.name)
        paths.append(out / relative.with_suffix(f".{fmt}"))
    return paths


def run(args: argparse.Namespace) -> int:
    require("transcribe", "faster_whisper", feature="heartmula transcribe")
    from tqdm import tqdm

    from heartmula.transcribe import DECODING_PRESETS, TranscribeConfig, Transcriber, expand_audio_paths, render
    from heartmula.transcribe.backends import with_overrides

    if args.export_transformers is not None:
        return export(args)
    if not args.audio:
        raise HeartMuLaError("name at least one audio file or folder (or use --export-transformers DIR)")
    files = expand_audio_paths(args.audio)
    targets = output_paths(args.audio, files, args.out, args.format) if args.out else []
    duplicates = {t for t in targets if targets.count(t) > 1}
    if duplicates:
        raise HeartMuLaError(f"several inputs would be written to {sorted(duplicates)[0]}: give them different "
                             "names or transcribe them into different --out folders")
    config = TranscribeConfig(
        model=args.model, backend=args.backend, compute_type=args.compute_type, device=args.device,
        threads=args.threads, language=None if args.language == "auto" else args.language,
        decoding=with_overrides(DECODING_PRESETS[args.decoding], beam_size=args.beam_size),
        vocals=args.vocals, vad=not args.no_vad, section_gap=args.section_gap,
    )
    transcriber = Transcriber(config)
    failures = 0
    bar = tqdm(total=len(files), unit="song", disable=args.quiet or len(files) < 2 and not sys.stderr.isatty(),
               file=sys.stderr, bar_format="{l_bar}{bar}| {n:.1f}/{total} [{elapsed}<{remaining}]")
    for index, file in enumerate(files):
        bar.set_postfix_str(file.name)
        try:
            transcript = transcriber.transcribe(file, progress=lambda fraction, i=index: _advance(bar, i + fraction))
        except HeartMuLaError as exc:
            if len(files) == 1:
                raise
            failures += 1  # one bad file must not stop a folder of songs
            bar.write(f"heartmula: skipped {file}: {exc}", file=sys.stderr)
            continue
        finally:
            _advance(bar, index + 1)
        text = render(transcript, args.format)
        if targets:
            with atomic_output(targets[index]) as tmp:
                tmp.write_text(text, encoding="utf-8")
        else:
            if len(files) > 1:
                print(f"==> {file} <==")
            sys.stdout.write(text)
            sys.stdout.flush()
    bar.close()
    if targets:
        print(f"wrote {len(files) - failures} transcript(s) to {args.out}", file=sys.stderr)
    return 1 if failures else 0


def _advance(bar, position: float) -> None:
    bar.n = min(position, bar.total)
    bar.refresh()


def export(args: argparse.Namespace) -> int:
    from heartmula.transcribe.convert import convert_ct2_to_transformers
    from heartmula.transcribe.models import locate_model

    location = locate_model(args.model)
    if location.backend != "ctranslate2":
        raise HeartMuLaError(f"{location.name} is already a transformers folder; nothing to export")
    out = convert_ct2_to_transformers(location.path, args.export_transformers)
    print(f"wrote a transformers Whisper folder to {out} (from {location.name})", file=sys.stderr)
    return 0
