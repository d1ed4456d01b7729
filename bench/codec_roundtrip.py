"""encode -> decode round trip of real recordings through the CLI, with quality metrics and speed.

    python bench/codec_roundtrip.py --model work/codec-16k/model take1.ogg take2.flac

For each file: `heartmula encode` then `heartmula decode --reference` (metrics at the codec's rate against the
original, resampled); writes bench/results/codec_roundtrip.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "codec_roundtrip.json"


def run(command: list[str]) -> tuple[str, float]:
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return done.stdout, time.perf_counter() - began


def sq_only_metrics(model: str, path: Path) -> dict:
    """The SQ autoencoder alone (latent not tokenised): the ceiling the codes can reach."""
    import torch

    from heartmula.audio import load_audio
    from heartmula.codec import load_codec
    from heartmula.eval.codec_metrics import codec_report

    codec = load_codec(model)
    audio, rate = load_audio(path, sample_rate=codec.sample_rate, channels=codec.config.audio_channels)
    hop = codec.config.samples_per_latent
    audio = audio[:, : audio.shape[1] // hop * hop]
    with torch.no_grad():
        latent = codec.audio_to_latent(torch.from_numpy(audio)[None])
        decoded = codec.latent_to_audio(latent)[0].numpy()
    return codec_report(decoded, audio, rate)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio", type=Path, nargs="+")
    parser.add_argument("--model", required=True)
    parser.add_argument("--keep", type=Path, help="folder to keep the codes and decoded audio in")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import soundfile as sf

    cli = [sys.executable, "-m", "heartmula"]
    report = {"model": str(args.model), "files": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for audio in args.audio:
            codes = folder / f"{audio.stem}.codes.npy"
            decoded = folder / f"{audio.stem}.decoded.wav"
            _, encode_s = run([*cli, "encode", str(audio), "--codes-out", str(codes), "--model", args.model,
                               "--quiet"])
            out, decode_s = run([*cli, "decode", str(codes), "--out", str(decoded), "--model", args.model,
                                 "--quiet", "--reference", str(audio)])
            seconds = sf.info(str(audio)).duration
            entry = {"file": audio.name, "seconds": round(seconds, 2), "metrics": json.loads(out.strip()),
                     "sq_autoencoder_only": sq_only_metrics(args.model, audio),
                     "encode_rtf_incl_load": round(encode_s / seconds, 3),
                     "decode_rtf_incl_load": round(decode_s / seconds, 3)}
            print(json.dumps(entry), file=sys.stderr)
            report["files"].append(entry)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
