"""Feature-domain augmentation for HeartCLAP training: voices mixed over real accompaniment, and the sound of
other rooms, equipment and codecs.

Training reads cached log-mel power [M, T] and chroma [12, T] features, so both work on those:
- a mix of a vocal stem and an accompaniment adds their mel powers (the cross term of two unrelated signals
  averages out over a mel band): log-mel of the mix = logaddexp of the two, at a chosen voice-to-backing level;
  the per-frame chroma profiles are averaged, weighted by each part's frame power;
- loudness: a constant added to the log-mel;
- EQ: a smooth random curve over the mel bins (a tilt plus slow bumps);
- band limits of low-bitrate codecs and small speakers: a steep low-pass (3-7.5 kHz) or a high-pass (60-250 Hz);
- reverb: each band's power smeared forward in time by an exponential decay (T60 0.3-2.5 s) at a random wet level;
- a noise floor 25-50 dB below the clip's mean power.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from heartmula.clap.config import HeartCLAPConfig

FLOOR = math.log(1e-6)  # the front end's log-mel of silence
DB = math.log(10.0) / 10.0  # one decibel of power in natural-log units


@dataclass
class AugmentConfig:
    rate: float = 0.5  # share of clips that get the room/equipment/codec treatment (each effect then 1 in 2)
    loudness_db: float = 9.0  # extra random level change of treated clips, +/- dB
    eq_db: float = 6.0  # largest EQ tilt and bump, +/- dB
    voice_db: tuple[float, float] = (-2.0, 6.0)  # voice level over the accompaniment in mixes


def mel_centres(config: HeartCLAPConfig) -> np.ndarray:
    """Centre frequency (Hz) of each mel band of the front end."""
    lo, hi = (2595.0 * np.log10(1.0 + f / 700.0) for f in (config.f_min, config.f_max))
    mels = np.linspace(lo, hi, config.n_mels + 2)[1:-1]
    return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)


def mean_power(mel: np.ndarray, active_db: float | None = None) -> float:
    """Log of the mean mel power; with `active_db`, over the frames within that many dB of the loudest frame."""
    frame = np.log(np.exp(mel.astype(np.float64)).mean(axis=0) + 1e-12)
    if active_db is not None:
        frame = frame[frame >= frame.max() - active_db * DB]
    return float(np.log(np.exp(frame).mean() + 1e-12))


def mix_voice(backing: tuple[np.ndarray, np.ndarray], voice: tuple[np.ndarray, np.ndarray],
              voice_db: float) -> tuple[np.ndarray, np.ndarray]:
    """(mel, chroma) of a vocal stem over an accompaniment (same shapes), the voice `voice_db` above the backing
    (mean power of the voiced frames against the backing's)."""
    back_mel, back_chroma = (np.asarray(a, np.float32) for a in backing)
    voice_mel, voice_chroma = (np.asarray(a, np.float32) for a in voice)
    shift = mean_power(back_mel) + voice_db * DB - mean_power(voice_mel, active_db=30.0)
    voice_mel = voice_mel + shift
    mel = np.logaddexp(back_mel, voice_mel)
    back_w = np.exp(back_mel.astype(np.float64)).sum(axis=0)
    voice_w = np.exp(voice_mel.astype(np.float64)).sum(axis=0)
    chroma = (back_w * back_chroma + voice_w * voice_chroma) / (back_w + voice_w + 1e-12)
    return mel.astype(np.float32), chroma.astype(np.float32)


def _band_gain(centres: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Log power gain per band of a steep (8th-order) low-pass or high-pass."""
    if rng.random() < 0.7:
        cutoff = rng.uniform(3000.0, 7500.0)
        return -torch.log1p((centres / cutoff) ** 16)
    cutoff = rng.uniform(60.0, 250.0)
    return -torch.log1p((cutoff / centres) ** 16)


def _eq_curve(bands: int, rng: random.Random, eq_db: float) -> torch.Tensor:
    x = torch.linspace(-1.0, 1.0, bands)
    curve = rng.uniform(-eq_db, eq_db) * x
    for k in (1, 2, 3):
        curve = curve + rng.uniform(-eq_db, eq_db) / (k + 1) * torch.cos(math.pi * k * (x + 1) / 2 + rng.random())
    return curve * DB


def _reverb(mel: torch.Tensor, rng: random.Random, hop_seconds: float) -> torch.Tensor:
    """Band powers [M, T] smeared forward by an exponential decay; the tail `wet_db` below the direct sound."""
    t60 = rng.uniform(0.3, 2.5)
    length = max(2, min(mel.shape[-1], int(t60 / hop_seconds)))
    decay = 10.0 ** (-6.0 * hop_seconds / t60)
    kernel = decay ** torch.arange(length, dtype=mel.dtype)
    kernel = kernel / kernel.sum() * 10.0 ** (rng.uniform(-15.0, 0.0) / 10.0)
    kernel[0] += 1.0
    power = torch.exp(mel).unsqueeze(1)  # [M, 1, T]
    smeared = F.conv1d(F.pad(power, (length - 1, 0)), kernel.flip(0).view(1, 1, -1))
    return torch.log(smeared.squeeze(1) + 1e-12)


def augment_clip(mel: torch.Tensor, rng: random.Random, config: HeartCLAPConfig,
                 augment: AugmentConfig) -> torch.Tensor:
    """One clip's log-mel [M, T] as heard through another room, equipment or codec (each effect with p = 1/2)."""
    centres = torch.from_numpy(mel_centres(config)).to(mel.dtype)
    out = mel + rng.uniform(-augment.loudness_db, augment.loudness_db) * DB
    if rng.random() < 0.5:
        out = out + _eq_curve(mel.shape[0], rng, augment.eq_db)[:, None]
    if rng.random() < 0.5:
        out = _reverb(out, rng, config.hop_length / config.sample_rate)
    if rng.random() < 0.5:
        out = out + _band_gain(centres, rng)[:, None]
    if rng.random() < 0.5:
        level = torch.logsumexp(out, dim=(0, 1)) - math.log(out.numel()) - rng.uniform(25.0, 50.0) * DB
        noise = level + 0.5 * torch.randn(out.shape, generator=torch.Generator().manual_seed(rng.randrange(2**31)))
        out = torch.logaddexp(out, noise)
    return torch.clamp(out, min=FLOOR)


def augment_batch(mel: torch.Tensor, rng: random.Random, config: HeartCLAPConfig,
                  augment: AugmentConfig) -> torch.Tensor:
    """[B, M, T] log-mel with `augment.rate` of the clips treated by `augment_clip`."""
    clips = [augment_clip(m, rng, config, augment) if rng.random() < augment.rate else m for m in mel]
    return torch.stack(clips)
