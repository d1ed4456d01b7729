"""Outputs are what the recorded code computed: codes of fixed seeds in every mode, and codec audio to the bit."""

import json

import numpy as np
import pytest
from golden_cases import CODEC_AUDIO, LM_CODES, codec_cases, lm_cases, platform_key, write_lm_root


def test_lm_codes_match_the_recording(tmp_path):
    recorded = np.load(LM_CODES)
    if str(recorded["platform"]) != platform_key():
        pytest.skip(f"recorded on {recorded['platform']}, this is {platform_key()}")
    codes = lm_cases(write_lm_root(tmp_path))
    assert sorted(codes) == sorted(k for k in recorded.files if k != "platform")
    for key, value in codes.items():
        np.testing.assert_array_equal(value, recorded[key], err_msg=key)


def test_codec_audio_matches_the_recording_bit_for_bit():
    recorded = json.loads(CODEC_AUDIO.read_text())
    if recorded.pop("platform") != platform_key():
        pytest.skip("recorded on another platform")
    assert codec_cases() == recorded
