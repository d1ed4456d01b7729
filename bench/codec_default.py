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
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "codec_default.json"


def codebook_usage(codes: np.ndarray) -> list[dict]:
    usage = []
    for row in codes:
        _, counts = np.unique(row, return_counts=True)
        p = counts / counts.sum()
        usage.append({"distinct": int(len(counts)), "perplexity": round(float(np.exp(-(p * np.log(p)).sum())), 1)})
    return usage


def log_mel(audio: np.ndarray, rate: int) -> np.ndarray:
    import torch

    from heartmula.eval.codec_metrics import mel_filterbank

    x = torch.from_numpy(audio.mean(0))
    spec = torch.stft(x, 2048, 512, window=torch.hann_window(2048), return_complex=True).abs().pow(2)
    return (mel_filterbank(rate, 2048, 128) @ spec).clamp_min(1e-8).log10().numpy()


def plot(original: np.ndarray, decoded: np.ndarray, rate: int, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = log_mel(original, rate), log_mel(decoded, rate)
    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    low = max(a.max(), b.max()) - 8
    for ax, spec, name in ((axes[0], a, "original"), (axes[1], b, "decoded")):
        ax.imshow(spec, origin="lower", aspect="auto", vmin=low, extent=(0, spec.shape[1] * 512 / rate, 0, 128))
        ax.set_ylabel(f"{name}\nmel band")
    axes[1].set_xlabel("seconds")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def evaluate(model: str, files: list[Path], threads: int, repeats: int, plots: Path | None) -> dict:
    import torch

    from heartmula.audio import load_audio
    from heartmula.codec import load_codec
    from heartmula.eval.codec_metrics import codec_report

    torch.set_num_threads(threads)
    codec = load_codec(model)
    rate = codec.sample_rate
    entries = []
    for path in files:
        audio, _ = load_audio(path, sample_rate=rate, channels=codec.config.audio_channels)
        seconds = audio.shape[1] / rate
        began = time.perf_counter()
        codes = codec.encode(audio, rate)
        encode_s = time.perf_counter() - began
        decode_s = float("inf")
        for _ in range(repeats):
            began = time.perf_counter()
            decoded, _ = codec.decode(codes)
            decode_s = min(decode_s, time.perf_counter() - began)
        decoded = decoded[:, : audio.shape[1]]
        entry = {"file": path.name, "seconds": round(seconds, 2), "metrics": codec_report(decoded, audio, rate),
                 "encode_rtf": round(encode_s / seconds, 4), "decode_rtf": round(decode_s / seconds, 4),
                 "codebooks": codebook_usage(codes)}
        if plots is not None:
            name = Path(model).name or "model"
            plot(audio, decoded, rate, f"{path.stem} through {model}", plots / f"{name}__{path.stem}.png")
        print(json.dumps({k: entry[k] for k in ("file", "metrics", "decode_rtf")}), file=sys.stderr)
        entries.append(entry)
    parameters = sum(p.numel() for p in codec.parameters())
    return {"model": model, "sample_rate": rate, "channels": codec.config.audio_channels, "threads": threads,
            "parameters": parameters, "files": entries}


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
