"""Output formats parse back; guards, chunk planning and sections behave on hand-made inputs."""

from __future__ import annotations

import json

import numpy as np

from heartmula.eval.lyrics import read_lyrics_file
from heartmula.transcribe import Segment, TranscribeConfig, Transcript, Word, render
from heartmula.transcribe.pipeline import (
    apply_guards,
    assign_sections,
    collapse_word_loops,
    fixed_windows,
    group_regions,
)
from heartmula.transcribe.result import parse_lrc, parse_srt


def words_of(text: str, start: float = 0.0, step: float = 0.3) -> list[Word]:
    return [Word(start + i * step, start + (i + 1) * step, w) for i, w in enumerate(text.split())]


def sample_transcript() -> Transcript:
    segments = [
        Segment(0.5, 2.0, "Hello, my friend", words_of("Hello, my friend", 0.5)),
        Segment(2.2, 3.9, "sing with me", words_of("sing with me", 2.2)),
        Segment(75.25, 3725.5, "a very long last line", words_of("a very long last line", 75.25)),
    ]
    assign_sections(segments, section_gap=3.0)
    return Transcript("song.wav", "en", 0.99, 3730.0, segments, "base", "ctranslate2")


def test_lrc_round_trip():
    transcript = sample_transcript()
    text = render(transcript, "lrc")
    lines = parse_lrc(text)
    assert [round(t, 2) for t, line in lines if line] == [0.5, 2.2, 75.25]
    assert [line for _, line in lines if line] == [s.text for s in transcript.segments]
    assert lines[-1] == (3725.5, "")  # the closing time tag ends the last line
    assert "[la:en]" in text and "\n\n[01:15.25]" in text  # a blank line before the new section


def test_srt_round_trip():
    transcript = sample_transcript()
    cues = parse_srt(render(transcript, "srt"))
    assert [(round(a, 3), round(b, 3), t) for a, b, t in cues] == [
        (s.start, s.end, s.text) for s in transcript.segments]
    assert "01:02:05,500" in render(transcript, "srt")  # hours are written past 60 minutes


def test_json_and_txt_hold_the_lyrics():
    transcript = sample_transcript()
    data = json.loads(render(transcript, "json"))
    assert data["language"] == "en" and len(data["segments"]) == 3
    assert data["segments"][0]["words"][0] == {"start": 0.5, "end": 0.8, "text": "Hello,", "probability": 1.0}
    assert render(transcript, "txt") == "Hello, my friend\nsing with me\n\na very long last line\n"


def test_transcript_files_read_back_as_lyrics(tmp_path):
    transcript = sample_transcript()
    expected = "Hello, my friend\nsing with me\na very long last line"
    for fmt in ("lrc", "srt", "json"):
        path = tmp_path / f"song.{fmt}"
        path.write_text(render(transcript, fmt))
        assert read_lyrics_file(path) == expected


def test_word_loops_are_cut_to_the_limit():
    words = words_of("oh " * 30 + "baby love me do " * 9 + "end")
    kept = [w.text for w in collapse_word_loops(words, max_repeats=4)]
    assert kept == ["oh"] * 4 + "baby love me do".split() * 4 + ["end"]


def test_guards_drop_invented_lines():
    config = TranscribeConfig()
    looped = "thank you for watching " * 12
    segments = [
        Segment(0.0, 2.0, "real words here", words_of("real words here")),
        Segment(10.0, 12.0, "heard over no voice", words_of("heard over no voice", 10.0)),
        Segment(20.0, 22.0, looped.strip()),  # compresses far too well, no word times to repair it with
        *[Segment(30.0 + i, 30.5 + i, "Same line") for i in range(6)],
    ]
    regions = [(0.0, 3.0), (19.0, 40.0)]
    kept = apply_guards(segments, config, "en", regions)
    assert [s.text for s in kept] == ["real words here"] + ["Same line"] * 4


def test_vocal_regions_group_into_whisper_windows():
    rate = 16000
    regions = [(0, 5 * rate), (8 * rate, 20 * rate), (25 * rate, 40 * rate), (41 * rate, 45 * rate)]
    chunks = group_regions(regions, 30 * rate)
    assert chunks == [(0, 20 * rate), (25 * rate, 45 * rate)]
    assert all(end - start <= 30 * rate for start, end in chunks)


def test_fixed_windows_cut_in_the_quiet_and_cover_everything():
    rate = 16000
    audio = np.ones(75 * rate, dtype=np.float32)
    audio[int(27.5 * rate): int(27.6 * rate)] = 0.0  # the only quiet moment near the first 30 s boundary
    windows = fixed_windows(audio, 30 * rate)
    assert 27.5 <= windows[0][1] / rate <= 27.6
    assert windows[0][0] == 0 and windows[-1][1] == len(audio)
    assert all(a[1] == b[0] for a, b in zip(windows, windows[1:]))
    assert all(end - start <= 30 * rate for start, end in windows)
