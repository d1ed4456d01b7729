"""Forced alignment of known lyrics to a song: per-line and per-word times, a confidence per line.

Method: Whisper transcribes the song with word times (vocal-activity chunks, as `transcribe`), each chunk prompted
with the lyric lines expected in it (placed by the chunk's share of the song's voiced time), so that it spells
the sung words the way the lyrics do. The lyric units (words; characters for zh/ja) are aligned to the transcribed
units by a global Needleman-Wunsch alignment over normalised text: monotonic, so a repeated chorus is placed at its
own occurrence. Matched units take the transcribed times; unmatched units of a heard line are spread between the
line's matched neighbours. A line whose units are mostly unmatched is flagged "unsung" and gets no times;
"low" marks a line heard only in part.

    from heartmula.transcribe.align import align
    result = align("song.mp3", "lyrics.txt", language="en")
    for line in result.lines: print(line.start, line.status, line.confidence, line.text)
"""

from __future__ import annotations

import json
import os
import re
import statistics
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from heartmula.audio import load_audio
from heartmula.errors import HeartMuLaError
from heartmula.extras import require
from heartmula.transcribe.backends import CHUNK_SECONDS, SAMPLE_RATE
from heartmula.transcribe.pipeline import NO_SPACE_LANGUAGES, TranscribeConfig, Transcriber
from heartmula.transcribe.result import Transcript, _lrc_time, _srt_time
from heartmula.transcribe.retime import (
    CONTEXT_WORDS,
    forced_word_times,
    line_groups,
    onset_envelope,
    onset_peaks,
    snap_to_onset,
)

ALIGN_FORMATS = ("lrc", "srt", "json")
_SECTION_HEADER = re.compile(r"^\s*\[[^\]\n]*\]\s*$")
_APOSTROPHES = "'’ʼ‘`´"
TRUSTED_SHARE = 0.3  # below this share of the lyrics heard, the lyrics are likely not this song's (or language's)
GAP_SCORE = -0.4  # the alignment's cost of leaving a unit unpaired (a lyric unit not heard, a transcribed unit
# not in the lyrics); below half of a mismatch (-1), so unlike units are left unpaired rather than paired


@dataclass
class AlignConfig:
    min_confidence: float = 0.45  # lines with a smaller share of their units heard are flagged unsung (no times):
    # a line heard in part is likelier an echo of the prompt in another line's window than the line's own hearing
    low_confidence: float = 0.6  # lines below this share are flagged low
    word_similarity: float = 0.6  # words at least this similar (rapidfuzz ratio / 100) count as heard
    prompt: bool = True  # condition Whisper on the lyrics expected in each chunk (ctranslate2 backend)
    snap_to_voice: bool = True  # move word starts that fall in a pause to where the voice begins
    max_no_speech: float = 0.2  # transcribed lines whose window Whisper rates likelier silence than this are dropped
    forced: bool = True  # retime heard lines by forced alignment of their own text (ctranslate2 backend)
    window_margin: float = 1.0  # seconds of audio before and after a group of lines in a forced-alignment window
    onset_shift: float = 0.2  # a forced-aligned line start is first moved this much earlier: dynamic time warping
    # over Whisper's cross-attention starts a sung line late (held notes and rests are given to the line before)
    onset_radius: float = 0.4  # then to the strongest note onset at most this far before it (0: off)
    onset_after: float = 0.0  # ... or this far after it
    onset_min_height: float = 1.0  # onsets weaker than the song's strong onsets (95th percentile) are ignored
    gap_fill: float = 0.75  # a run of unheard lines is forced-aligned in the gap between its timed neighbours (and
    # flagged low) when the gap lasts at least this share of the run's expected time at the song's pace (0: off)

    def validate(self) -> AlignConfig:
        if not 0.0 <= self.min_confidence <= self.low_confidence <= 1.0 or not 0 < self.word_similarity <= 1 or \
                not 0.0 <= self.max_no_speech <= 1.0 or self.window_margin < 0 or self.onset_radius < 0 or \
                self.onset_shift < 0:
            raise HeartMuLaError("need 0 <= min_confidence <= low_confidence <= 1, 0 < word_similarity <= 1, "
                                 "0 <= max_no_speech <= 1, window_margin >= 0, onset_radius >= 0 and onset_shift >= 0")
        return self


@dataclass
class AlignedWord:
    text: str
    start: float | None
    end: float | None
    heard: bool  # matched to a transcribed word (else its times are spread between heard neighbours)


@dataclass
class AlignedLine:
    text: str
    section: str
    start: float | None  # None for an unsung line
    end: float | None
    confidence: float  # share of the line's letters in units matched to the transcript, 0..1
    status: str  # "sung", "low" (heard in part) or "unsung" (not heard: no times)
    words: list[AlignedWord] = field(default_factory=list)


@dataclass
class Alignment:
    audio: str
    language: str
    duration: float
    lines: list[AlignedLine]
    transcript: str  # what Whisper heard
    model: str = ""

    @property
    def confidence(self) -> float:
        return float(np.mean([line.confidence for line in self.lines])) if self.lines else 0.0

    def warnings(self) -> list[str]:
        out = [f"line {i + 1} not heard (flagged unsung, no times): {line.text}"
               for i, line in enumerate(self.lines) if line.status == "unsung"]
        if self.confidence < TRUSTED_SHARE:
            out.append(f"only {self.confidence:.0%} of the lyrics were heard: are they the lyrics of this song, "
                       f"in language {self.language!r}?")
        return out


def read_lyrics(text: str) -> list[tuple[str, str]]:
    """(section, line) for every lyric line; [section] headers name the section, blank lines are skipped."""
    section, lines = "", []
    for raw in text.splitlines():
        if _SECTION_HEADER.match(raw):
            section = raw.strip()[1:-1].strip().lower()
        elif raw.strip():
            lines.append((section, raw.strip()))
    return lines


def _opencc_t2s():
    try:
        import opencc
    except ImportError:  # only needed when Whisper writes traditional characters for simplified lyrics
        return None
    return opencc.OpenCC("t2s")


def normalize_unit(text: str, language: str) -> str:
    """NFKC, case folded, apostrophes dropped, other punctuation and symbols removed; katakana as hiragana and
    Chinese in simplified characters so that the two spellings of a sung syllable compare equal."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join("" if ch in _APOSTROPHES else " " if unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    text = "".join(chr(ord(ch) - 0x60) if "\u30a1" <= ch <= "\u30f6" else ch for ch in text)
    if language in ("zh", "yue") and (converter := _opencc_t2s()) is not None:
        text = converter.convert(text)
    return " ".join(text.split())


def uses_characters(lines: list[tuple[str, str]], language: str) -> bool:
    """zh/ja lyrics are aligned by character (no spaces between words); so are lyrics mostly in Han or kana."""
    if language in NO_SPACE_LANGUAGES:
        return True
    text = "".join(line for _, line in lines)
    cjk = sum(1 for ch in text if "\u3040" <= ch <= "\u30ff" or "\u4e00" <= ch <= "\u9fff")
    return cjk > 0.3 * max(1, sum(1 for ch in text if not ch.isspace()))


def line_words(line: str, characters: bool, language: str) -> list[tuple[str, list[str]]]:
    """(word as written, its units after normalisation): words split on spaces, or single characters."""
    pieces = [ch for ch in line if not ch.isspace()] if characters else line.split()
    out = []
    for piece in pieces:
        normal = normalize_unit(piece, language)
        out.append((piece, [ch for ch in normal if not ch.isspace()] if characters else normal.split()))
    return out


def transcript_units(transcript: Transcript, characters: bool, language: str) -> list[tuple[str, float, float]]:
    """(unit, start, end) of the transcribed words; a word's span is shared evenly by its units."""
    units = []
    # a zero-length word was clamped to the end of its chunk: decoded past the audio, an echo of the prompt
    for word in (w for w in transcript.words() if w.end > w.start):
        normal = normalize_unit(word.text, language)
        pieces = [ch for ch in normal if not ch.isspace()] if characters else normal.split()
        step = (word.end - word.start) / max(len(pieces), 1)
        units.extend((p, word.start + k * step, word.start + (k + 1) * step) for k, p in enumerate(pieces))
    return units


def similarity_matrix(lyric: list[str], heard: list[str], characters: bool) -> np.ndarray:
    """[len(lyric), len(heard)] scores in -1..1: equal characters 1, else -1; words 2 * ratio - 1."""
    if characters:
        return np.where(np.array(lyric)[:, None] == np.array(heard)[None, :], 1.0, -1.0)
    require("transcribe", "rapidfuzz", feature="heartmula align")
    from rapidfuzz import fuzz, process

    return 2.0 * process.cdist(lyric, heard, scorer=fuzz.ratio, dtype=np.float32).astype(np.float64) / 100.0 - 1.0


def needleman_wunsch(scores: np.ndarray, gap: float = GAP_SCORE) -> list[tuple[int, int]]:
    """Monotonic pairs (i, j) of the best global alignment of rows to columns under `scores` and a gap cost."""
    rows, cols = scores.shape
    total = np.zeros((rows + 1, cols + 1))
    total[:, 0] = gap * np.arange(rows + 1)
    total[0, :] = gap * np.arange(cols + 1)
    move = np.zeros((rows + 1, cols + 1), dtype=np.int8)  # 0 diagonal, 1 up (lyric unpaired), 2 left
    move[1:, 0], move[0, 1:] = 1, 2
    offsets = gap * np.arange(cols + 1)
    for i in range(1, rows + 1):
        diagonal = total[i - 1, :-1] + scores[i - 1]
        up = total[i - 1, 1:] + gap
        without_left = np.concatenate([[total[i, 0]], np.maximum(diagonal, up)])
        # the best over "k cells from the left, then j - k left moves" is a running maximum
        total[i] = offsets + np.maximum.accumulate(without_left - offsets)
        # ties go left (a transcribed unit left unpaired at the end): of equal alignments the traceback keeps
        # the one that pairs the lyrics with the earliest occurrence, as a repeated line's first hearing is
        # likelier sung than an echo of the prompt
        move[i, 1:] = np.where(total[i, :-1] + gap >= total[i, 1:] - 1e-9, 2, np.where(diagonal >= up, 0, 1))
    pairs, i, j = [], rows, cols
    while i > 0 and j > 0:
        if move[i, j] == 0:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif move[i, j] == 1:
            i -= 1
        else:
            j -= 1
    return pairs[::-1]


def lyric_prompts(lines: list[tuple[str, str]], chunk_times: list[tuple[float, float]], index: int,
                  margin: float = 0.15) -> str:
    """The lyric lines expected in chunk `index`: those whose share of the lyrics (by length) overlaps the chunk's
    share of the voiced time, widened by `margin` of the song on either side."""
    voiced = np.cumsum([0.0] + [end - start for start, end in chunk_times])
    lo, hi = voiced[index] / voiced[-1] - margin, voiced[index + 1] / voiced[-1] + margin
    lengths = np.cumsum([0.0] + [len(text) for _, text in lines])
    shares = lengths / max(lengths[-1], 1.0)
    chosen = [text for k, (_, text) in enumerate(lines) if shares[k + 1] >= lo and shares[k] <= hi]
    return " ".join(chosen)


def voice_onsets(mono: np.ndarray, threshold: float) -> list[tuple[float, float]]:
    """Voiced regions (s) of 16 kHz mono audio without padding: where silero VAD hears a voice begin and end."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    options = VadOptions(threshold=threshold, min_silence_duration_ms=100, speech_pad_ms=0,
                         min_speech_duration_ms=60)
    return [(r["start"] / SAMPLE_RATE, r["end"] / SAMPLE_RATE)
            for r in get_speech_timestamps(mono, options, sampling_rate=SAMPLE_RATE)]


def snap_to_voice(units: list[tuple[str, float, float]], regions: list[tuple[float, float]]
                  ) -> list[tuple[str, float, float]]:
    """Whisper starts a word that follows a pause at the end of the pause or the chunk's padded start; a unit that
    starts where no voice is heard starts instead where the voice begins inside its span."""
    out = []
    for text, start, end in units:
        if not any(s <= start < e for s, e in regions):
            start = next((s for s, _ in regions if start < s < end), start)
        out.append((text, start, end))
    return out


def _spread(count: int, start: float, end: float) -> list[tuple[float, float]]:
    step = max(end - start, 0.0) / max(count, 1)
    return [(start + k * step, start + (k + 1) * step) for k in range(count)]


def time_line_units(units: list[tuple[float, float] | None], typical: float) -> list[tuple[float, float]]:
    """Times for every unit of a heard line: matched units keep theirs, runs of unmatched units between two
    matched ones share the gap, leading and trailing runs take `typical` seconds per unit beside their neighbour."""
    heard = [k for k, u in enumerate(units) if u is not None]
    out: list[tuple[float, float]] = list(units)  # type: ignore[arg-type]
    first, last = heard[0], heard[-1]
    out[:first] = _spread(first, units[first][0] - typical * first, units[first][0])
    out[last + 1:] = _spread(len(units) - last - 1, units[last][1], units[last][1] + typical * (len(units) - last - 1))
    for a, b in zip(heard, heard[1:]):
        if b > a + 1:
            out[a + 1:b] = _spread(b - a - 1, units[a][1], units[b][0])
    return out


@dataclass
class _LyricUnit:
    line: int
    word: int
    text: str
    heard: tuple[float, float] | None = None


def place_lines(lines: list[tuple[str, str]], transcript: Transcript, characters: bool, language: str,
                config: AlignConfig, voiced: list[tuple[float, float]] | None = None) -> list[AlignedLine]:
    """Align the lyric units to the transcribed units and turn the pairs into timed, flagged lines (voiced: the
    unpadded voiced regions that word starts snap to)."""
    words_of_line = [line_words(text, characters, language) for _, text in lines]
    units = [_LyricUnit(n, w, u) for n, words in enumerate(words_of_line) for w, (_, us) in enumerate(words)
             for u in us]
    heard_units = transcript_units(transcript, characters, language)
    if voiced is not None:
        heard_units = snap_to_voice(heard_units, voiced)
    if units and heard_units:
        scores = similarity_matrix([u.text for u in units], [h[0] for h in heard_units], characters)
        threshold = 1.0 if characters else 2 * config.word_similarity - 1
        for i, j in needleman_wunsch(scores):
            if scores[i, j] >= threshold - 1e-6:
                units[i].heard = heard_units[j][1:]
    durations = [u.heard[1] - u.heard[0] for u in units if u.heard]
    typical = min(max(statistics.median(durations) if durations else 0.3, 0.1), 0.6)
    out, previous_end = [], 0.0
    for n, (section, text) in enumerate(lines):
        line_units = [u for u in units if u.line == n]
        # weighted by length: a line heard only in its shortest word ("a", "아") is weak evidence of the line
        confidence = sum(len(u.text) for u in line_units if u.heard is not None) / max(
            sum(len(u.text) for u in line_units), 1)
        status = "unsung" if confidence < config.min_confidence or confidence == 0 else (
            "low" if confidence < config.low_confidence else "sung")
        if status == "unsung":
            out.append(AlignedLine(text, section, None, None, round(confidence, 3), status,
                                   [AlignedWord(w, None, None, False) for w, _ in words_of_line[n]]))
            continue
        times = time_line_units([u.heard for u in line_units], typical)
        times = [(max(s, previous_end), max(e, s, previous_end)) for s, e in times]
        words = []
        for w, (written, _) in enumerate(words_of_line[n]):
            spans = [(t, u) for t, u in zip(times, line_units) if u.word == w]
            if spans:
                words.append(AlignedWord(written, round(spans[0][0][0], 3), round(spans[-1][0][1], 3),
                                         any(u.heard is not None for _, u in spans)))
            else:  # only punctuation: no units, it takes the previous word's end
                at = words[-1].end if words else round(times[0][0], 3)
                words.append(AlignedWord(written, at, at, False))
        previous_end = times[-1][1]
        out.append(AlignedLine(text, section, words[0].start, words[-1].end, round(confidence, 3), status, words))
    return out


def retime_lines(placed: list[AlignedLine], backend, mono: np.ndarray, language: str, characters: bool,
                 config: AlignConfig) -> None:
    """Second pass, in place: the words of every group of timed lines forced-aligned in one window around them
    (opened by the preceding lyric line's last words), then each line start moved to the nearest note onset."""
    forced = config.forced and hasattr(backend, "force_align")
    if forced:
        find_unheard_lines(placed, backend, mono, language, characters, config)
        force_align_lines(placed, backend, mono, language, characters, config)
    peaks = onset_peaks(onset_envelope(mono)) if config.onset_radius > 0 else None
    timed = [line for line in placed if line.start is not None and line.words]
    for line in timed:
        first = line.words[0]
        if forced:
            first.start = max(first.start - config.onset_shift, 0.0)
        if peaks is not None:
            first.start = snap_to_onset(first.start, peaks, config.onset_radius, config.onset_min_height,
                                        config.onset_after)
        first.end = max(first.end, first.start)
    _make_lines_monotonic(timed)


def unheard_runs(placed: list[AlignedLine], duration: float) -> list[tuple[list[int], float, float]]:
    """(line indices, gap start, gap end) of each run of consecutive untimed lines: the gap runs from the end of the
    timed line before the run (or the song's start) to the start of the timed line after it (or the song's end)."""
    runs: list[tuple[list[int], float, float]] = []
    for k, line in enumerate(placed):
        if line.start is not None:
            continue
        if runs and runs[-1][0][-1] == k - 1:
            runs[-1][0].append(k)
            continue
        before = next((placed[j].end for j in range(k - 1, -1, -1) if placed[j].start is not None), 0.0)
        runs.append(([k], before, 0.0))
    out = []
    for indices, start, _ in runs:
        after = next((placed[j].start for j in range(indices[-1] + 1, len(placed)) if placed[j].start is not None),
                     duration)
        out.append((indices, start, after))
    return out


def seconds_per_unit(placed: list[AlignedLine], units: list[int]) -> float | None:
    """The song's pace: the median over consecutive timed lines of (next line's start - line's start) / its units."""
    paces = [(placed[k + 1].start - line.start) / max(units[k], 1) for k, line in enumerate(placed[:-1])
             if line.start is not None and placed[k + 1].start is not None and placed[k + 1].start > line.start]
    return statistics.median(paces) if paces else None


def find_unheard_lines(placed: list[AlignedLine], backend, mono: np.ndarray, language: str, characters: bool,
                       config: AlignConfig) -> None:
    """Lines the transcript missed (Whisper decodes a window as a few filler syllables, say) are forced-aligned in
    the gap their timed neighbours leave, if the gap is long enough to hold them at the song's pace; they take
    those times and the flag "low". Lines in shorter gaps stay unsung, and so does every line when too little of
    the lyrics was heard to trust the song's pace (lyrics of another song)."""
    units = [sum(len(us) for _, us in line_words(line.text, characters, language)) for line in placed]
    pace = seconds_per_unit(placed, units)
    heard = np.mean([line.confidence for line in placed])
    if config.gap_fill <= 0 or pace is None or heard < TRUSTED_SHARE:
        return
    while any(fill_gap(placed, run, gap_start, gap_end, backend, mono, language, characters, units, pace, config)
              for run, gap_start, gap_end in unheard_runs(placed, len(mono) / SAMPLE_RATE)):
        pass  # a run longer than one window is filled a window at a time


def fill_gap(placed: list[AlignedLine], run: list[int], gap_start: float, gap_end: float, backend, mono: np.ndarray,
             language: str, characters: bool, units: list[int], pace: float, config: AlignConfig) -> bool:
    """Forced-align the first lines of `run` that fit one window in the gap; False when the gap is too short."""
    if gap_end - gap_start < config.gap_fill * pace * sum(units[k] for k in run):
        return False
    previous = [w.text for w in placed[run[0] - 1].words] if run[0] else []
    context = previous[-(3 if characters else CONTEXT_WORDS):]
    start = max(gap_start - (config.window_margin if context else 0.0), 0.0)
    end = min(gap_end, start + CHUNK_SECONDS, len(mono) / SAMPLE_RATE)
    # the lines that fit the window at the song's pace (at least one); the rest wait for the next window
    fits = np.cumsum([pace * units[k] for k in run]) <= end - gap_start
    chosen = run[:max(int(fits.sum()), 1)]
    words = [[w.text for w in placed[k].words] for k in chosen]
    for k, times in zip(chosen, forced_word_times(backend, mono, language, words, context, start, end, characters)):
        line = placed[k]
        for word, (a, b) in zip(line.words, times):
            word.start, word.end = round(a, 3), round(b, 3)
        line.start, line.end, line.status = line.words[0].start, line.words[-1].end, "low"
    return True


def force_align_lines(placed: list[AlignedLine], backend, mono: np.ndarray, language: str, characters: bool,
                      config: AlignConfig) -> None:
    """Word times of the timed lines, in place, by forced alignment of each group of lines that fits a window."""
    duration = len(mono) / SAMPLE_RATE
    spans = [(line.start, line.end) if line.start is not None else None for line in placed]
    for group in line_groups(spans, config.window_margin):
        previous = [w.text for w in placed[group[0] - 1].words] if group[0] else []
        context = previous[-(3 if characters else CONTEXT_WORDS):]
        # the first text token is aligned from the window's first frame: the margin is given to the context
        # words; without context the window opens where the first pass heard the line begin
        start = max(spans[group[0]][0] - (config.window_margin if context else 0.0), 0.0)
        end = min(spans[group[-1]][1] + config.window_margin, start + CHUNK_SECONDS, duration)
        words = [[w.text for w in placed[k].words] for k in group]
        for k, times in zip(group, forced_word_times(backend, mono, language, words, context, start, end,
                                                     characters)):
            for word, (a, b) in zip(placed[k].words, times):
                word.start, word.end = a, b


def _make_lines_monotonic(timed: list[AlignedLine]) -> None:
    """Word starts never step back; a line ends where the next one starts at the latest; times rounded to ms."""
    last_start = 0.0
    for n, line in enumerate(timed):
        next_start = timed[n + 1].words[0].start if n + 1 < len(timed) else None
        for word in line.words:
            word.start = max(word.start, last_start)
            word.end = max(word.end, word.start)
            if next_start is not None and next_start >= word.start:
                word.end = min(word.end, next_start)
            word.start, word.end, last_start = round(word.start, 3), round(word.end, 3), word.start
        line.start, line.end = line.words[0].start, line.words[-1].end


class Aligner:
    """Loads Whisper once; aligns any number of (song, lyrics) pairs."""

    def __init__(self, transcribe_config: TranscribeConfig | None = None, config: AlignConfig | None = None):
        require("transcribe", "faster_whisper", "rapidfuzz", feature="heartmula align")
        self.config = (config or AlignConfig()).validate()
        # Without vocal-activity chunks by default: the detector misses much singing under loud accompaniment, and
        # a lyric line never decoded cannot be timed.
        self.transcriber = Transcriber(transcribe_config or TranscribeConfig(vad=False))

    def align_array(self, audio: np.ndarray, sample_rate: int, lyrics: str, name: str = "<array>") -> Alignment:
        lines = read_lyrics(lyrics)
        if not lines:
            raise HeartMuLaError(f"the lyrics for {name} have no lines to align (only blank lines or [section] "
                                 "headers)")
        audio = audio if audio.ndim == 2 else audio[None]
        prompt = self.config.prompt and self.transcriber.backend.name == "ctranslate2"
        transcript = self.transcriber.transcribe_array(
            audio, sample_rate, name, prompt_for=(lambda times, i: lyric_prompts(lines, times, i)) if prompt else None)
        # Prompted with lyrics, Whisper writes them over silence or noise too, but rates such a window as likely
        # no speech; sung windows rate near 0.
        transcript.segments = [s for s in transcript.segments if s.no_speech_prob <= self.config.max_no_speech]
        if not transcript.words():
            raise HeartMuLaError(f"no singing or speech heard in {name} ({transcript.duration:.1f} s): nothing to "
                                 "align the lyrics to")
        mono = self.transcriber.prepare_audio(audio, sample_rate)
        voiced = voice_onsets(mono, self.transcriber.config.vad_threshold) if self.config.snap_to_voice else None
        language = self.transcriber.config.language or transcript.language
        characters = uses_characters(lines, language)
        placed = place_lines(lines, transcript, characters, language, self.config, voiced)
        retime_lines(placed, self.transcriber.backend, mono, language, characters, self.config)
        return Alignment(name, language, round(transcript.duration, 3), placed, transcript.text,
                         self.transcriber.location.name)

    def align(self, path: str | os.PathLike, lyrics: str) -> Alignment:
        audio, rate = load_audio(path)
        return self.align_array(audio[:2], rate, lyrics, str(path))


def align(audio: str | os.PathLike, lyrics: str | os.PathLike, **transcribe_config) -> Alignment:
    """One-call API: `align("song.mp3", "lyrics.txt", language="en")` -> Alignment."""
    try:
        text = Path(lyrics).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HeartMuLaError(f"cannot read the lyrics {lyrics} as UTF-8 text: {exc}") from None
    return Aligner(TranscribeConfig(**{"vad": False, **transcribe_config})).align(audio, text)


def to_lrc(alignment: Alignment) -> str:
    """Enhanced LRC: a line time and <mm:ss.xx> before every word; unsung lines are left out (the JSON has them)."""
    out = [f"[la:{alignment.language}]", f"[length:{_lrc_time(alignment.duration)[:5]}]", "[re:heartmula align]"]
    timed = [line for line in alignment.lines if line.start is not None]
    for line in timed:
        separator = " " if " " in line.text else ""  # zh/ja lines: one word per character, no spaces
        words = separator.join(f"<{_lrc_time(w.start)}>{w.text}" for w in line.words)
        out.append(f"[{_lrc_time(line.start)}]{words}")
    if timed:
        out.append(f"[{_lrc_time(timed[-1].end)}]")
    return "\n".join(out) + "\n"


def to_srt(alignment: Alignment) -> str:
    timed = [line for line in alignment.lines if line.start is not None]
    return "\n".join(f"{k}\n{_srt_time(line.start)} --> {_srt_time(line.end)}\n{line.text}\n"
                     for k, line in enumerate(timed, start=1))


def to_json(alignment: Alignment) -> str:
    data = asdict(alignment)
    data["confidence"] = round(alignment.confidence, 3)
    return json.dumps(data, ensure_ascii=False, indent=1) + "\n"


def render_alignment(alignment: Alignment, fmt: str) -> str:
    if fmt not in ALIGN_FORMATS:
        raise HeartMuLaError(f"unknown format {fmt!r}: use {', '.join(ALIGN_FORMATS)}")
    return {"lrc": to_lrc, "srt": to_srt, "json": to_json}[fmt](alignment)
