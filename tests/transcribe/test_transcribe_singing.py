"""Japanese singing from pysinsy (a real HTS singing voice) transcribed by the embedded base; skipped when pysinsy
is not installed (a source build: gcc, cython, setuptools<81)."""

from __future__ import annotations

import pytest

from heartmula.audio import save_audio
from heartmula.data.sinsy import SungNote, sing
from heartmula.eval.lyrics import score

pytest.importorskip("pysinsy")

# "かえるのうたが きこえてくるよ" (the frog round) in eighth notes on one pitch
LYRICS = "かえるのうたがきこえてくるよ"
SONG = [SungNote(kana, 67, 0.5) for kana in LYRICS] + [SungNote("よ", 67, 2.0)]


def test_sung_japanese_is_transcribed(tmp_path, base_transcriber):
    audio, rate = sing(SONG)
    path = save_audio(tmp_path / "frog.wav", audio, rate)
    result = base_transcriber.transcribe(path)
    assert result.language == "ja", result.text
    # the final note holds よ, so "...くるよ" or "...くるよよ" are both faithful
    # scored by kana reading: a faithful transcript ("会えるの歌が聞こえてくるよよ") stays under 10% CER
    assert score(LYRICS + "よ", result.text, "ja", phonemes=False)["cer"] <= 0.10, result.text
