"""Does a generated song have a vocal line? The default codec's voice branch, on and off, on the same LM codes.

The README's song (its tags, `examples/lyrics.txt`, seed 0, 30 s) is generated once by the default LM, with int8
weights on a CPU as `heartmula generate` runs it; its codes are decoded by the default codec as it ships and with
its voice branch removed (the codec before the branch). For each: level, the share of 10 ms frames the branch
voices (with it), and what Whisper (the default transcriber, English) hears; a spectrogram of the first 12 s of
both goes to `--plot` (harmonics that glide with the melody, and formant bands above 1 kHz, are the vocal line; the
fixed horizontal lines are the semitone synthesis).

    python bench/voice_line.py          # writes bench/results/voice_line.json and docs/voice-line.jpg
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from _machine import machine

from heartmula.codec import load_codec
from heartmula.lm.generation import SamplingParams, SongRequest, frames_for_duration
from heartmula.song_models import load_lm, resolve_codec, resolve_lm
from heartmula.transcribe.pipeline import TranscribeConfig, Transcriber

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "voice_line.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "voice-line.jpg")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    generator = load_lm(resolve_lm(None, "3B"))
    lyrics = (ROOT / "examples" / "lyrics.txt").read_text(encoding="utf-8")
    torch.manual_seed(args.seed)  # as `heartmula generate --seed` does
    song = SongRequest(lyrics=lyrics, tags="pop,piano,happy", seed=args.seed)
    codes = generator.generate([song], SamplingParams(), frames_for_duration(30.0))[0].numpy()
    codec = load_codec(resolve_codec(None, resolve_lm(None, "3B")))
    voice = codec.scalar_model.decoder.voice
    with torch.no_grad():
        latent = codec.direct_latent(torch.as_tensor(codes)[None]).transpose(1, 2)
        voiced = float((torch.sigmoid(voice.parameters_from_latent(latent)["voicing"]) > 0.5).float().mean())
    with_voice, rate = codec.decode(codes)
    del codec.scalar_model.decoder.voice  # the same codec without its branch
    without_voice, _ = codec.decode(codes)

    transcriber = Transcriber(TranscribeConfig(language="en"))
    rows = {}
    for name, audio in (("without voice branch", without_voice), ("with voice branch", with_voice)):
        text = transcriber.transcribe_array(audio, rate).text
        rows[name] = {"rms_dbfs": round(float(20 * np.log10(np.sqrt(np.mean(audio**2)) + 1e-12)), 1),
                      "words_heard": len(text.split()), "transcript": text}
    result = {"prompt": {"tags": "pop,piano,happy", "lyrics": "examples/lyrics.txt", "seed": args.seed,
                         "seconds": round(with_voice.shape[-1] / rate, 2)},
              "frames_voiced_by_branch": round(voiced, 3), "decodes": rows, "machine": machine()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    for axis, (name, audio) in zip(axes, (("without voice branch", without_voice), ("with voice branch", with_voice))):
        axis.specgram(audio[0, : 12 * rate], NFFT=1024, Fs=rate, noverlap=768, cmap="magma", vmin=-120)
        axis.set_ylim(0, 5000)
        axis.set_ylabel("Hz")
        axis.set_title(f"default codec {name}: README song (seed {args.seed}), first 12 s")
    axes[-1].set_xlabel("seconds")
    figure.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.plot, dpi=60, pil_kwargs={"quality": 85})
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, ensure_ascii=False)[:600])


if __name__ == "__main__":
    main()
