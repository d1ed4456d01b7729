"""Phonetic features for the codec's encoder: a pre-trained speech encoder's view of the audio.

Why: a codec trained on reconstruction losses alone spends its few bits on what dominates a mix (the
accompaniment) and keeps too little of the sung words for a listener or a transcriber to read them. HeartCodec
itself and Mimi put phonetics into their tokens from pre-trained features; here the spectral encoder adds a
projection of the embedded multilingual Whisper encoder's last layer to its own analysis at the latent rate
(`spectral.SpectralEncoder`), and training distils codebook 0 towards the same features (`distillation_loss`).

    audio -> 16 kHz -> Whisper log-mel (30 s windows) -> Whisper encoder -> [frames at 50 Hz, 512]
          -> mean of each pair of frames -> [latent frames at 25 Hz, 512]

Only encoding runs Whisper; decoding reads codes and is as fast as without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from heartmula.audio import resample
from heartmula.errors import HeartMuLaError
from heartmula.transcribe.convert import convert_ct2_to_transformers, is_current_conversion
from heartmula.transcribe.models import cache_dir, locate_model

WHISPER_RATE = 16000
WHISPER_WINDOW = 30 * WHISPER_RATE  # samples per encoder pass (Whisper's fixed 30 s input)
WHISPER_HOP = 320  # input samples per encoder output frame (50 frames/s)


def whisper_folder(model: str | os.PathLike) -> Path:
    """A transformers Whisper folder for `model`: an embedded model's name (converted once from its CTranslate2
    weights into the transcriber's cache) or a folder."""
    location = locate_model(str(model))
    if location.backend == "transformers":
        return location.path
    target = cache_dir() / "whisper" / f"{Path(location.name).name}-transformers"
    if not is_current_conversion(target):
        convert_ct2_to_transformers(location.path, target)
    return target


class WhisperFeatures:
    """Callable: mono audio at 16 kHz -> Whisper encoder features [frames at 50 Hz, feature_dim] (float32)."""

    def __init__(self, folder: str | os.PathLike):
        from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        try:
            model = WhisperForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32)
            self.extractor = WhisperFeatureExtractor.from_pretrained(str(folder))
        except (OSError, ValueError) as exc:
            raise HeartMuLaError(f"cannot load the Whisper folder {folder} for phonetic features: {exc}") from None
        self.encoder = model.model.encoder.eval()
        self.feature_dim = model.config.d_model

    @torch.no_grad()
    def __call__(self, audio: np.ndarray) -> torch.Tensor:
        frames = -(-len(audio) // WHISPER_HOP)
        out = []
        for start in range(0, max(len(audio), 1), WHISPER_WINDOW):
            chunk = np.asarray(audio[start: start + WHISPER_WINDOW], dtype=np.float32)
            mel = self.extractor(chunk, sampling_rate=WHISPER_RATE, return_tensors="pt").input_features
            hidden = self.encoder(mel.to(self.encoder.conv1.weight.dtype)).last_hidden_state[0]
            out.append(hidden[: -(-len(chunk) // WHISPER_HOP)].float())
        return torch.cat(out)[:frames]


_LOADED: dict[str, WhisperFeatures] = {}


def load_whisper_features(model: str | os.PathLike) -> WhisperFeatures:
    """The feature extractor for `model`, loaded once per process."""
    key = str(model)
    if key not in _LOADED:
        _LOADED[key] = WhisperFeatures(whisper_folder(model))
    return _LOADED[key]


def to_latent_rate(features: torch.Tensor, latent_frames: int) -> torch.Tensor:
    """[frames at 50 Hz, D] -> [D, latent_frames] at 25 Hz: latent frame l (40 ms) is the mean of Whisper frames
    2l and 2l + 1; missing frames at the end repeat the last one."""
    needed = 2 * latent_frames
    if features.shape[0] < needed:
        tail = features[-1:] if features.shape[0] else features.new_zeros(1, features.shape[1])
        features = torch.cat([features, tail.expand(needed - features.shape[0], -1)])
    return features[:needed].reshape(latent_frames, 2, -1).mean(dim=1).t()


def phonetic_features(extract, audio: torch.Tensor, sample_rate: int, samples_per_latent: int) -> torch.Tensor:
    """audio [B, 1, S] at `sample_rate` (S a multiple of `samples_per_latent`) -> features [B, D, S /
    samples_per_latent] from `extract` (a WhisperFeatures or any callable of 16 kHz mono audio)."""
    latent_frames = audio.shape[-1] // samples_per_latent
    rows = []
    for item in audio[:, 0].detach().float().cpu().numpy():
        features = extract(resample(item[None], sample_rate, WHISPER_RATE)[0])
        rows.append(to_latent_rate(features, latent_frames))
    return torch.stack(rows).to(audio.device)


def distillation_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity per frame, averaged: predicted and target [B, T, D] (Mimi's semantic distillation)."""
    return (1 - F.cosine_similarity(predicted, target, dim=-1)).mean()


def code_rate(features: torch.Tensor) -> torch.Tensor:
    """Latent-rate features [B, D, L] -> [B, ceil(L / 2), D] at the code rate (mean of each pair; an odd length is
    padded with its last frame, as the code encoder pads its input)."""
    if features.shape[-1] % 2:
        features = F.pad(features, (0, 1), mode="replicate")
    frames = features.shape[-1] // 2
    return features.reshape(*features.shape[:2], frames, 2).mean(-1).transpose(1, 2)
