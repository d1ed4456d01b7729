"""The weight-free vocal isolation methods do what they claim on mixes whose parts are known."""

from __future__ import annotations

import numpy as np
import pytest

from heartmula.errors import HeartMuLaError
from heartmula.transcribe.vocals import isolate_vocals

RATE = 16000


def part_energy(output: np.ndarray, part: np.ndarray) -> float:
    """Energy of `output` along `part` (least-squares projection): how much of that part survived."""
    return float(np.dot(output, part) ** 2 / np.dot(part, part))


def test_center_keeps_the_centred_voice_and_drops_panned_instruments(make_speech):
    voice = make_speech("Walking down the road tonight", "en-us")
    t = np.arange(len(voice)) / RATE
    left_guitar = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
    right_organ = 0.3 * np.sign(np.sin(2 * np.pi * 330 * t)) * 0.5
    stereo = np.stack([voice + left_guitar, voice + right_organ]).astype(np.float32)
    out = isolate_vocals(stereo, "center")
    plain = isolate_vocals(stereo, "off")
    instruments = (left_guitar + right_organ) / 2
    ratio_after = part_energy(out, voice) / part_energy(out, instruments)
    ratio_before = part_energy(plain, voice) / part_energy(plain, instruments)
    assert ratio_after > 10 * ratio_before
    assert part_energy(out, voice) > 0.5 * part_energy(plain, voice)  # the voice itself mostly survives


def test_hpss_removes_clicks_and_keeps_tones():
    t = np.arange(4 * RATE) / RATE
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    clicks = np.zeros_like(t)
    clicks[:: RATE // 4] = 1.0  # a drum-like click every 250 ms
    out = isolate_vocals((tone + clicks)[None].astype(np.float32), "hpss")
    assert part_energy(out, tone) > 0.8 * part_energy(tone, tone)
    assert part_energy(out, clicks) < 0.1 * part_energy(clicks, clicks)


def test_mono_passes_center_unchanged_and_unknown_method_fails():
    mono = np.random.default_rng(0).normal(size=(1, RATE)).astype(np.float32)
    assert np.allclose(isolate_vocals(mono, "center"), mono[0])
    with pytest.raises(HeartMuLaError, match="unknown vocal isolation"):
        isolate_vocals(mono, "demucs")
