"""The second pass of `heartmula align`: heard lines retimed by forced alignment of their own text, and each line
start moved to the nearest strong note onset.

Why: in free transcription Whisper times a word by the attention of the words it decoded, and over held notes and
rests the boundary between two words drifts towards the earlier one, so a line that follows a rest starts early.
Forcing the known text, with a line break token between lines, gives the rest to the break. A sung line then
begins with a note, whose onset the spectral flux of the mix marks to within a frame.
"""

from __future__ import annotations

import numpy as np

from heartmula.transcribe.backends import CHUNK_SECONDS, SAMPLE_RATE

ONSET_FFT = 1024
ONSET_HOP = 160  # 10 ms frames
ONSET_BAND = (150.0, 5000.0)  # Hz: voice and melody, above the bass drum's thump
CONTEXT_WORDS = 2  # words (characters for zh/ja: 3) of the preceding lyric line that open a window
LINE_BREAK = "\n"


def onset_envelope(mono: np.ndarray, block: int = 2048) -> np.ndarray:
    """Spectral flux of 16 kHz mono audio in 10 ms frames: the summed rise of log magnitudes in the voice band,
    scaled so that the song's 95th percentile (at least a twentieth of its peak) is 1."""
    padded = np.pad(mono.astype(np.float32), (ONSET_FFT // 2, ONSET_FFT // 2))
    frames = np.lib.stride_tricks.sliding_window_view(padded, ONSET_FFT)[::ONSET_HOP]
    freqs = np.fft.rfftfreq(ONSET_FFT, 1 / SAMPLE_RATE)
    band = (freqs > ONSET_BAND[0]) & (freqs < ONSET_BAND[1])
    window = np.hanning(ONSET_FFT).astype(np.float32)
    log = np.concatenate([np.log1p(100 * np.abs(np.fft.rfft(frames[i:i + block] * window, axis=1))[:, band])
                          for i in range(0, len(frames), block)])
    flux = np.concatenate([[0.0], np.clip(np.diff(log, axis=0), 0, None).sum(axis=1)])
    # a recording that is mostly silence has a 95th percentile near zero: a twentieth of the peak bounds it
    return flux / (max(np.percentile(flux, 95), 0.05 * flux.max()) + 1e-9)


def onset_peaks(envelope: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(times in s, heights) of the envelope's local maxima."""
    inner = envelope[1:-1]
    index = np.where((inner > envelope[:-2]) & (inner >= envelope[2:]))[0] + 1
    return index * ONSET_HOP / SAMPLE_RATE, envelope[index]


def snap_to_onset(time: float, peaks: tuple[np.ndarray, np.ndarray], radius: float, min_height: float,
                  after: float) -> float:
    """The strongest onset from `radius` seconds before `time` to `after` seconds after it, a farther one
    discounted by up to half the strongest height; `time` itself when none is strong enough."""
    times, heights = peaks
    near = (times >= time - radius) & (times <= time + after) & (heights >= min_height)
    if radius <= 0 or not near.any():
        return time
    times, heights = times[near], heights[near]
    score = heights - 0.5 * np.abs(times - time) / radius * heights.max()
    return float(times[np.argmax(score)])


def line_groups(spans: list[tuple[float, float] | None], margin: float) -> list[list[int]]:
    """Consecutive timed lines (index into spans; None = not timed) grouped so that each group with `margin`
    seconds on either side fits one Whisper window."""
    groups: list[list[int]] = []
    for k, span in enumerate(spans):
        if span is None:
            continue
        if groups and span[1] + margin - max(spans[groups[-1][0]][0] - margin, 0.0) <= CHUNK_SECONDS - 0.5:
            groups[-1].append(k)
        else:
            groups.append([k])
    return groups


def window_pieces(context: list[str], line_words: list[list[str]], characters: bool) -> tuple[list[str], list[int]]:
    """The text of one window as pieces (context words, then each line's words, line breaks between) and the
    index of every line's first piece."""
    space = "" if characters else " "
    pieces = [space + word for word in context] + ([LINE_BREAK] if context else [])
    firsts = []
    for n, words in enumerate(line_words):
        firsts.append(len(pieces))
        pieces += [space + word for word in words]
        if n + 1 < len(line_words):
            pieces.append(LINE_BREAK)
    return pieces, firsts


def forced_word_times(backend, mono: np.ndarray, language: str, words_of_lines: list[list[str]], context: list[str],
                      start: float, end: float, characters: bool) -> list[list[tuple[float, float]]]:
    """(start, end) in song seconds of every word of the given lines, forced-aligned in the window start..end."""
    pieces, firsts = window_pieces(context, words_of_lines, characters)
    chunk = mono[int(start * SAMPLE_RATE):int(end * SAMPLE_RATE)]
    times = backend.force_align(chunk, language, pieces)
    return [[(start + a, start + b) for a, b in times[first:first + len(words)]]
            for first, words in zip(firsts, words_of_lines)]
