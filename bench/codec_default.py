"""Round-trip quality and speed of codec checkpoints on held-out audio, in process (no CLI start-up in the timings).

    python bench/codec_default.py --model src/heartmula/defaults/codec --plots work/codec-default/plots \\
        held_out_song.flac human_take.ogg ...

For each model and file: encode -> decode; metrics at the codec's rate against the original (multi-resolution
STFT and mel distance, SI-SDR, loudness difference: heartmula.eval.codec_metrics.codec_report); per-codebook usage
(distinct codes, perplexity); encode and decode real-time factors with `--threads` torch threads (model loading
excluded; decode timed as the best of `--repeats`). With --plots, a log-mel spectrogram of original vs decoded per
file (the listening proxy). Writes bench/results/codec_default.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "codec_default.json"


def evaluate(model: str, files: list[Path], threads: int, repeats: int, plots: Path | None) -> dict:
    import torch

    from heartmula.codec import load_codec
    from heartmula.eval.codec_roundtrip import roundtrip  # shared with `heartmula eval report`

    torch.set_num_threads(threads)
    codec = load_codec(model)
    entries = []
    for path in files:
        plot = plots / f"{Path(model).name or 'model'}__{path.stem}.png" if plots is not None else None
        entry = roundtrip(codec, path, repeats=repeats, plot=plot)
        print(json.dumps({k: entry[k] for k in ("file", "metrics", "decode_rtf")}), file=sys.stderr)
        entries.append(entry)
    parameters = sum(p.numel() for p in codec.parameters())
    return {"model": model, "sample_rate": codec.sample_rate, "channels": codec.config.audio_channels,
            "threads": threads, "parameters": parameters, "files": entries}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio", type=Path, nargs="+", help="held-out audio files")
    parser.add_argument("--model", action="append", required=True, help="codec folder (repeatable)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="decode timings: best of this many runs")
    parser.add_argument("--plots", type=Path, help="folder for spectrogram plots (PNG)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    report = {"models": [evaluate(m, args.audio, args.threads, args.repeats, args.plots) for m in args.model]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
