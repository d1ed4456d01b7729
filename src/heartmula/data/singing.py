"""A singing voice: espeak-ng speaks each sung unit, the WORLD vocoder stretches it onto its notes and pins its pitch.

A unit is what espeak says in one call: a word in English/Spanish (spread over one note per syllable), a
character (Chinese), a hangul block (Korean) or a mora (Japanese). Consonants keep their spoken length and only
the voiced part is stretched, which keeps words intelligible on long notes. F0 follows the notes with a short
glide between them and a delayed vibrato, as singers do.

Mandarin is different: espeak-ng's Mandarin is not understood even as plain speech, so a neural voice
(`heartmula.data.mandarin`) speaks each lyric line as a whole (natural coarticulation and tones), and WORLD then
warps every character onto its notes (initial consonant at its spoken length, the final stretched) and re-pitches
it to the melody plus a share of the spoken tone contour, since Mandarin tones carry meaning.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from heartmula.audio import resample
from heartmula.data.espeak import VOICE_OF_LANGUAGE, Espeak
from heartmula.data.mandarin import MandarinVoice
from heartmula.errors import HeartMuLaError
from heartmula.extras import missing_extra_message

FRAME_MS = 5.0


def load_pyworld():
    """Import pyworld; its 0.3.x __init__ needs pkg_resources, which setuptools>=81 dropped, so fall back to
    loading the compiled extension directly."""
    try:
        import pyworld

        return pyworld
    except ModuleNotFoundError as exc:
        if exc.name != "pkg_resources":
            raise HeartMuLaError(missing_extra_message("data", "the singing voice", str(exc))) from None
    spec = importlib.util.find_spec("pyworld")
    package_dir = Path(spec.submodule_search_locations[0])
    extension = next(package_dir.glob("pyworld*.so"), None) or next(package_dir.glob("pyworld*.pyd"))
    ext_spec = importlib.util.spec_from_file_location("pyworld.pyworld", extension)
    module = importlib.util.module_from_spec(ext_spec)
    ext_spec.loader.exec_module(module)
    sys.modules.setdefault("pyworld", module)
    return module


@dataclass(frozen=True)
class Note:
    onset: float  # seconds from the start of the song
    duration: float
    pitch: int  # MIDI note number


@dataclass
class SungUnit:
    spoken: str  # text given to espeak-ng
    syllables: list[str]  # display text of each syllable (the timing entries)
    notes: list[list[Note]]  # per syllable, the notes it is sung on (more than one = melisma)
    line: int = -1  # lyric line number: languages sung line by line (Mandarin) speak a line's units together

    @property
    def onset(self) -> float:
        return self.notes[0][0].onset

    @property
    def end(self) -> float:
        last = self.notes[-1][-1]
        return last.onset + last.duration


@dataclass(frozen=True)
class VoiceConfig:
    gender: str = "female"  # "female" or "male"
    vibrato_hz: float = 5.5
    vibrato_cents: float = 30.0
    vibrato_delay_s: float = 0.25
    glide_s: float = 0.04
    release_s: float = 0.03  # silence left before the next unit's onset, so words do not smear together
    speech_rate: int = 150
    variant: str = ""
    formant_shift: float = 1.0
    tone_depth: float = 1.0  # share of the spoken Mandarin tone contour around the note pitch (1 is clearest)
    phrase_formant_shift: float = 1.0  # formant scaling of the (female) Mandarin voice; < 1 for a male timbre

    def espeak_voice(self, language: str) -> str:
        base = VOICE_OF_LANGUAGE[language]
        # An espeak-ng variant (e.g. "f3") changes the timbre; by default our flutter-free variant is used and a
        # female voice comes from raising the formants (formant_shift), which Whisper understands better.
        return f"{base}+{self.variant}" if self.variant else base


@dataclass
class SungLine:
    audio: np.ndarray  # mono float32 at sample_rate
    sample_rate: int
    syllable_timing: list[dict] = field(default_factory=list)


def midi_to_hz(pitch: float) -> float:
    return 440.0 * 2.0 ** ((pitch - 69.0) / 12.0)


class Singer:
    def __init__(self, voice: VoiceConfig) -> None:
        self.voice = voice
        self.espeak = Espeak()
        self.world = load_pyworld()
        self.sample_rate = self.espeak.sample_rate
        # A 512-point FFT would halve WORLD's cost but blurs the formants, which Whisper understands clearly less.
        self._f0_floor = 65.0
        self._fft_size = 1024
        frequencies = np.linspace(0.0, self.sample_rate / 2, self._fft_size // 2 + 1)
        self._voiced_aperiodicity = np.clip((frequencies / 8000.0) ** 2 * 0.1, 0.001, 0.9)
        self._analysis_cache: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.cache_size = 500
        self._mandarin = None  # heartmula.data.mandarin.MandarinVoice, loaded on the first Mandarin line

    def sing(self, units: list[SungUnit], language: str, duration: float) -> SungLine:
        """Render all units into one mono track of `duration` seconds; return it with per-syllable timing."""
        fs = self.sample_rate
        track = np.zeros(int(np.ceil(duration * fs)) + fs, dtype=np.float32)
        timing = []
        voice_name = self.voice.espeak_voice(language)
        # A chorus sings the same words on the same notes each time: render each such unit (or line) once per song
        # (the audio depends only on the text and the notes relative to its onset).
        rendered: dict[tuple, np.ndarray] = {}
        groups = phrase_groups(units) if language in PHRASE_LANGUAGES else [[unit] for unit in units]
        for group in groups:
            origin = group[0].onset
            key = (tuple(u.spoken for u in group), tuple((round(n.onset - origin, 4), round(n.duration, 4), n.pitch)
                                                         for u in group for slot in u.notes for n in slot))
            if key not in rendered:
                if language in PHRASE_LANGUAGES:
                    rendered[key] = self._sing_phrase(group)
                else:
                    rendered[key] = self._sing_unit(group[0], voice_name)
            sung = rendered[key]
            start = int(round(origin * fs))
            end = min(start + len(sung), len(track))
            track[start:end] += sung[: end - start]
            for unit in group:
                for text, notes in zip(unit.syllables, unit.notes):
                    last = notes[-1]
                    timing.append({"text": text, "start": round(notes[0].onset, 3),
                                   "end": round(last.onset + last.duration, 3)})
        return SungLine(track[: int(np.ceil(duration * fs))], fs, timing)

    def _phrase_voice(self):
        if self._mandarin is None:
            self._mandarin = MandarinVoice()
        return self._mandarin

    def _sing_phrase(self, units: list[SungUnit]) -> np.ndarray:
        """A line spoken whole by the Mandarin voice, each character warped onto its notes and re-pitched."""
        fs, pw = self.sample_rate, self.world
        characters = "".join(u.spoken for u in units)
        slots = [slot for u in units for slot in u.notes]
        origin = slots[0][0].onset
        last = slots[-1][-1]
        n_out = max(int(round((last.onset + last.duration - origin - self.voice.release_s) * 1000.0 / FRAME_MS)), 2)
        if len(characters) != len(slots):  # not one character per syllable: cannot align, sing nothing
            return np.zeros(n_out * int(fs * FRAME_MS / 1000.0), dtype=np.float32)

        voice = self._phrase_voice()
        spoken = voice.speak(characters)
        x = resample(spoken.audio[None], voice.sample_rate, fs)[0].astype(np.float64)
        f0, times = pw.dio(x, fs, f0_floor=self._f0_floor, f0_ceil=700.0, frame_period=FRAME_MS)
        envelope = pw.cheaptrick(x, f0, times, fs, f0_floor=self._f0_floor, fft_size=self._fft_size)
        if self.voice.phrase_formant_shift != 1.0:
            envelope = shift_formants(envelope, self.voice.phrase_formant_shift)
        n_in = len(f0)
        voiced_in = f0 > 0
        hop = int(fs * FRAME_MS / 1000.0)
        frame_rms = np.sqrt(np.convolve(x**2, np.ones(hop) / hop, mode="same")[np.minimum(np.arange(n_in) * hop,
                                                                                        len(x) - 1)])
        quiet = frame_rms < 0.03 * frame_rms.max()
        # Output frame -> spoken frame, character by character; -1 = silence (rests, releases).
        source = np.full(n_out, -1, dtype=np.int64)
        for k, (slot, (start, consonant_end, end)) in enumerate(zip(slots, spoken.spans)):
            out_start = int(round((slot[0].onset - origin) * 1000.0 / FRAME_MS))
            slot_end = slot[-1].onset + slot[-1].duration
            following = slots[k + 1][0].onset if k + 1 < len(slots) else None
            if following is None or following > slot_end + 0.02:  # a rest follows: release before it
                slot_end -= self.voice.release_s
            else:  # legato into the next character
                slot_end = following
            out_end = min(int(round((slot_end - origin) * 1000.0 / FRAME_MS)), n_out)
            a = min(int(round(start * 1000.0 / FRAME_MS)), n_in - 1)
            c = min(max(int(round(consonant_end * 1000.0 / FRAME_MS)), a), n_in - 1)
            b = min(max(int(round(end * 1000.0 / FRAME_MS)), c + 1), n_in)
            if out_end <= out_start:
                continue
            while a < c and quiet[a]:  # the predicted initial may begin with a pause: start on the sound itself
                a += 1
            frames = np.arange(a, b)
            mapped = a + stretch_voiced_frames((frames >= c) & voiced_in[a:b], out_end - out_start)
            source[out_start:out_end] = mapped
        silent = source < 0
        source = np.where(silent, 0, source)
        # The spoken tone contour in semitones around the line's median, carried through the warp.
        semitones = np.zeros(n_in)
        if voiced_in.sum() >= 2:
            log_f0 = 12.0 * np.log2(f0[voiced_in])
            semitones = np.interp(np.arange(n_in), np.flatnonzero(voiced_in), log_f0 - np.median(log_f0))
        deviation = np.clip(semitones, -7.0, 7.0)[source] * self.voice.tone_depth
        notes = [n for slot in slots for n in slot]
        f0_out = note_pitch_curve(notes, origin, n_out, self.voice, deviation)
        f0_out[~voiced_in[source] | silent] = 0.0
        envelope_out = envelope[source]
        envelope_out[silent] *= 1e-8
        aperiodicity = np.where((f0_out > 0)[:, None], self._voiced_aperiodicity[None, :], 1.0 - 1e-6)
        audio = pw.synthesize(np.ascontiguousarray(f0_out), np.ascontiguousarray(envelope_out),
                              np.ascontiguousarray(aperiodicity), fs, FRAME_MS).astype(np.float32)
        return fade_edges(audio, fs)

    def _analyse(self, text: str, voice_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """WORLD parameters (voiced flags, spectral envelope, aperiodicity) of `text` spoken, cached per word:
        choruses repeat their words, and analysis is half the cost of singing."""
        key = (text, voice_name)
        if key in self._analysis_cache:
            self._analysis_cache[key] = self._analysis_cache.pop(key)  # most recently used goes last
            return self._analysis_cache[key]
        fs = self.sample_rate
        pw = self.world
        # espeak-ng carries state from one utterance to the next, so a word spoken after other words sounds
        # slightly different; with this cache, which words are spoken then depends on what the process sang
        # before, and a song rebuilt in another process would differ. Starting espeak afresh for every word (cheap
        # beside the analysis) makes each analysis a function of the text alone.
        self.espeak.reset()
        spoken = self.espeak.speak(text, voice_name, pitch=50, rate=self.voice.speech_rate)
        if spoken.size < fs * 0.03:
            return None
        x = spoken.astype(np.float64)
        f0, times = pw.dio(x, fs, f0_floor=self._f0_floor, f0_ceil=500.0, frame_period=FRAME_MS)
        envelope = pw.cheaptrick(x, f0, times, fs, f0_floor=self._f0_floor, fft_size=self._fft_size)
        if self.voice.formant_shift != 1.0:
            envelope = shift_formants(envelope, self.voice.formant_shift)
        voiced = f0 > 0
        # A fixed aperiodicity shape instead of WORLD's D4C estimate (which costs as much as everything else):
        # voiced frames are periodic below ~4 kHz and breathier above, consonant frames are pure noise.
        aperiodicity = np.where(voiced[:, None], self._voiced_aperiodicity[None, :], 1.0 - 1e-6)
        entry = (voiced, envelope, np.ascontiguousarray(aperiodicity))
        self._analysis_cache[key] = entry
        if len(self._analysis_cache) > self.cache_size:
            self._analysis_cache.pop(next(iter(self._analysis_cache)))
        return entry

    def _sing_unit(self, unit: SungUnit, voice_name: str) -> np.ndarray:
        fs = self.sample_rate
        length = max(unit.end - unit.onset - self.voice.release_s, 0.06)
        analysis = self._analyse(unit.spoken, voice_name)
        if analysis is None:
            return np.zeros(int(length * fs), dtype=np.float32)
        voiced, envelope, aperiodicity = analysis
        n_out = max(int(round(length * 1000.0 / FRAME_MS)), 2)
        source = stretch_voiced_frames(voiced, n_out)
        f0_out = self._pitch_curve(unit, n_out)
        f0_out[~voiced[source]] = 0.0
        audio = self.world.synthesize(np.ascontiguousarray(f0_out), np.ascontiguousarray(envelope[source]),
                                      np.ascontiguousarray(aperiodicity[source]), fs, FRAME_MS)
        return fade_edges(audio.astype(np.float32), fs)

    def _pitch_curve(self, unit: SungUnit, n_frames: int) -> np.ndarray:
        notes = [note for group in unit.notes for note in group]
        return note_pitch_curve(notes, unit.onset, n_frames, self.voice)


PHRASE_LANGUAGES = ("zh",)  # sung line by line by a neural speaking voice instead of word by word by espeak-ng
MAX_PHRASE_SYLLABLES = 40


def fade_edges(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """`audio` with linear 10 ms fades (at most a quarter of it each) at both ends, in place, so it does not click."""
    fade = min(len(audio) // 4, int(0.01 * sample_rate))
    if fade > 0:
        ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
        audio[:fade] *= ramp
        audio[-fade:] *= ramp[::-1]
    return audio


def phrase_groups(units: list[SungUnit]) -> list[list[SungUnit]]:
    """Consecutive units of the same lyric line (units without a line number stand alone), at most
    MAX_PHRASE_SYLLABLES syllables each."""
    groups: list[list[SungUnit]] = []
    for unit in units:
        if groups and unit.line >= 0 and groups[-1][-1].line == unit.line and \
                sum(len(u.syllables) for u in groups[-1]) + len(unit.syllables) <= MAX_PHRASE_SYLLABLES:
            groups[-1].append(unit)
        else:
            groups.append([unit])
    return groups


def note_pitch_curve(notes: list[Note], origin: float, n_frames: int, voice: VoiceConfig,
                     deviation: np.ndarray | None = None) -> np.ndarray:
    """Target F0 per frame from `origin`: the notes in time, glided at note changes, with vibrato that starts late,
    plus an optional deviation in semitones per frame (a spoken tone contour)."""
    t = np.arange(n_frames) * FRAME_MS / 1000.0  # relative to the origin, like the render cache key
    onsets = np.array([n.onset - origin for n in notes])
    pitches = np.array([float(n.pitch) for n in notes])
    index = np.clip(np.searchsorted(onsets, t, side="right") - 1, 0, len(notes) - 1)
    semitones = pitches[index]
    glide = max(int(voice.glide_s * 1000.0 / FRAME_MS), 1)
    if glide > 1 and len(notes) > 1:
        kernel = np.ones(glide) / glide
        padded = np.pad(semitones, (glide // 2, glide - 1 - glide // 2), mode="edge")
        semitones = np.convolve(padded, kernel, mode="valid")
    since_note = t - onsets[index]
    depth = np.clip((since_note - voice.vibrato_delay_s) / 0.2, 0.0, 1.0) * voice.vibrato_cents / 100
    semitones = semitones + depth * np.sin(2 * np.pi * voice.vibrato_hz * since_note)
    if deviation is not None:
        semitones = semitones + deviation
    return 440.0 * 2.0 ** ((semitones - 69.0) / 12.0)


def stretch_voiced_frames(voiced: np.ndarray, n_out: int) -> np.ndarray:
    """Map each of `n_out` output frames to an input frame.

    Unvoiced frames (consonants) keep their length and voiced frames (vowels) absorb the rest; when even that
    does not fit, everything is compressed evenly.
    """
    n_in = len(voiced)
    weights = np.ones(n_in)
    n_voiced = int(voiced.sum())
    spare = n_out - (n_in - n_voiced)
    if n_voiced > 0 and spare > n_voiced:
        weights[voiced] = spare / n_voiced
    else:
        weights *= n_out / max(n_in, 1)
    ends = np.cumsum(weights)
    return np.clip(np.searchsorted(ends, np.arange(n_out) + 0.5), 0, n_in - 1)


def shift_formants(envelope: np.ndarray, factor: float) -> np.ndarray:
    """Scale the spectral envelope's frequency axis by `factor` (> 1 raises formants: a shorter vocal tract)."""
    bins = envelope.shape[1]
    source = np.arange(bins) / factor
    low = np.clip(np.floor(source).astype(int), 0, bins - 1)
    high = np.clip(low + 1, 0, bins - 1)
    frac = source - np.floor(source)
    return np.ascontiguousarray(envelope[:, low] * (1 - frac) + envelope[:, high] * frac)
