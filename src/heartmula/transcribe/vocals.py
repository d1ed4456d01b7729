"""Lightweight vocal isolation that needs no trained weights: STFT masking in plain torch.

- "center": lead vocals are mixed to the centre of a stereo image while many instruments are panned. A time-
  frequency bin where left and right agree in phase and level (inter-channel coherence near 1) is kept from the
  mid signal, a bin where they differ is attenuated (Avendano & Jot's panning-index idea). Mono input passes
  unchanged, as nothing separates a centred voice from centred instruments there.
- "hpss": harmonic/percussive separation by median filtering (Fitzgerald): a bin that is smoother along time than
  along frequency is harmonic. Drums are removed; vocals and harmonic instruments stay. Works on mono.
- "center+hpss": both, in that order.

Whether isolation helps recognition depends on the mix; bench/transcribe_rtf.py measures it on a test mix.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from heartmula.errors import HeartMuLaError

METHODS = ("off", "center", "hpss", "center+hpss")
N_FFT = 1024
HOP = 256


def _stft(x: torch.Tensor) -> torch.Tensor:
    return torch.stft(x, N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True)


def _istft(spec: torch.Tensor, length: int) -> torch.Tensor:
    return torch.istft(spec, N_FFT, HOP, window=torch.hann_window(N_FFT), length=length)


def center_channel(stereo: np.ndarray, sharpness: float = 4.0) -> np.ndarray:
    """The centre-panned part of [2, samples] audio, mono [samples]."""
    left, right = _stft(torch.from_numpy(stereo[0])), _stft(torch.from_numpy(stereo[1]))
    cross = (left * right.conj()).abs()
    power = left.abs() ** 2 + right.abs() ** 2 + 1e-10
    coherence = (2 * cross / power).clamp(0, 1)  # 1 when L == R (centre), lower for panned or decorrelated bins
    mid = (left + right) / 2
    return _istft(mid * coherence**sharpness, stereo.shape[1]).numpy()


def _median_filter(magnitude: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Median over `size` bins along dim (0 = frequency, 1 = time), edges replicated; done in blocks of frames
    so a 10-minute song does not need `size` copies of its spectrogram at once."""
    pad = size // 2
    if dim == 1:
        padded = F.pad(magnitude[None], (pad, pad), mode="replicate")[0]
    else:
        padded = F.pad(magnitude.T[None], (pad, pad), mode="replicate")[0].T
    out = torch.empty_like(magnitude)
    frames = magnitude.shape[1]
    for start in range(0, frames, 2048):
        stop = min(start + 2048, frames)
        block = padded[:, start:stop + 2 * pad].unfold(1, size, 1) if dim == 1 else padded[:, start:stop].unfold(
            0, size, 1).transpose(0, 1)
        out[:, start:stop] = block.median(dim=-1).values if dim == 1 else block.median(dim=-1).values.T
    return out


def harmonic_part(mono: np.ndarray, time_bins: int = 17, freq_bins: int = 17) -> np.ndarray:
    spec = _stft(torch.from_numpy(mono))
    magnitude = spec.abs()
    harmonic = _median_filter(magnitude, time_bins, dim=1)
    percussive = _median_filter(magnitude, freq_bins, dim=0)
    mask = harmonic**2 / (harmonic**2 + percussive**2 + 1e-10)  # Wiener-like soft mask
    return _istft(spec * mask, mono.shape[0]).numpy()


def isolate_vocals(audio: np.ndarray, method: str) -> np.ndarray:
    """[channels, samples] float32 -> mono [samples] with the accompaniment attenuated by `method`."""
    if method not in METHODS:
        raise HeartMuLaError(f"unknown vocal isolation {method!r}: use one of {', '.join(METHODS)}")
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if method == "off" or audio.shape[1] < N_FFT:
        return audio.mean(axis=0)
    if "center" in method and audio.shape[0] == 2:
        mono = center_channel(audio)
    else:
        mono = audio.mean(axis=0)
    if "hpss" in method:
        mono = harmonic_part(np.ascontiguousarray(mono))
    return mono.astype(np.float32)
