import numpy as np
import pytest

from heartmula.eval.codec_metrics import (
    codec_report,
    integrated_loudness,
    loudness_difference,
    mel_distance,
    multi_resolution_stft_distance,
    si_sdr,
)

RATE = 16000


@pytest.fixture(scope="module")
def music():
    rng = np.random.default_rng(0)
    t = np.arange(2 * RATE) / RATE
    tones = sum(np.sin(2 * np.pi * f * t) / (i + 1) for i, f in enumerate([220, 330, 440, 660]))
    return np.stack([tones, 0.8 * tones]).astype(np.float32) * 0.2 + 0.01 * rng.standard_normal((2, t.size)).astype(
        np.float32)


def test_identical_audio_scores_perfectly(music):
    assert float(multi_resolution_stft_distance(music, music)) == pytest.approx(0.0, abs=1e-6)
    assert float(mel_distance(music, music, RATE)) == pytest.approx(0.0, abs=1e-6)
    assert si_sdr(music, music) > 80
    assert loudness_difference(music, music, RATE) == pytest.approx(0.0, abs=1e-9)


def test_more_distortion_scores_worse(music):
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(music.shape).astype(np.float32)
    light, heavy = music + 0.01 * noise, music + 0.1 * noise
    assert float(multi_resolution_stft_distance(light, music)) < float(multi_resolution_stft_distance(heavy, music))
    assert float(mel_distance(light, music, RATE)) < float(mel_distance(heavy, music, RATE))
    assert si_sdr(light, music) > si_sdr(heavy, music) + 10


def test_si_sdr_ignores_scale_and_loudness_tracks_gain(music):
    assert si_sdr(0.3 * music, music) > 80
    assert loudness_difference(0.5 * music, music, RATE) == pytest.approx(-6.02, abs=0.05)


def test_loudness_of_a_reference_tone():
    # BS.1770: a full-scale 1 kHz sine in one channel reads -3.01 LUFS.
    t = np.arange(3 * 48000) / 48000
    assert integrated_loudness(np.sin(2 * np.pi * 1000 * t)[None], 48000) == pytest.approx(-3.01, abs=0.05)
    assert integrated_loudness(np.zeros((1, 48000)), 48000) == float("-inf")


def test_report_is_json_ready(music):
    report = codec_report(music * 0.9, music, RATE)
    assert set(report) == {"mrstft", "mel_distance", "si_sdr_db", "loudness_diff_lu"}
    assert all(isinstance(v, float) for v in report.values())
