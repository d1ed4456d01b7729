"""`heartmula align`: known lyrics timed on real speech made by espeak-ng, with the embedded Whisper base."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from heartmula.audio import load_audio, save_audio
from heartmula.cli import main
from heartmula.cli.align import FORMATS
from heartmula.errors import HeartMuLaError
from heartmula.transcribe import TranscribeConfig
from heartmula.transcribe.align import (
    ALIGN_FORMATS,
    Aligner,
    needleman_wunsch,
    normalize_unit,
    read_lyrics,
    render_alignment,
    similarity_matrix,
    time_line_units,
)
from heartmula.transcribe.result import parse_lrc, parse_srt

VERSE = "Every morning I walk along the river."
CHORUS = "Sing it again, sing it loud tonight."
BRIDGE = "The sun is warm and the wind is gentle."
UNSUNG = "Purple elephants dance quietly on Mars."
LYRICS = f"[verse]\n{VERSE}\n\n[chorus]\n{CHORUS}\n{UNSUNG}\n\n[verse]\n{BRIDGE}\n\n[chorus]\n{CHORUS}\n"
GAP = 1.5


def speak(text: str, path):
    """English speech by espeak-ng as mono float32 at 16 kHz."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is missing: run `bash scripts/setup.sh`")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(path), text], check=True)
    return load_audio(path, 16000, 1)[0][0]


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    """verse, chorus, bridge, chorus with 1.5 s pauses (the UNSUNG line of the lyrics is never spoken), and the
    start of each spoken line in seconds."""
    folder = tmp_path_factory.mktemp("align")
    pieces, starts, position = [], [], GAP
    silence = np.zeros(int(GAP * 16000), dtype=np.float32)
    pieces.append(silence)
    for text in (VERSE, CHORUS, BRIDGE, CHORUS):
        speech = speak(text, folder / "line.wav")
        starts.append(position)
        pieces += [speech, silence]
        position += (len(speech) + len(silence)) / 16000
    path = save_audio(folder / "song.wav", np.concatenate(pieces), 16000)
    (folder / "lyrics.txt").write_text(LYRICS)
    return path, starts


@pytest.fixture(scope="module")
def aligner():
    return Aligner(TranscribeConfig(model="base", threads=2, language="en", vad=False))


@pytest.fixture(scope="module")
def alignment(aligner, song):
    path, _ = song
    return aligner.align(path, LYRICS)


def test_lines_are_timed_where_they_are_spoken_and_the_unsung_line_is_flagged(alignment, song):
    _, starts = song
    texts = [line.text for line in alignment.lines]
    assert texts == [VERSE, CHORUS, UNSUNG, BRIDGE, CHORUS]
    assert [line.section for line in alignment.lines] == ["verse", "chorus", "chorus", "verse", "chorus"]
    unsung = alignment.lines[2]
    assert unsung.status == "unsung" and unsung.start is None and unsung.end is None
    assert all(w.start is None for w in unsung.words)
    spoken_lines = [line for line in alignment.lines if line is not unsung]
    for line, start in zip(spoken_lines, starts):
        assert line.status == "sung" and line.confidence >= 0.8, line
        assert abs(line.start - start) < 0.3, (line.text, line.start, start)
    assert any("line 3 not heard" in w for w in alignment.warnings())


def test_repeated_chorus_lands_on_each_occurrence_and_times_run_forward(alignment, song):
    _, starts = song
    first, second = alignment.lines[1], alignment.lines[4]
    assert first.text == second.text
    assert abs(first.start - starts[1]) < 0.3 and abs(second.start - starts[3]) < 0.3
    last = 0.0
    for line in alignment.lines:
        if line.start is None:
            continue
        assert last - 1e-6 <= line.start <= line.end
        assert [w.text for w in line.words] == line.text.split()
        for word in line.words:
            assert line.start - 1e-6 <= word.start <= word.end <= line.end + 1e-6
        last = line.end


def test_formats_carry_line_and_word_times(alignment):
    lrc = render_alignment(alignment, "lrc")
    timed = [(t, text) for t, text in parse_lrc(lrc) if text]
    assert len(timed) == 4 and UNSUNG not in lrc  # the unsung line has no time to show
    assert timed[0][0] == pytest.approx(alignment.lines[0].start, abs=0.01)
    assert "<00:" in timed[0][1]  # word times (enhanced LRC)
    cues = parse_srt(render_alignment(alignment, "srt"))
    assert [c[2] for c in cues] == [VERSE, CHORUS, BRIDGE, CHORUS]
    data = json.loads(render_alignment(alignment, "json"))
    assert data["lines"][2]["status"] == "unsung" and data["lines"][2]["start"] is None
    assert 0.0 < data["confidence"] < 1.0
    assert data["lines"][0]["words"][0]["text"] == "Every"


def test_cli_writes_the_chosen_format_atomically(song, tmp_path, capsys):
    path, _ = song
    out = tmp_path / "out" / "song.json"
    code = main(["align", str(path), "--lyrics", str(path.parent / "lyrics.txt"), "--language", "en",
                 "--format", "json", "--out", str(out), "--threads", "2"])
    assert code == 0
    assert [p.name for p in out.parent.iterdir()] == ["song.json"]  # no temporary file left
    assert [line["status"] for line in json.loads(out.read_text())["lines"]].count("unsung") == 1
    assert "line 3 not heard" in capsys.readouterr().err
    assert FORMATS == ALIGN_FORMATS


def test_lyrics_in_another_language_are_flagged_not_trusted(aligner, song):
    path, _ = song
    spanish = "Cada mañana camino por el río.\nEl viento es suave en mi cara.\nLa luna brilla sobre el mar.\n"
    result = aligner.align(path, spanish)
    assert all(line.status in ("unsung", "low") for line in result.lines), result.lines
    assert result.confidence < 0.3
    assert any("lyrics were heard" in w for w in result.warnings())


@pytest.mark.parametrize("kind", ["silence", "noise", "one sample"])
def test_audio_without_a_voice_is_a_clear_error(aligner, tmp_path, kind):
    rng = np.random.default_rng(0)
    audio = {"silence": np.zeros(10 * 16000), "noise": rng.normal(0, 0.3, 10 * 16000),
             "one sample": np.array([0.5])}[kind].astype(np.float32)
    path = save_audio(tmp_path / "input.wav", audio, 16000)
    with pytest.raises(HeartMuLaError, match="no singing or speech heard"):
        aligner.align(path, LYRICS)


def test_lyrics_without_lines_and_missing_files_are_user_errors(aligner, song, tmp_path, capsys):
    path, _ = song
    with pytest.raises(HeartMuLaError, match="no lines to align"):
        aligner.align(path, "[verse]\n\n[chorus]\n")
    assert main(["align", str(tmp_path / "missing.wav"), "--lyrics", str(path.parent / "lyrics.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["align", str(path), "--lyrics", str(tmp_path / "missing.txt")]) == 2
    assert "cannot read the lyrics" in capsys.readouterr().err


def test_read_lyrics_keeps_sections_and_skips_blank_lines():
    assert read_lyrics("[Verse 1]\nfirst line\n\n  second line  \n[chorus]\nthird\n") == [
        ("verse 1", "first line"), ("verse 1", "second line"), ("chorus", "third")]


def test_normalisation_makes_spellings_of_one_word_equal():
    assert normalize_unit("Don't!", "en") == "dont"
    assert normalize_unit("カタ", "ja") == normalize_unit("かた", "ja")
    assert normalize_unit("ＡＢＣ", "en") == "abc"


def test_alignment_is_monotonic_and_skips_what_was_not_heard():
    lyric = ["la", "la", "hello", "world", "la", "la"]
    heard = ["la", "hello", "there", "world", "la"]
    pairs = needleman_wunsch(similarity_matrix(lyric, heard, characters=False))
    assert pairs == sorted(pairs) and len({i for i, _ in pairs}) == len(pairs)
    assert (2, 1) in pairs and (3, 3) in pairs  # hello, world
    chars = needleman_wunsch(similarity_matrix(list("你好世界"), list("你世界"), characters=True))
    assert chars == [(0, 0), (2, 1), (3, 2)]


def test_unheard_words_take_times_between_heard_neighbours():
    times = time_line_units([None, (1.0, 1.2), None, None, (2.0, 2.4), None], typical=0.25)
    assert times[0] == pytest.approx((0.75, 1.0))
    assert times[2] == pytest.approx((1.2, 1.6)) and times[3] == pytest.approx((1.6, 2.0))
    assert times[5] == pytest.approx((2.4, 2.65))
