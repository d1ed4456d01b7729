"""Does sung text survive the codec? Lyric error of corpus songs before and after an encode -> decode round trip.

A model trained on a codec's tokens can sing no more clearly than the codec reproduces singing, so this is the
codec's share of the lyric ceiling (the corpus' own share is `heartmula data ceiling`). For the first `--songs`
sung items of `--language` in the manifest: the vocal stem and the mix, first `--seconds`, transcribed by the
default transcriber with the language given, as they are and after the codec, scored with the lyrics recipe
against the syllables sung in that window (WER for en/es, CER otherwise). A third version passes the audio through
the codec's latent autoencoder alone (`audio_to_latent` -> `latent_to_audio`, no tokens): where that keeps the words
and the codes do not, the token bottleneck (or the decoder from codes) is what loses them.

    python bench/codec_lyrics.py work/corpus10h            # writes bench/results/codec_lyrics.json
    python bench/codec_lyrics.py work/corpus10h --codec CODEC --language es
    python bench/codec_lyrics.py work/corpus10h --splits val,test --codec default CODEC   # side by side

A training checkpoint is a codec folder (`heartmula train voice --out DIR` writes one at every checkpoint), so
`--codec DIR` measures it while it trains; `--skip-latent` leaves out the latent-only version (faster). The
judge is fixed: the embedded multilingual Whisper base, language forced, the normaliser of heartmula.eval.lyrics.
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
from heartmula.codec import load_codec
from heartmula.eval.lyrics import score
from heartmula.song_models import resolve_codec, resolve_lm
from heartmula.transcribe.pipeline import TranscribeConfig, Transcriber

RESULTS = Path(__file__).resolve().parent / "results" / "codec_lyrics.json"


def latent_round_trip(codec, audio: np.ndarray, rate: int) -> np.ndarray:
    """`audio` through the codec's latent autoencoder only, at the codec's rate and channels."""
    import torch

    from heartmula.audio import mix_channels, resample

    audio = mix_channels(resample(audio, rate, codec.sample_rate), codec.config.audio_channels)
    hop = codec.config.samples_per_latent
    audio = np.ascontiguousarray(audio[:, : audio.shape[1] // hop * hop], dtype=np.float32)
    with torch.no_grad():
        return codec.latent_to_audio(codec.audio_to_latent(torch.from_numpy(audio)[None]))[0].numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    song_arguments(parser, songs=4, results=RESULTS)
    parser.add_argument("--codec", nargs="+", default=["default"],
                        help="codec roots or folders, side by side ('default': the embedded default codec)")
    parser.add_argument("--skip-latent", action="store_true", help="leave out the latent-only round trip")
    args = parser.parse_args()
    manifest, rows = sung_rows(args)
    codecs = {name: load_codec(resolve_codec(None, resolve_lm(None, "3B")) if name == "default" else name)
              for name in args.codec}
    transcriber = Transcriber(TranscribeConfig(language=args.language))
    unit = lyric_unit(args.language)
    entries = []
    for row in rows:
        reference = sung_text(row, args.seconds)
        for kind in ("vocals", "audio"):
            audio, rate = load_audio(manifest.parent / row[kind])
            audio = audio[:, : int(args.seconds * rate)]
            versions = {"original": (audio, rate)}
            for name, codec in codecs.items():
                suffix = "" if len(codecs) == 1 else f" ({name})"
                if not args.skip_latent:
                    versions["latent only" + suffix] = (latent_round_trip(codec, audio, rate), codec.sample_rate)
                versions["codec" + suffix] = codec.decode(codec.encode(audio, rate))
            for version, (signal, signal_rate) in versions.items():
                text = transcriber.transcribe_array(signal, signal_rate).text
                entries.append({"id": row["id"], "kind": "vocal stem" if kind == "vocals" else "mix",
                                "version": version, unit: round(score(reference, text, args.language, False)[unit], 3),
                                "transcript": text})
                print(json.dumps({k: v for k, v in entries[-1].items() if k != "transcript"}), file=sys.stderr)

    def mean(kind: str, version: str) -> float:
        return round(float(np.mean([e[unit] for e in entries if e["kind"] == kind and e["version"] == version])), 3)

    summary = {f"{kind}, {version}": mean(kind, version) for kind in ("vocal stem", "mix") for version in versions}
    result = {"codec": args.codec, "language": args.language, "unit": unit, "splits": args.splits,
              "songs": [row["id"] for row in rows], "seconds": args.seconds, "summary": summary, "entries": entries,
              "machine": machine()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
