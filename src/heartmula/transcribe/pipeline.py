"""Song-aware transcription: audio -> (vocal isolation) -> vocal-activity chunks -> Whisper -> guards -> sections.

Why chunk on vocal activity instead of Whisper's sliding 30 s window: songs have long instrumental stretches where
Whisper invents lyrics ("Thank you for watching", loops of one line); decoding only the stretches where a voice is
active (silero VAD, shipped inside faster-whisper) removes most of those and skips the work, and chunks cut in
pauses never split a word. Each chunk is at most 30 s, so it is one Whisper window on any backend.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from heartmula.audio import load_audio, resample
from heartmula.errors import HeartMuLaError
from heartmula.extras import require
from heartmula.transcribe.backends import CHUNK_SECONDS, SAMPLE_RATE, DecodingOptions, load_backend
from heartmula.transcribe.models import locate_model
from heartmula.transcribe.result import Segment, Transcript, Word
from heartmula.transcribe.vocals import isolate_vocals

NO_SPACE_LANGUAGES = ("zh", "ja", "th", "lo", "my", "yue")


@dataclass
class TranscribeConfig:
    model: str | None = None  # embedded name ("base", "tiny.en") or a folder; None = the embedded default
    backend: str | None = None  # None = the model's own (ctranslate2 for model.bin folders, else transformers)
    compute_type: str | None = None  # ctranslate2: int8 (default), int8_float32, float32; transformers: a dtype
    device: str = "cpu"
    threads: int = 0  # 0 = the library's choice
    language: str | None = None  # None = detect once per song
    decoding: DecodingOptions = field(default_factory=DecodingOptions)
    vocals: str = "off"  # vocal isolation: off, center, hpss, center+hpss
    vad: bool = True  # chunk on vocal activity (else: 30 s windows cut at the quietest moment)
    vad_threshold: float = 0.35  # singing over music scores lower than speech; 0.5 (speech default) misses lines
    min_pause: float = 0.5  # seconds of silence that split vocal regions
    section_gap: float = 3.0  # a pause at least this long starts a new lyrics section (a blank line)
    max_repeats: int = 4  # more identical consecutive lines or word n-grams than this are a decoding loop

    def validate(self) -> TranscribeConfig:
        if self.max_repeats < 1 or self.section_gap <= 0 or self.min_pause <= 0:
            raise HeartMuLaError("max_repeats must be >= 1, section_gap and min_pause > 0")
        self.decoding.validate()
        return self


def vocal_regions(audio: np.ndarray, threshold: float, min_pause: float) -> list[tuple[int, int]]:
    """Sample ranges where a voice is active (silero VAD), each at most one Whisper window long."""
    require("transcribe", "faster_whisper")
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    options = VadOptions(threshold=threshold, min_silence_duration_ms=int(min_pause * 1000), speech_pad_ms=400,
                         min_speech_duration_ms=150, max_speech_duration_s=CHUNK_SECONDS - 1.0)
    return [(r["start"], r["end"]) for r in get_speech_timestamps(audio, options, sampling_rate=SAMPLE_RATE)]


def voiced_seconds(audio: np.ndarray, sample_rate: int, threshold: float = TranscribeConfig.vad_threshold,
                   min_pause: float = TranscribeConfig.min_pause) -> float:
    """Seconds of a recording ([channels, samples]) in which the transcriber's VAD hears a voice: how much of a
    song is sung, measured without the model that made it."""
    mono = resample(np.asarray(audio, dtype=np.float32), sample_rate, SAMPLE_RATE).mean(axis=0)
    return sum(end - start for start, end in vocal_regions(mono, threshold, min_pause)) / SAMPLE_RATE


def group_regions(regions: list[tuple[int, int]], max_samples: int) -> list[tuple[int, int]]:
    """Merge consecutive regions into chunks no longer than max_samples (first start to last end)."""
    chunks: list[tuple[int, int]] = []
    for start, end in regions:
        if chunks and end - chunks[-1][0] <= max_samples:
            chunks[-1] = (chunks[-1][0], end)
        else:
            chunks.append((start, min(end, start + max_samples)))
    return chunks


def fixed_windows(audio: np.ndarray, max_samples: int) -> list[tuple[int, int]]:
    """Windows of at most max_samples, each cut at the quietest 20 ms in its last 5 s (no VAD)."""
    frame = SAMPLE_RATE // 50
    chunks, start, total = [], 0, len(audio)
    while start < total:
        end = min(start + max_samples, total)
        if end < total:
            tail = audio[end - 5 * SAMPLE_RATE:end]
            energy = np.square(tail[: len(tail) // frame * frame]).reshape(-1, frame).sum(axis=1)
            end = end - 5 * SAMPLE_RATE + int(np.argmin(energy)) * frame + frame // 2
        chunks.append((start, end))
        start = end
    return chunks


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / max(len(gzip.compress(data)), 1)


def collapse_word_loops(words: list[Word], max_repeats: int) -> list[Word]:
    """Cut a word n-gram (n = 1..4) repeated more than max_repeats times in a row down to max_repeats."""
    for n in range(1, 5):
        i = 0
        while i + n <= len(words):
            gram = [w.text.lower() for w in words[i:i + n]]
            j = i + n
            while j + n <= len(words) and [w.text.lower() for w in words[j:j + n]] == gram:
                j += n
            repeats = (j - i) // n
            if repeats > max_repeats:
                del words[i + max_repeats * n:j]
            i += 1
    return words


def join_words(words: list[Word], language: str) -> str:
    return ("" if language in NO_SPACE_LANGUAGES else " ").join(w.text for w in words).strip()


def apply_guards(segments: list[Segment], config: TranscribeConfig, language: str,
                 regions: list[tuple[float, float]] | None) -> list[Segment]:
    """Remove what Whisper invents rather than hears: lines over no voice, text that compresses too well, and
    lines or phrases repeated in a loop."""
    kept: list[Segment] = []
    threshold = config.decoding.compression_ratio_threshold
    for segment in segments:
        if regions is not None:
            overlap = sum(max(0.0, min(segment.end, e) - max(segment.start, s)) for s, e in regions)
            if overlap < 0.2 * max(segment.end - segment.start, 1e-3):
                continue
        if segment.words:
            before = len(segment.words)
            collapse_word_loops(segment.words, config.max_repeats)
            if len(segment.words) != before:
                segment.text = join_words(segment.words, language)
                segment.end = segment.words[-1].end
        if threshold is not None and compression_ratio(segment.text) > threshold and len(segment.text) > 40:
            continue
        if not segment.text.strip():
            continue
        run = 0
        while run < len(kept) and kept[-1 - run].text.strip().lower() == segment.text.strip().lower():
            run += 1
        if run >= config.max_repeats:
            continue
        kept.append(segment)
    return kept


def assign_sections(segments: list[Segment], section_gap: float) -> None:
    section = 0
    for i, segment in enumerate(segments):
        if i and segment.start - segments[i - 1].end >= section_gap:
            section += 1
        segment.section = section


class Transcriber:
    """Loads a model once; transcribes any number of songs."""

    def __init__(self, config: TranscribeConfig | None = None):
        self.config = (config or TranscribeConfig()).validate()
        self.location = locate_model(self.config.model)
        self.backend = load_backend(self.location, self.config.backend, self.config.compute_type,
                                    self.config.device, self.config.threads)
        language = self.config.language
        if language and language != "en" and not self.backend.multilingual:
            raise HeartMuLaError(f"{self.location.name} is an English-only model; use --model base for {language!r}")
        if language and language not in self.backend.supported_languages():
            raise HeartMuLaError(f"{language!r} is not a language this Whisper knows; use a code such as en, zh, "
                                 "ja, ko, es")

    def prepare_audio(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """[channels, samples] at any rate -> 16 kHz mono float32, vocals isolated if configured."""
        audio = resample(np.asarray(audio, dtype=np.float32), sample_rate, SAMPLE_RATE)
        return np.ascontiguousarray(isolate_vocals(audio, self.config.vocals), dtype=np.float32)

    def detect_language(self, audio: np.ndarray, chunks: list[tuple[int, int]]) -> tuple[str, float]:
        """Once per song, on up to 30 s of its voiced audio (the chunks joined), so an intro does not decide."""
        probabilities = self._language_probabilities(audio, chunks)
        best = max(probabilities, key=probabilities.get)
        return best, probabilities[best]

    def _language_probabilities(self, audio: np.ndarray, chunks: list[tuple[int, int]]) -> dict[str, float]:
        if not self.backend.multilingual:
            return {"en": 1.0}
        voiced = np.concatenate([audio[s:e] for s, e in chunks]) if chunks else audio
        return self.backend.language_probabilities(voiced[: int(CHUNK_SECONDS * SAMPLE_RATE)])

    def language_probabilities(self, audio: np.ndarray, sample_rate: int) -> dict[str, float]:
        """Whisper's probability of each language it knows for a recording's sung language, as `transcribe`
        detects it (on up to 30 s of the voiced audio); {} when no voice is found."""
        mono = self.prepare_audio(audio if audio.ndim == 2 else audio[None], sample_rate)
        chunks = self._chunks(mono)[0]
        return self._language_probabilities(mono, chunks) if chunks else {}

    def _chunks(self, mono: np.ndarray) -> tuple[list[tuple[int, int]], list[tuple[float, float]] | None]:
        """Windows of at most 30 s to decode (voiced regions grouped, with VAD) and the voiced regions (s)."""
        max_samples = int(CHUNK_SECONDS * SAMPLE_RATE)
        if not self.config.vad:
            return fixed_windows(mono, max_samples), None
        regions = vocal_regions(mono, self.config.vad_threshold, self.config.min_pause)
        return group_regions(regions, max_samples), [(s / SAMPLE_RATE, e / SAMPLE_RATE) for s, e in regions]

    def transcribe_array(self, audio: np.ndarray, sample_rate: int, name: str = "<array>", progress=None,
                         prompt_for: Callable[[list[tuple[float, float]], int], str | None] | None = None
                         ) -> Transcript:
        """`prompt_for(chunk_times, index)`, if given, returns the text to condition the decoding of chunk `index`
        on (chunk_times: every chunk's (start, end) in seconds)."""
        config = self.config
        mono = self.prepare_audio(audio if audio.ndim == 2 else audio[None], sample_rate)
        duration = len(mono) / SAMPLE_RATE
        chunks, region_seconds = self._chunks(mono)
        if config.language:
            language, probability = config.language, 1.0
        elif chunks:
            language, probability = self.detect_language(mono, chunks)
        else:
            language, probability = "", 0.0  # no voice anywhere: nothing to detect
        segments: list[Segment] = []
        chunk_times = [(s / SAMPLE_RATE, e / SAMPLE_RATE) for s, e in chunks]
        for index, (start, end) in enumerate(chunks):
            offset = start / SAMPLE_RATE
            chunk_end = end / SAMPLE_RATE
            options = config.decoding
            if prompt_for is not None:
                options = replace(options, prompt=prompt_for(chunk_times, index))
            for segment in self.backend.transcribe_chunk(mono[start:end], language or None, options):
                segment.start = min(segment.start + offset, chunk_end)
                segment.end = min(max(segment.end + offset, segment.start), chunk_end)
                for word in segment.words:
                    word.start = min(word.start + offset, chunk_end)
                    word.end = min(max(word.end + offset, word.start), chunk_end)
                segments.append(segment)
            if progress is not None:
                progress(end / max(len(mono), 1))
        segments = apply_guards(segments, config, language, region_seconds)
        _make_monotonic(segments)
        assign_sections(segments, config.section_gap)
        return Transcript(name, language, probability, duration, segments, self.location.name, self.backend.name,
                          config.vocals)

    def transcribe(self, path: str | os.PathLike, progress=None) -> Transcript:
        audio, rate = load_audio(path)
        if audio.shape[0] > 2:
            audio = audio[:2]  # surround: the front pair carries the vocals
        return self.transcribe_array(audio, rate, str(path), progress)


def _make_monotonic(segments: list[Segment]) -> None:
    """Whisper's times can step back by a few ms across segment or chunk edges; clamp them forward so that
    every start >= the previous end and no word leaves its line."""
    last = 0.0
    for segment in segments:
        segment.start = max(segment.start, last)
        for word in segment.words:
            word.start = max(word.start, last)
            word.end = max(word.end, word.start)
            last = word.end
        segment.end = max(segment.end, segment.start, last)
        last = segment.end


AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".aiff", ".aif", ".wma", ".webm")


def expand_audio_paths(inputs: list[str | os.PathLike]) -> list[Path]:
    """Files as given; folders searched recursively for audio files (sorted)."""
    paths: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                raise HeartMuLaError(f"folder {item} holds no audio files ({', '.join(AUDIO_SUFFIXES)})")
            paths.extend(found)
        elif item.is_file():
            paths.append(item)
        else:
            raise HeartMuLaError(f"{item} does not exist")
    return paths


def transcribe(path: str | os.PathLike, **config) -> Transcript:
    """One-call API: `transcribe("song.mp3", language="en")` -> Transcript (segments and words with times)."""
    return Transcriber(TranscribeConfig(**config)).transcribe(path)

