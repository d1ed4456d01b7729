"""A token cache shared by the trainer tests: six songs of 2-3 s (five train, one val), steady tones with lyrics,
tokenized with a tiny random codec."""

from __future__ import annotations

import numpy as np
import pytest

from heartmula.audio import save_audio
from heartmula.codec.pretrained import write_random_codec
from heartmula.manifest import write_manifest
from heartmula.train.token_cache import tokenize_manifest

TONE_LYRICS = ["[verse]\nthe night is young", "[verse]\nsing it loud and clear", "[chorus]\nla la la", ""]


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("tone_corpus")
    rows = []
    for i in range(6):
        seconds = 2.0 + i % 2
        t = np.arange(int(seconds * 16000)) / 16000
        tone = (0.3 * np.sin(2 * np.pi * (200 + 60 * i) * t)).astype(np.float32)
        save_audio(root / f"s{i}.flac", np.stack([tone, tone]), 16000)
        rows.append({"id": f"s{i}", "audio": f"s{i}.flac", "vocals": None, "lyrics": TONE_LYRICS[i % 4],
                     "timing": [], "language": "en", "tags": f"pop,{'happy' if i % 2 else 'sad'}",
                     "duration": seconds, "sample_rate": 16000, "source": {"corpus": "test"}, "license": "test",
                     "split": "val" if i == 5 else "train"})
    write_manifest(root / "manifest.jsonl", rows)
    codec = write_random_codec(root / "codec", "tiny-direct", seed=0)
    tokenize_manifest(root / "manifest.jsonl", codec, root / "cache", progress=False)
    return root / "cache"
