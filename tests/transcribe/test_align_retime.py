"""The second pass of `heartmula align`: note onsets, snapping, forced-alignment windows."""

from __future__ import annotations

import numpy as np
import pytest

from heartmula.transcribe.align import (
    AlignConfig,
    AlignedLine,
    AlignedWord,
    find_unheard_lines,
    retime_lines,
    unheard_runs,
)
from heartmula.transcribe.backends import SAMPLE_RATE
from heartmula.transcribe.retime import (
    LINE_BREAK,
    forced_word_times,
    line_groups,
    onset_envelope,
    onset_peaks,
    snap_to_onset,
    window_pieces,
)


def notes(starts: list[float], seconds: float = 4.0) -> np.ndarray:
    """Quiet noise with a 0.3 s sung-like tone (220 Hz and harmonics) starting at each time."""
    rng = np.random.default_rng(0)
    audio = rng.normal(0, 1e-3, int(seconds * SAMPLE_RATE)).astype(np.float32)
    t = np.arange(int(0.3 * SAMPLE_RATE)) / SAMPLE_RATE
    tone = sum(np.sin(2 * np.pi * 220 * k * t) / k for k in range(1, 6)).astype(np.float32) * 0.3
    for start in starts:
        at = int(start * SAMPLE_RATE)
        audio[at:at + len(tone)] += tone
    return audio


def test_onsets_are_found_where_notes_begin():
    times, heights = onset_peaks(onset_envelope(notes([1.0, 2.5])))
    strong = times[heights >= 0.5 * heights.max()]
    assert any(abs(t - 1.0) <= 0.03 for t in strong) and any(abs(t - 2.5) <= 0.03 for t in strong)
    assert not any(0.1 < t < 0.9 for t in strong)


def test_a_line_start_moves_to_the_onset_before_it_but_not_far_after():
    peaks = onset_peaks(onset_envelope(notes([1.0, 2.5])))
    # the noise floor's own small peaks sit near 1 (the 95th percentile), the notes' far above
    assert snap_to_onset(1.4, peaks, radius=0.8, min_height=3.0, after=0.1) == pytest.approx(1.0, abs=0.03)
    assert snap_to_onset(0.6, peaks, radius=0.8, min_height=3.0, after=0.1) == 0.6  # the onset is 0.4 s later
    assert snap_to_onset(1.4, peaks, radius=0.0, min_height=3.0, after=0.1) == 1.4  # snapping off


def test_line_groups_fit_one_whisper_window_and_skip_untimed_lines():
    spans = [(0.0, 8.0), None, (10.0, 20.0), (21.0, 28.0), (29.0, 40.0), (41.0, 80.0)]
    groups = line_groups(spans, margin=1.0)
    assert groups == [[0, 2, 3], [4], [5]]  # a line longer than a window is a group of its own


def test_window_text_opens_with_context_and_breaks_between_lines():
    pieces, firsts = window_pieces(["the", "end"], [["a", "b"], ["c"]], characters=False)
    assert pieces == [" the", " end", LINE_BREAK, " a", " b", LINE_BREAK, " c"]
    assert firsts == [3, 6]
    pieces, firsts = window_pieces([], [["你", "好"]], characters=True)
    assert pieces == ["你", "好"] and firsts == [0]


class RecordingBackend:
    """Stands in for Whisper: piece k of a window starts at 0.5 k s of the window."""

    def __init__(self):
        self.calls = []

    def force_align(self, audio, language, pieces):
        self.calls.append((len(audio) / SAMPLE_RATE, language, pieces))
        return [(0.5 * k, 0.5 * k + 0.4) for k in range(len(pieces))]


def test_forced_times_are_placed_in_song_time_per_line():
    backend = RecordingBackend()
    mono = np.zeros(60 * SAMPLE_RATE, dtype=np.float32)
    times = forced_word_times(backend, mono, "en", [["a", "b"], ["c"]], ["end"], 10.0, 20.0, characters=False)
    assert backend.calls == [(10.0, "en", [" end", LINE_BREAK, " a", " b", LINE_BREAK, " c"])]
    assert times == [[(11.0, 11.4), (11.5, 11.9)], [(12.5, 12.9)]]


def line(text, start, confidence=1.0):
    """A placed line, one word a second from `start`; untimed (unsung) when start is None."""
    words = [AlignedWord(w, None if start is None else start + k, None if start is None else start + k + 0.5,
                         start is not None) for k, w in enumerate(text.split())]
    status = "unsung" if start is None else "sung"
    return AlignedLine(text, "", start, None if start is None else start + len(words), confidence, status, words)


def test_retimed_lines_keep_unsung_lines_untimed_and_run_forward():
    placed = [line("one two", 2.0), line("not heard", None), line("three four", 8.0)]
    backend = RecordingBackend()
    mono = notes([], seconds=20.0)
    retime_lines(placed, backend, mono, "en", False, AlignConfig(onset_radius=0.0, onset_shift=0.0))
    assert placed[1].start is None and all(w.start is None for w in placed[1].words)
    assert len(backend.calls) == 1  # both timed lines fit one window
    timed = [w for p in (placed[0], placed[2]) for w in p.words]
    assert all(a.start <= b.start for a, b in zip(timed, timed[1:]))
    assert placed[0].start == 2.0  # no context: the window opens at the first pass's line start


def test_runs_of_unheard_lines_know_the_gap_between_their_timed_neighbours():
    placed = [line("a b", None), line("c d", 2.0), line("e", None), line("f g", None), line("h", 9.0),
              line("i", None)]
    assert unheard_runs(placed, duration=20.0) == [([0], 0.0, 2.0), ([2, 3], 4.0, 9.0), ([5], 10.0, 20.0)]


def paced_song(gap_words: int) -> list[AlignedLine]:
    """Four heard lines of two words, one every 4 s (2 s a word), then a run of unheard lines, then a heard line at
    20 s: the run's gap is 8..20 s."""
    placed = [line("a b", 0.0), line("c d", 4.0), line("e f", 8.0)]
    placed[-1].end = 8.0  # its words end where the gap begins
    placed += [line("x " * gap_words, None, confidence=0.0), line("y z", None, confidence=0.0),
               line("g h", 20.0)]
    return placed


def test_unheard_lines_are_forced_into_a_gap_that_holds_them_and_flagged_low():
    placed = paced_song(gap_words=2)  # 4 words at 2 s a word: 8 s expected in a 12 s gap
    backend = RecordingBackend()
    find_unheard_lines(placed, backend, notes([], seconds=30.0), "en", False, AlignConfig())
    assert len(backend.calls) == 1
    window, _, pieces = backend.calls[0]
    assert pieces[:3] == [" e", " f", LINE_BREAK]  # opened by the previous line's last words
    assert window == pytest.approx(20.0 - 7.0)  # from the window margin before the gap to the next heard line
    for found in placed[3:5]:
        assert found.status == "low" and found.start is not None and found.end >= found.start
        assert 7.0 <= found.start <= 20.0
    assert placed[3].start < placed[4].start


def test_unheard_lines_stay_unsung_in_a_short_gap_or_when_little_was_heard():
    placed = paced_song(gap_words=8)  # 10 words at 2 s a word: 20 s expected in a 12 s gap
    find_unheard_lines(placed, RecordingBackend(), notes([], seconds=30.0), "en", False, AlignConfig())
    assert all(found.status == "unsung" and found.start is None for found in placed[3:5])
    placed = paced_song(gap_words=2)
    for heard in placed:
        heard.confidence = min(heard.confidence, 0.2)  # lyrics of another song
    find_unheard_lines(placed, RecordingBackend(), notes([], seconds=30.0), "en", False, AlignConfig())
    assert all(found.status == "unsung" for found in placed[3:5])
    find_unheard_lines(paced_song(2), RecordingBackend(), notes([], seconds=30.0), "en", False,
                       AlignConfig(gap_fill=0.0))  # off


def test_a_forced_line_start_moves_earlier_to_the_note_onset_before_it():
    # the stub backend starts the line's first piece at the window start: 1.45 s; the note begins at 1.0 s (and its
    # abrupt end at 1.3 s is an onset too, after the searched span)
    placed = [line("one two", 1.45)]
    mono = notes([1.0], seconds=6.0)
    retime_lines(placed, RecordingBackend(), mono, "en", False,
                 AlignConfig(onset_shift=0.2, onset_radius=0.4, onset_min_height=1.0))
    assert placed[0].start == pytest.approx(1.0, abs=0.03)
    placed = [line("one two", 1.45)]
    retime_lines(placed, RecordingBackend(), mono, "en", False, AlignConfig(onset_shift=0.2, onset_radius=0.0))
    assert placed[0].start == pytest.approx(1.25)  # shifted only: snapping off
