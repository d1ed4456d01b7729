"""espeak-ng speech synthesis through its C library, in-process.

One call per sung syllable makes a subprocess far too slow (~20 ms each); the library synthesises a syllable in
~1.5 ms. The `espeakng-loader` wheel carries libespeak-ng 1.52 and its data, which pronounces Mandarin correctly
(Debian's 1.51 does not), so it is preferred; the system library is the fallback.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass

import numpy as np

from heartmula.errors import HeartMuLaError

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_INITIALIZE_DONT_EXIT = 0x8000
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4
_CHARS_UTF8 = 1
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

# espeak-ng voice names of the five corpus languages.
VOICE_OF_LANGUAGE = {"en": "en-us", "es": "es", "zh": "cmn", "ja": "ja", "ko": "ko"}


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
    if path is None:
        raise HeartMuLaError("espeak-ng is not installed: run `bash scripts/setup.sh` (it installs the espeakng-loader "
                             "wheel and Debian's espeak-ng)")
    return EspeakLibrary(path, None, "system")


class Espeak:
    """A synchronous espeak-ng speaker. Not thread-safe: make one per process."""

    def __init__(self) -> None:
        found = find_espeak()
        self.library = found
        self._lib = ctypes.CDLL(found.library_path)
        data = found.data_path.encode() if found.data_path else None
        self._lib.espeak_Initialize.restype = ctypes.c_int
        self.sample_rate = self._lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, data, _ESPEAK_INITIALIZE_DONT_EXIT
        )
        if self.sample_rate <= 0:
            raise HeartMuLaError(f"espeak-ng failed to start (library {found.library_path})")
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # kept on self: ctypes must not garbage-collect it
        self._lib.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None

    def _collect(self, wav, n_samples, _events) -> int:
        if n_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
        return 0

    def set_voice(self, name: str) -> None:
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
