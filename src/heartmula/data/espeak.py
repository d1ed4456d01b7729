"""espeak-ng speech synthesis through its C library, in-process.

One call per sung syllable makes a subprocess far too slow (~20 ms each); the library synthesises a syllable in
~1.5 ms. The `espeakng-loader` wheel carries libespeak-ng 1.52 and its data, which pronounces Mandarin correctly
(Debian's 1.51 does not), so it is preferred; the system library is the fallback.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heartmula.errors import HeartMuLaError
from heartmula.extras import missing_extra_message

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_INITIALIZE_DONT_EXIT = 0x8000
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4
_CHARS_UTF8 = 1
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

# espeak-ng voice names of the five corpus languages.
VOICE_OF_LANGUAGE = {"en": "en-us", "es": "es", "zh": "cmn", "ja": "ja", "ko": "ko"}
# Our voice variant. espeak-ng's default voices add "flutter" (pitch jitter) whose phase runs on across calls in a
# process, so a word would sound different depending on what was said before: builds would not be reproducible.
VARIANT_NAME = "heartmula"
VARIANT_TEXT = "language variant\nname heartmula\nflutter 0\n"
SYSTEM_DATA_DIRS = ("/usr/lib/x86_64-linux-gnu/espeak-ng-data", "/usr/lib/aarch64-linux-gnu/espeak-ng-data",
                    "/usr/share/espeak-ng-data")


@dataclass(frozen=True)
class EspeakLibrary:
    library_path: str
    data_path: str | None
    version: str


def find_espeak() -> EspeakLibrary:
    try:
        import espeakng_loader

        return EspeakLibrary(espeakng_loader.get_library_path(), espeakng_loader.get_data_path(),
                             "1.52 (espeakng-loader)")
    except ImportError:
        pass
    path = ctypes.util.find_library("espeak-ng")
    data = next((d for d in SYSTEM_DATA_DIRS if Path(d, "phontab").is_file()), None)
    if path is None or data is None:
        raise HeartMuLaError(missing_extra_message("data", "the singing voice", "espeak-ng is not installed; the "
                                                   "extra brings it as the espeakng-loader wheel"))
    return EspeakLibrary(path, data, "system")


def cache_dir() -> Path:
    """$HEARTMULA_CACHE, else $XDG_CACHE_HOME/heartmula, else ~/.cache/heartmula."""
    if os.environ.get("HEARTMULA_CACHE"):
        return Path(os.environ["HEARTMULA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "heartmula"


def data_dir_with_variant(data_path: str) -> Path:
    """A copy of espeak-ng's data folder made of symlinks, plus our variant file (the installed data folder may
    be read-only, and must not be changed)."""
    source = Path(data_path)
    tag = hashlib.sha1(f"{source.resolve()}|{VARIANT_TEXT}".encode()).hexdigest()[:10]
    target = cache_dir() / f"espeak-ng-data-{tag}"
    variant_file = target / "voices" / "!v" / VARIANT_NAME
    if variant_file.is_file():
        return target
    staging = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    (staging / "voices" / "!v").mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.name != "voices":
            (staging / entry.name).symlink_to(entry.resolve())
    for entry in (source / "voices").iterdir():
        if entry.name != "!v":
            (staging / "voices" / entry.name).symlink_to(entry.resolve())
    for entry in (source / "voices" / "!v").iterdir():
        (staging / "voices" / "!v" / entry.name).symlink_to(entry.resolve())
    (staging / "voices" / "!v" / VARIANT_NAME).write_text(VARIANT_TEXT)
    try:
        os.rename(staging, target)  # atomic: parallel workers race here, one wins, all use the same folder
    except OSError:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return target


class Espeak:
    """A synchronous espeak-ng speaker. Not thread-safe: make one per process."""

    def __init__(self) -> None:
        found = find_espeak()
        self.library = found
        self._lib = ctypes.CDLL(found.library_path)
        self._data = str(data_dir_with_variant(found.data_path)).encode()
        self._lib.espeak_Initialize.restype = ctypes.c_int
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # kept on self: ctypes must not garbage-collect it
        self.reset()
        # espeak_ng_SetRandSeed exists from 1.52 on (the wheel); Debian's 1.51 lacks it.
        self._seed = getattr(self._lib, "espeak_ng_SetRandSeed", None)
        if self._seed is not None:
            self._seed.argtypes = [ctypes.c_long]
        self._voice: str | None = None

    def reset(self) -> None:
        """Start espeak-ng afresh: it carries pitch state from one utterance to the next (the same word at the
        same settings sounds different after words at other pitches), so a song that must render the same
        whatever came before it starts from here. Terminate first: initialising again over a live instance leaks
        its buffers and can crash the process."""
        if getattr(self, "sample_rate", 0) > 0:
            self._lib.espeak_Terminate()
        self.sample_rate = self._lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, self._data, _ESPEAK_INITIALIZE_DONT_EXIT
        )
        if self.sample_rate <= 0:
            raise HeartMuLaError(f"espeak-ng failed to start (library {self.library.library_path})")
        self._lib.espeak_SetSynthCallback(self._callback)
        self._voice = None

    def _collect(self, wav, n_samples, _events) -> int:
        if n_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
        return 0

    def set_voice(self, name: str) -> None:
        name = f"{name}+{VARIANT_NAME}" if "+" not in name else name
        if name != self._voice:
            if self._lib.espeak_SetVoiceByName(name.encode()) != 0:
                raise HeartMuLaError(f"espeak-ng has no voice {name!r}")
            self._voice = name

    def speak(self, text: str, voice: str, pitch: int = 50, rate: int = 150) -> np.ndarray:
        """Float32 mono audio at `self.sample_rate`, spoken on a flat pitch (range 0), silence trimmed."""
        self.set_voice(voice)
        self._lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
        # Range 0 makes the intonation flat, so the vocoder sees one steady pitch it can replace with the note.
        self._lib.espeak_SetParameter(_PARAM_RANGE, 0, 0)
        self._lib.espeak_SetParameter(_PARAM_RATE, int(rate), 0)
        self._chunks.clear()
        # Breath noise uses espeak's random generator: reseed it so a text always sounds the same.
        if self._seed is not None:
            self._seed(1)
        encoded = text.encode("utf-8") + b"\0"
        self._lib.espeak_Synth(encoded, len(encoded), 0, 0, 0, _CHARS_UTF8, None, None)
        self._lib.espeak_Synchronize()
        if not self._chunks:
            return np.zeros(0, dtype=np.float32)
        audio = np.concatenate(self._chunks).astype(np.float32) / 32768.0
        return trim_silence(audio)


def trim_silence(audio: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio) > threshold)
    if loud.size == 0:
        return audio[:0]
    return audio[max(0, loud[0] - 64) : loud[-1] + 64]
