"""The singing voice with the real espeak-ng and WORLD: pitch and timing follow the notes."""

from __future__ import annotations

import numpy as np
import pytest

from heartmula.data.singing import Note, Singer, SungUnit, VoiceConfig, load_pyworld, midi_to_hz


@pytest.fixture(scope="module")
def singer():
    return Singer(VoiceConfig(gender="male", vibrato_cents=0.0))


@pytest.mark.parametrize("language,word", [("en", "morning"), ("zh", "花开"), ("ja", "さくら"), ("ko", "하늘"),
                                           ("es", "noche")])
def test_sung_word_follows_pitch_and_timing(singer, language, word):
    pitch = 52
    syllables = {"morning": 2, "noche": 2}.get(word, len(word))
    notes = [[Note(0.5 + 0.6 * i, 0.6, pitch)] for i in range(syllables)]
    line = singer.sing([SungUnit(word, ["x"] * syllables, notes)], language, 0.5 + 0.6 * syllables + 0.5)
    audio, rate = line.audio.astype(np.float64), line.sample_rate
    loud = np.flatnonzero(np.abs(audio) > 0.02 * np.abs(audio).max())
    assert abs(loud[0] / rate - 0.5) < 0.05  # starts on the first note
    assert abs(loud[-1] / rate - (0.5 + 0.6 * syllables - 0.03)) < 0.08  # ends at the last note's release
    pw = load_pyworld()
    f0, _ = pw.harvest(audio, rate, f0_floor=60.0, f0_ceil=400.0, frame_period=10.0)
    voiced = f0[f0 > 0]
    assert len(voiced) > 20
    assert abs(np.median(voiced) / midi_to_hz(pitch) - 1) < 0.03
    assert [t["start"] for t in line.syllable_timing] == [n[0].onset for n in notes]


def test_singing_is_deterministic(singer):
    units = [SungUnit("love", ["love"], [[Note(0.1, 0.5, 50), Note(0.6, 0.4, 52)]])]
    first = singer.sing(units, "en", 1.2).audio
    second = Singer(VoiceConfig(gender="male", vibrato_cents=0.0)).sing(units, "en", 1.2).audio
    assert np.array_equal(first, second)
