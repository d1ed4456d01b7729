"""Japanese singing from pysinsy (a real HTS singing voice) transcribed by the embedded base; skipped when pysinsy
is not installed (it builds from source, see docs in shared/reference)."""

from __future__ import annotations

import pytest

from heartmula.audio import save_audio
from heartmula.eval.lyrics import score

pysinsy = pytest.importorskip("pysinsy")

# "さくら さくら やよいの そらは" on the folk song's notes: (kana, MIDI pitch, quarter notes)
SONG = [("さ", 69, 1), ("く", 69, 1), ("ら", 71, 2), ("さ", 69, 1), ("く", 69, 1), ("ら", 71, 2),
        ("や", 69, 1), ("よ", 71, 1), ("い", 72, 1), ("の", 71, 1), ("そ", 69, 1), ("ら", 71, 0.5),
        ("は", 69, 0.5), ("ー", 65, 2)]
STEPS = ["C", "C", "D", "D", "E", "F", "F", "G", "G", "A", "A", "B"]
ALTERS = [0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 1, 0]


def music_xml(notes, tempo=90) -> str:
    divisions = 2
    body = [f'<direction><sound tempo="{tempo}"/></direction>']
    for text, pitch, quarters in notes:
        step, alter, octave = STEPS[pitch % 12], ALTERS[pitch % 12], pitch // 12 - 1
        lyric = "" if text == "ー" else f"<lyric><text>{text}</text></lyric>"
        alter_xml = f"<alter>{alter}</alter>" if alter else ""
        if text == "ー":
            body.append(f"<note><rest/><duration>{int(quarters * divisions)}</duration></note>")
            continue
        body.append(f"<note><pitch><step>{step}</step>{alter_xml}<octave>{octave}</octave></pitch>"
                    f"<duration>{int(quarters * divisions)}</duration>{lyric}</note>")
    return ('<?xml version="1.0" encoding="UTF-8"?><score-partwise version="3.1"><part-list><score-part id="P1">'
            '<part-name>V</part-name></score-part></part-list><part id="P1"><measure number="1"><attributes>'
            f'<divisions>{divisions}</divisions><time><beats>16</beats><beat-type>4</beat-type></time></attributes>'
            + "".join(body) + "</measure></part></score-partwise>")


def test_sung_japanese_is_transcribed(tmp_path, base_transcriber):
    xml = tmp_path / "sakura.xml"
    xml.write_text(music_xml(SONG), encoding="utf-8")
    sinsy = pysinsy.sinsy.Sinsy()
    assert sinsy.setLanguages("j", pysinsy.get_default_dic_dir())
    assert sinsy.loadVoices(pysinsy.get_nitech_jp_song070_f001_htsvoice())
    assert sinsy.loadScoreFromMusicXML(str(xml))
    wave = sinsy.synthesize()
    audio = wave / max(abs(wave).max(), 1e-6) * 0.8
    path = save_audio(tmp_path / "sakura.wav", audio.astype("float32"), 48000)
    result = base_transcriber.transcribe(path)
    reference = "さくら さくら やよいの そらは"
    assert result.language == "ja", result.text
    assert score(reference, result.text, "ja", phonemes=False)["cer"] <= 0.25, result.text
