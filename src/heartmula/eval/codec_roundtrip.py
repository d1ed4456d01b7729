"""Codec round trip on real audio: encode -> decode a file and measure what came back.

Shared by `bench/codec_default.py` (codec checkpoints side by side) and `heartmula eval report` (the quality
report's codec section): metrics at the codec's rate against the original (`heartmula.eval.codec_metrics`),
per-codebook usage, encode/decode real-time factors, and a log-mel spectrogram plot of original vs decoded (the
listening proxy on paper).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from heartmula.audio import load_audio
from heartmula.eval.codec_metrics import codec_report, mel_filterbank
from heartmula.extras import require


def codebook_usage(codes: np.ndarray) -> list[dict]:
    """Per codebook: distinct codes used and the perplexity of their distribution (codebook collapse shows here)."""
    usage = []
    for row in codes:
        _, counts = np.unique(row, return_counts=True)
        p = counts / counts.sum()
        usage.append({"distinct": int(len(counts)), "perplexity": round(float(np.exp(-(p * np.log(p)).sum())), 1)})
    return usage


def log_mel(audio: np.ndarray, rate: int, n_mels: int = 128) -> np.ndarray:
    """log10 mel power [n_mels, frames] of the channel mean (2048-point FFT, hop 512)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(audio.mean(0), dtype=np.float32))
    spec = torch.stft(x, 2048, 512, window=torch.hann_window(2048), return_complex=True).abs().pow(2)
    return (mel_filterbank(rate, 2048, n_mels) @ spec).clamp_min(1e-8).log10().numpy()


def plot_roundtrip(original: np.ndarray, decoded: np.ndarray, rate: int, title: str, path: Path) -> None:
    """Log-mel spectrograms of original (top) and decoded (bottom) on one colour scale, as a PNG."""
    require("eval", "matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = log_mel(original, rate), log_mel(decoded, rate)
    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    low = max(a.max(), b.max()) - 8  # 80 dB of range: quieter detail is inaudible in a mix anyway
    for ax, spec, name in ((axes[0], a, "original"), (axes[1], b, "decoded")):
        ax.imshow(spec, origin="lower", aspect="auto", vmin=low, extent=(0, spec.shape[1] * 512 / rate, 0, 128))
        ax.set_ylabel(f"{name}\nmel band")
    axes[1].set_xlabel("seconds")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def roundtrip(codec, path: str | Path, repeats: int = 1, plot: Path | None = None) -> dict:
    """Encode and decode one file with a loaded codec (it needs an encoder); returns a JSON-ready entry with the
    metrics, the real-time factors (decode: best of `repeats` runs) and codebook usage; `plot`: PNG to write."""
    path = Path(path)
    rate = codec.sample_rate
    audio, _ = load_audio(path, sample_rate=rate, channels=codec.config.audio_channels)
    seconds = audio.shape[1] / rate
    began = time.perf_counter()
    codes = codec.encode(audio, rate)
    encode_s = time.perf_counter() - began
    decode_s = float("inf")
    for _ in range(max(1, repeats)):
        began = time.perf_counter()
        decoded, _ = codec.decode(codes)
        decode_s = min(decode_s, time.perf_counter() - began)
    decoded = decoded[:, : audio.shape[1]]  # the codec pads to whole frames
    if plot is not None:
        plot_roundtrip(audio, decoded, rate, f"{path.name}: original vs codec round trip", plot)
    return {"file": path.name, "seconds": round(seconds, 2), "metrics": codec_report(decoded, audio, rate),
            "encode_rtf": round(encode_s / seconds, 4), "decode_rtf": round(decode_s / seconds, 4),
            "codebooks": codebook_usage(codes)}
