import numpy as np
import pytest

from heartmula.audio import fit_peak


def test_fit_peak_leaves_quiet_audio_alone():
    audio = np.array([[0.5, -0.9, 0.95]], dtype=np.float32)
    assert fit_peak(audio) is audio


def test_fit_peak_scales_a_loud_song_down_as_a_whole():
    audio = np.array([[0.2, -1.6, 0.8], [1.2, 0.0, -0.4]], dtype=np.float32)
    fitted = fit_peak(audio)
    assert fitted.dtype == np.float32 and fitted.shape == audio.shape
    assert np.abs(fitted).max() == pytest.approx(0.98)
    assert np.allclose(fitted * (1.6 / 0.98), audio, atol=1e-6)  # one gain for every sample: no distortion
