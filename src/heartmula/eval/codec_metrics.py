"""Codec quality metrics: reconstruction vs reference, both [channels, samples] at one sample rate.

- multi-resolution STFT distance (spectral convergence + log-magnitude L1, averaged over 3 FFT sizes; lower is
  better; differentiable, so the codec trainer uses it as a loss);
- mel distance (L1 of log mel spectrograms, 80 bands; lower is better);
- SI-SDR in dB (scale-invariant signal-to-distortion ratio; higher is better; phase-sensitive, so a generative
  decoder can sound right and still score low);
- loudness difference in LU (BS.1770 integrated loudness, K-weighting applied in the frequency domain, gated).
"""

from __future__ import annotations

import numpy as np
import torch

FFT_SIZES = (512, 1024, 2048)


def _as_tensor(x) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x, dtype=np.float32) if not isinstance(x, torch.Tensor) else x).float()
    return x[None] if x.dim() == 1 else x


def _match(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _as_tensor(a), _as_tensor(b)
    n = min(a.shape[-1], b.shape[-1])
    return a[..., :n], b[..., :n]


def _magnitude(x: torch.Tensor, n_fft: int) -> torch.Tensor:
    window = torch.hann_window(n_fft, device=x.device)
    flat = x.reshape(-1, x.shape[-1])
    # Zero padding (not reflection) so that clips shorter than the FFT still work.
    spec = torch.stft(flat, n_fft, hop_length=n_fft // 4, window=window, pad_mode="constant", return_complex=True)
    return spec.abs().clamp_min(1e-7)


def multi_resolution_stft_distance(estimate, reference, fft_sizes=FFT_SIZES) -> torch.Tensor:
    estimate, reference = _match(estimate, reference)
    total = 0.0
    for n_fft in fft_sizes:
        est, ref = _magnitude(estimate, n_fft), _magnitude(reference, n_fft)
        convergence = torch.linalg.norm(ref - est) / torch.linalg.norm(ref).clamp_min(1e-7)
        log_l1 = (est.log() - ref.log()).abs().mean()
        total = total + convergence + log_l1
    return total / len(fft_sizes)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int = 80) -> torch.Tensor:
    """[n_mels, n_fft // 2 + 1] triangular filters on the HTK mel scale, up to sample_rate / 2."""

    def to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def to_hz(m):
        return 700.0 * (10 ** (np.asarray(m) / 2595.0) - 1.0)

    edges = to_hz(np.linspace(to_mel(0.0), to_mel(sample_rate / 2), n_mels + 2))
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - lower) / np.maximum(centre - lower, 1e-9)
    falling = (upper - bins[None]) / np.maximum(upper - centre, 1e-9)
    return torch.from_numpy(np.clip(np.minimum(rising, falling), 0, None).astype(np.float32))


def mel_distance(estimate, reference, sample_rate: int, n_fft: int = 2048, n_mels: int = 80) -> torch.Tensor:
    estimate, reference = _match(estimate, reference)
    bank = mel_filterbank(sample_rate, n_fft, n_mels).to(estimate.device)
    est = (bank @ _magnitude(estimate, n_fft).pow(2)).clamp_min(1e-8).log10()
    ref = (bank @ _magnitude(reference, n_fft).pow(2)).clamp_min(1e-8).log10()
    return (est - ref).abs().mean()


def si_sdr(estimate, reference) -> float:
    """Mean over channels, in dB."""
    estimate, reference = _match(estimate, reference)
    estimate = estimate - estimate.mean(-1, keepdim=True)
    reference = reference - reference.mean(-1, keepdim=True)
    scale = (estimate * reference).sum(-1, keepdim=True) / reference.pow(2).sum(-1, keepdim=True).clamp_min(1e-12)
    target = scale * reference
    noise = estimate - target
    ratio = target.pow(2).sum(-1) / noise.pow(2).sum(-1).clamp_min(1e-12)
    return float((10 * torch.log10(ratio.clamp_min(1e-12))).mean())


def _biquad_power(b, a, freqs: np.ndarray, sample_rate: int) -> np.ndarray:
    z = np.exp(-1j * 2 * np.pi * freqs / sample_rate)
    response = (b[0] + b[1] * z + b[2] * z**2) / (a[0] + a[1] * z + a[2] * z**2)
    return np.abs(response) ** 2


def _k_weighting_gain(freqs: np.ndarray, sample_rate: int) -> np.ndarray:
    """|H(f)|^2 of the BS.1770 K filter: a +4 dB high shelf at 1.5 kHz, then a 38 Hz high-pass (RBJ biquads
    designed for `sample_rate`)."""
    amp = 10 ** (4.0 / 40)
    w0 = 2 * np.pi * 1500.0 / sample_rate
    alpha = np.sin(w0) / (2 / np.sqrt(2))
    cos, root = np.cos(w0), 2 * np.sqrt(amp) * alpha
    shelf_b = (amp * ((amp + 1) + (amp - 1) * cos + root), -2 * amp * ((amp - 1) + (amp + 1) * cos),
               amp * ((amp + 1) + (amp - 1) * cos - root))
    shelf_a = ((amp + 1) - (amp - 1) * cos + root, 2 * ((amp - 1) - (amp + 1) * cos),
               (amp + 1) - (amp - 1) * cos - root)
    w0 = 2 * np.pi * 38.0 / sample_rate
    alpha, cos = np.sin(w0) / (2 * 0.5), np.cos(w0)
    high_b = ((1 + cos) / 2, -(1 + cos), (1 + cos) / 2)
    high_a = (1 + alpha, -2 * cos, 1 - alpha)
    return _biquad_power(shelf_b, shelf_a, freqs, sample_rate) * _biquad_power(high_b, high_a, freqs, sample_rate)


def integrated_loudness(audio, sample_rate: int) -> float:
    """BS.1770-4 integrated loudness in LUFS (absolute gate -70 LUFS, relative gate -10 LU); -inf for silence."""
    x = _as_tensor(audio).double().numpy()
    spectrum = np.fft.rfft(x, axis=-1)
    gain = _k_weighting_gain(np.fft.rfftfreq(x.shape[-1], 1 / sample_rate), sample_rate)
    weighted = np.fft.irfft(spectrum * np.sqrt(gain), n=x.shape[-1], axis=-1)
    block, step = int(0.4 * sample_rate), int(0.1 * sample_rate)
    if x.shape[-1] < block:
        block = step = x.shape[-1]
    starts = range(0, x.shape[-1] - block + 1, step)
    power = np.array([(weighted[:, s: s + block] ** 2).mean(-1).sum() for s in starts])
    loudness = -0.691 + 10 * np.log10(np.maximum(power, 1e-20))
    gated = power[loudness > -70]
    if gated.size == 0:
        return float("-inf")
    relative = -0.691 + 10 * np.log10(gated.mean()) - 10
    gated = power[(loudness > -70) & (loudness > relative)]
    return float(-0.691 + 10 * np.log10(gated.mean()))


def loudness_difference(estimate, reference, sample_rate: int) -> float:
    """Integrated loudness of the estimate minus that of the reference, in LU."""
    return integrated_loudness(estimate, sample_rate) - integrated_loudness(reference, sample_rate)


def codec_report(estimate, reference, sample_rate: int) -> dict[str, float]:
    """All metrics at once, as plain floats (JSON-ready)."""
    with torch.no_grad():
        return {
            "mrstft": round(float(multi_resolution_stft_distance(estimate, reference)), 4),
            "mel_distance": round(float(mel_distance(estimate, reference, sample_rate)), 4),
            "si_sdr_db": round(si_sdr(estimate, reference), 2),
            "loudness_diff_lu": round(loudness_difference(estimate, reference, sample_rate), 2),
        }
