"""Fixtures for HeartCLAP tests: a tiny random model folder and a few synthetic songs with tags (tones vs noise)."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_clap_dir(tmp_path_factory):
    import torch

    from heartmula.clap import HeartCLAP, HeartCLAPConfig

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-clap")
    HeartCLAP(HeartCLAPConfig.tiny()).save_pretrained(folder)
    return folder


def tone_song(seconds: float, rate: int, seed: int) -> np.ndarray:
    """Slow sustained tones (a 'piano, slow' stand-in)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    pitch = 220.0 * 2 ** (rng.integers(0, 12) / 12)
    return (0.3 * np.sin(2 * np.pi * pitch * t) * np.exp(-(t % 1.0))).astype(np.float32)


def noise_song(seconds: float, rate: int, seed: int) -> np.ndarray:
    """Fast noise bursts (a 'drums, fast' stand-in)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * rng.standard_normal(t.size) * np.exp(-8 * (t % 0.25))).astype(np.float32)


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory):
    """manifest.jsonl with 8 training songs (two kinds) and 2 held-out songs, plus one broken file."""
    from heartmula.audio import save_audio

    root = tmp_path_factory.mktemp("clap-corpus")
    rows = []
    for i in range(10):
        kind = i % 2
        audio = tone_song(3.0, 16000, i) if kind == 0 else noise_song(3.0, 16000, i)
        save_audio(root / "audio" / f"s{i}.flac", audio, 16000)
        rows.append({"id": f"s{i}", "audio": f"audio/s{i}.flac", "vocals": None, "lyrics": "", "timing": [],
                     "language": None, "tags": "classical,piano,slow,calm" if kind == 0 else "rock,drums,fast,intense",
                     "duration": 3.0, "sample_rate": 16000, "source": {"corpus": "test", "work": f"w{i}"},
                     "license": "test", "split": "train" if i < 8 else ("val" if i == 8 else "test")})
    (root / "audio" / "broken.flac").write_bytes(b"not audio at all")
    rows.append({**rows[0], "id": "broken", "audio": "audio/broken.flac"})
    with open(root / "manifest.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return root
