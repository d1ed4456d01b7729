"""How much spectral-envelope detail does sung text need? A design probe for a codec latent that keeps words.

Corpus vocal stems (the first `--songs` sung items of `--language`, first `--seconds`) are analysed by WORLD at 16 kHz
(f0, spectral envelope, aperiodicity) and resynthesized with the envelope reduced to B log-mel bands sampled at R
frames per second (block means, linearly interpolated back; f0 and aperiodicity kept whole). Each version is
transcribed by the default transcriber with the language given and scored with the lyrics recipe against the
syllables sung in the window. Compare with `bench/codec_lyrics.py`: the default codec loses the words entirely.

    python bench/envelope_lyrics.py work/corpus10h          # writes bench/results/envelope_lyrics.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from _machine import machine
from _sung import lyric_unit, song_arguments, sung_rows, sung_text

from heartmula.audio import load_audio
from heartmula.data.singing import load_pyworld
from heartmula.eval.lyrics import score
from heartmula.transcribe.pipeline import TranscribeConfig, Transcriber

RESULTS = Path(__file__).resolve().parent / "results" / "envelope_lyrics.json"
RATE = 16000
FRAME_MS = 5.0
# (mel bands, envelope frames per second); None = WORLD's full envelope every 5 ms
VARIANTS = {"full": None, "64 bands x 200 Hz": (64, 200.0), "64 bands x 50 Hz": (64, 50.0),
            "64 bands x 25 Hz": (64, 25.0), "32 bands x 25 Hz": (32, 25.0), "64 bands x 12.5 Hz": (64, 12.5)}


def reduce_envelope(envelope: np.ndarray, bands: int, frames_per_second: float) -> np.ndarray:
    """The envelope [frames, bins] kept as `bands` log-mel values every 1/frames_per_second s, then expanded back."""
    frames, bins = envelope.shape
    mel = 2595.0 * np.log10(1.0 + np.linspace(0.0, RATE / 2, bins) / 700.0)
    centres = np.linspace(mel[1], mel[-1], bands)
    nearest = np.clip(np.searchsorted(centres, mel), 0, bands - 1)
    log_power = np.log(envelope + 1e-12)
    banded = np.zeros((frames, bands))
    for band in range(bands):
        members = nearest == band
        # a band no bin falls into takes its lower neighbour's value (bin 0 always lands in band 0)
        banded[:, band] = log_power[:, members].mean(axis=1) if members.any() else banded[:, band - 1]
    step = max(1, int(round(1000.0 / FRAME_MS / frames_per_second)))
    blocks = int(np.ceil(frames / step))
    padded = np.concatenate([banded, np.repeat(banded[-1:], blocks * step - frames, axis=0)])
    means = padded.reshape(blocks, step, bands).mean(axis=1)
    block_times, times = (np.arange(blocks) + 0.5) * step, np.arange(frames)
    over_time = np.stack([np.interp(times, block_times, means[:, b]) for b in range(bands)], axis=1)
    return np.exp(np.stack([np.interp(mel, centres, row) for row in over_time]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    song_arguments(parser, songs=3, results=RESULTS)
    args = parser.parse_args()
    manifest, rows = sung_rows(args)
    world = load_pyworld()
    transcriber = Transcriber(TranscribeConfig(language=args.language))
    unit = lyric_unit(args.language)
    entries = []
    for row in rows:
        audio, _ = load_audio(manifest.parent / row["vocals"], sample_rate=RATE, channels=1)
        x = np.ascontiguousarray(audio[0, : int(args.seconds * RATE)], dtype=np.float64)
        f0, times = world.harvest(x, RATE, frame_period=FRAME_MS)
        envelope = world.cheaptrick(x, f0, times, RATE)
        aperiodicity = world.d4c(x, f0, times, RATE)
        reference = sung_text(row, args.seconds)
        for name, reduction in VARIANTS.items():
            reduced = envelope if reduction is None else reduce_envelope(envelope, *reduction)
            y = world.synthesize(f0, np.ascontiguousarray(reduced), aperiodicity, RATE, FRAME_MS).astype(np.float32)
            text = transcriber.transcribe_array(y[None], RATE).text
            entries.append({"id": row["id"], "variant": name,
                            unit: round(score(reference, text, args.language, False)[unit], 3), "transcript": text})
            print(json.dumps({k: v for k, v in entries[-1].items() if k != "transcript"}), file=sys.stderr)
    summary = {name: round(float(np.mean([e[unit] for e in entries if e["variant"] == name])), 3) for name in VARIANTS}
    result = {"language": args.language, "unit": unit, "songs": len(rows), "seconds": args.seconds,
              "summary": summary, "entries": entries, "machine": machine()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
