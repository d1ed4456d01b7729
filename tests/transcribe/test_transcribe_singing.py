"""Japanese singing from pysinsy (a real HTS singing voice) transcribed by the embedded base; skipped when pysinsy
is not installed (a source build: gcc, cython, setuptools<81)."""

from __future__ import annotations

import pytest

from heartmula.audio import save_audio
from heartmula.eval.lyrics import score

pysinsy = pytest.importorskip("pysinsy")

# "かえるのうたが きこえてくるよ" (the frog round) in eighth notes on one pitch: (kana, MIDI pitch, quarter notes)
LYRICS = "かえるのうたがきこえてくるよ"
SONG = [(kana, 67, 0.5) for kana in LYRICS] + [("よ", 67, 2.0)]
STEPS = ["C", "C", "D", "D", "E", "F", "F", "G", "G", "A", "A", "B"]
ALTERS = [0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 1, 0]


def music_xml(notes, tempo=100) -> str:
    """A one-part score in 4/4: a bar of rest (sinsy wants to start on a rest), the notes, a closing rest."""
    divisions = 2
    events = [(None, None, 4.0), *notes, (None, None, 4.0)]
    measures, current, filled = [], [], 0.0
    for text, pitch, quarters in events:
        duration = f"<duration>{int(quarters * divisions)}</duration>"
        if text is None:
            current.append(f"<note><rest/>{duration}</note>")
        else:
            step, alter, octave = STEPS[pitch % 12], ALTERS[pitch % 12], pitch // 12 - 1
            alter_xml = f"<alter>{alter}</alter>" if alter else ""
            current.append(f"<note><pitch><step>{step}</step>{alter_xml}<octave>{octave}</octave></pitch>{duration}"
                           f"<lyric><text>{text}</text></lyric></note>")
        filled += quarters
        if filled >= 4:
            measures.append(current)
            current, filled = [], 0.0
    if current:
        measures.append(current)
    attributes = (f'<attributes><divisions>{divisions}</divisions><time><beats>4</beats><beat-type>4</beat-type>'
                  f'</time></attributes><direction><sound tempo="{tempo}"/></direction>')
    body = "".join(f'<measure number="{i + 1}">{attributes if i == 0 else ""}{"".join(m)}</measure>'
                   for i, m in enumerate(measures))
    return ('<?xml version="1.0" encoding="UTF-8"?><score-partwise version="3.1"><part-list><score-part id="P1">'
            f'<part-name>V</part-name></score-part></part-list><part id="P1">{body}</part></score-partwise>')


def test_sung_japanese_is_transcribed(tmp_path, base_transcriber):
    xml = tmp_path / "frog.xml"
    xml.write_text(music_xml(SONG), encoding="utf-8")
    wave, rate = pysinsy.synthesize(str(xml))
    audio = wave / max(abs(wave).max(), 1e-6) * 0.8
    path = save_audio(tmp_path / "frog.wav", audio.astype("float32"), int(rate))
    result = base_transcriber.transcribe(path)
    assert result.language == "ja", result.text
    # the final note holds よ, so "...くるよ" or "...くるよよ" are both faithful
    # scored by kana reading: a faithful transcript ("会えるの歌が聞こえてくるよよ") stays under 10% CER
    assert score(LYRICS + "よ", result.text, "ja", phonemes=False)["cer"] <= 0.10, result.text
