"""Which of the voice branch's parameters loses the sung words? Its synthesis driven by the WORLD targets of the
vocal stem itself, with one parameter at a time taken from the codec's round trip instead, and with the targets
degraded on purpose.

For the first `--songs` English sung corpus songs (the four that `bench/codec_lyrics.py` measures, which the
phonetic codec never trained on), first `--seconds`: the stem's WORLD targets (`heartmula.train.codec_voice.
voice_targets`: f0, voicing, harmonic and noise envelopes per 10 ms frame) are rendered by the codec's own voice
synthesis (`VoiceDecoder.frames`, overlap-added as the decoder does, without the music part), and transcribed by the
fixed judge (the embedded multilingual Whisper base, English forced, `heartmula.eval.lyrics` normaliser). Versions:

- `targets`: every parameter from WORLD (the synthesis' own ceiling);
- `round trip`: every parameter as the codec predicts it from its codes of `--input` (the stem or the mix);
- `round trip, target X`: the round trip with parameter X replaced by its target;
- `targets, harmonic + N nat noise`: Gaussian noise of N nats on every band and frame of the harmonic envelope;
- `targets, harmonic held over 25 / 12.5 Hz`: the harmonic envelope averaged over blocks of 4 / 8 frames.

Also the mean absolute error of the predicted f0 (log), harmonic and noise envelopes (nats) on voiced frames.

    python bench/voice_oracle.py work/corpus10h --codec CODEC     # writes bench/results/voice_oracle.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _machine import machine
from _sung import song_arguments, sung_rows, sung_text

from heartmula.audio import load_audio, resample
from heartmula.codec import load_codec
from heartmula.eval.lyrics import score
from heartmula.train.codec_voice import voice_targets
from heartmula.transcribe.pipeline import TranscribeConfig, Transcriber

RESULTS = Path(__file__).resolve().parent / "results" / "voice_oracle.json"
PARAMETERS = ("log_f0", "voicing", "harmonic", "noise")


def spectral_decoder(codec):
    return next(m for m in codec.modules() if type(m).__name__ == "SpectralDecoder" and hasattr(m, "voice"))


def render(decoder, parameters: dict[str, torch.Tensor]) -> np.ndarray:
    """Voice parameters [1, N, ...] -> audio through the voice synthesis alone, overlap-added like the decoder."""
    frames, hop, n_fft = parameters["log_f0"].shape[1], decoder.hop, decoder.n_fft
    texture = decoder.tables(torch.device("cpu"))["noise"]
    with torch.no_grad():
        harmonic, noise = decoder.voice.frames(parameters, None, texture[torch.arange(frames) % texture.shape[0]])
        window = torch.hann_window(n_fft)
        windowed = (torch.fft.irfft(noise, n=n_fft) + harmonic * window) * window / decoder.ola_scale
        audio = F.fold(windowed.transpose(1, 2), output_size=(1, (frames - 1) * hop + n_fft), kernel_size=(1, n_fft),
                       stride=(1, hop))
    return audio[0, 0, 0].numpy()


def predicted_parameters(codec, decoder, audio: np.ndarray, rate: int) -> dict[str, torch.Tensor]:
    """The voice parameters the decoder computes while decoding the codes of `audio`."""
    recorded = []
    original = decoder.voice.parameters_from_latent

    def recording(latent, cache=None):
        recorded.append(original(latent, cache))
        return recorded[-1]

    decoder.voice.parameters_from_latent = recording
    try:
        codec.decode(codec.encode(audio, rate))
    finally:
        del decoder.voice.parameters_from_latent
    return {k: torch.cat([r[k] for r in recorded], dim=1) for k in PARAMETERS}


def target_parameters(decoder, stem: np.ndarray, sample_rate: int, frames: int) -> dict[str, torch.Tensor]:
    t = voice_targets(stem, frames, sample_rate, decoder.hop, decoder.n_fft, decoder.voice.config.bands)
    f0 = torch.from_numpy(t["f0"])
    return {"log_f0": f0.clamp(min=50.0).log()[None], "voicing": torch.where(f0 > 0, 20.0, -20.0)[None],
            "harmonic": torch.from_numpy(t["harmonic"])[None], "noise": torch.from_numpy(t["noise"])[None]}


def held(envelope: torch.Tensor, block: int) -> torch.Tensor:
    """[1, N, bands] averaged over blocks of `block` frames and held (the tail as it is)."""
    n = envelope.shape[1] // block * block
    blocks = envelope[:, :n].reshape(1, -1, block, envelope.shape[2]).mean(2).repeat_interleave(block, 1)
    return torch.cat([blocks, envelope[:, n:]], dim=1)


def versions(target: dict, predicted: dict, generator: torch.Generator) -> dict[str, dict]:
    noisy = lambda nats: target["harmonic"] + nats * torch.randn(target["harmonic"].shape, generator=generator)  # noqa: E731
    out = {"targets": target, "round trip": predicted}
    for name, keys in (("f0 + voicing", ("log_f0", "voicing")), ("harmonic", ("harmonic",)),
                       ("harmonic + noise", ("harmonic", "noise"))):
        out[f"round trip, target {name}"] = {k: target[k] if k in keys else predicted[k] for k in PARAMETERS}
    for nats in (1, 2):
        out[f"targets, harmonic + {nats} nat noise"] = {**target, "harmonic": noisy(nats)}
    for block, rate in ((4, "25"), (8, "12.5")):
        out[f"targets, harmonic held over {rate} Hz"] = {**target, "harmonic": held(target["harmonic"], block)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    song_arguments(parser, songs=4, results=RESULTS)
    parser.add_argument("--codec", required=True, help="codec folder with a voice branch")
    parser.add_argument("--input", choices=("vocals", "audio"), default="vocals",
                        help="what the round trip encodes: the vocal stem or the mix")
    args = parser.parse_args()
    manifest, rows = sung_rows(args)
    codec = load_codec(args.codec)
    decoder = spectral_decoder(codec)
    sample_rate = codec.sample_rate
    judge = Transcriber(TranscribeConfig(language=args.language))
    generator = torch.Generator().manual_seed(0)
    wer: dict[str, list[float]] = {}
    errors: dict[str, list[float]] = {"log_f0": [], "harmonic": [], "noise": []}
    for row in rows:
        stem, rate = load_audio(manifest.parent / row["vocals"])
        stem = resample(stem[:, : int(args.seconds * rate)], rate, sample_rate)[0]
        source, source_rate = load_audio(manifest.parent / row[args.input])
        predicted = predicted_parameters(codec, decoder, source[:, : int(args.seconds * source_rate)], source_rate)
        frames = min(len(stem) // decoder.hop, predicted["log_f0"].shape[1])
        predicted = {k: v[:, :frames] for k, v in predicted.items()}
        target = target_parameters(decoder, stem, sample_rate, frames)
        voiced = target["voicing"][0] > 0
        for k in errors:
            errors[k].append(float((predicted[k][0, voiced] - target[k][0, voiced]).abs().mean()))
        reference = sung_text(row, args.seconds)
        for name, parameters in versions(target, predicted, generator).items():
            text = judge.transcribe_array(render(decoder, parameters)[None], sample_rate).text
            wer.setdefault(name, []).append(score(reference, text, args.language, False)["wer"])
        print(row["id"], {k: round(v[-1], 3) for k, v in wer.items()}, flush=True)
    result = {"codec": args.codec, "input": args.input, "songs": [r["id"] for r in rows], "seconds": args.seconds,
              "wer": {k: round(float(np.mean(v)), 3) for k, v in wer.items()},
              "voiced_frame_error": {k: round(float(np.mean(v)), 3) for k, v in errors.items()},
              "machine": machine()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result["wer"]), json.dumps(result["voiced_frame_error"]))


if __name__ == "__main__":
    main()
