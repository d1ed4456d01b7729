"""Audio files in and out: the only module that touches them.

Arrays are float32, shaped [channels, samples]. Reading tries soundfile first (WAV, FLAC, OGG, MP3) and falls back
to ffmpeg for anything else it can decode (M4A, AAC, ...). Writing is atomic.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from heartmula.errors import HeartMuLaError
from heartmula.files import atomic_output

WRITE_FORMATS = {
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
    ".mp3": ("MP3", None),
    ".ogg": ("OGG", "VORBIS"),
}


def _decode_with_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    if shutil.which("ffmpeg") is None:
        raise HeartMuLaError(f"cannot read {path}: not a format soundfile knows and ffmpeg is not installed")
    probe = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "f32le", "-acodec", "pcm_f32le", "-"],
        capture_output=True,
    )
    if probe.returncode != 0 or not probe.stdout:
        reason = probe.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no audio stream"]
        raise HeartMuLaError(f"cannot read {path} as audio: {reason[0]}")
    info = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries", "stream=sample_rate,channels",
         "-of", "csv=p=0", str(path)],
        capture_output=True, text=True,
    )
    try:
        rate, channels = (int(x) for x in info.stdout.strip().split(",")[:2])
    except ValueError:
        raise HeartMuLaError(f"cannot read the sample rate of {path}") from None
    audio = np.frombuffer(probe.stdout, dtype=np.float32).reshape(-1, channels).T
    return np.ascontiguousarray(audio), rate


def load_audio(
    path: str | os.PathLike, sample_rate: int | None = None, channels: int | None = None
) -> tuple[np.ndarray, int]:
    """Read `path` as float32 [channels, samples]; resample to `sample_rate` and mix to `channels` when given."""
    path = Path(path)
    if not path.is_file():
        raise HeartMuLaError(f"audio file {path} does not exist")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        audio = np.ascontiguousarray(data.T)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        audio, rate = _decode_with_ffmpeg(path)
    if audio.shape[1] == 0:
        raise HeartMuLaError(f"audio file {path} contains no samples")
    if not np.isfinite(audio).all():
        raise HeartMuLaError(f"audio file {path} contains NaN or infinite samples")
    if channels is not None:
        audio = mix_channels(audio, channels)
    if sample_rate is not None and sample_rate != rate:
        audio = resample(audio, rate, sample_rate)
        rate = sample_rate
    return audio, rate


def mix_channels(audio: np.ndarray, channels: int) -> np.ndarray:
    if audio.shape[0] == channels:
        return audio
    if channels == 1:
        return audio.mean(axis=0, keepdims=True)
    if audio.shape[0] == 1:
        return np.repeat(audio, channels, axis=0)
    raise HeartMuLaError(f"cannot map {audio.shape[0]} channels to {channels}")


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    if rate_in == rate_out:
        return audio
    out = soxr.resample(np.ascontiguousarray(audio.T), rate_in, rate_out, quality="HQ")
    return np.ascontiguousarray(np.asarray(out, dtype=np.float32).reshape(out.shape[0], -1).T)


def fit_peak(audio: np.ndarray, ceiling: float = 0.98) -> np.ndarray:
    """A whole song scaled down, if needed, so that its peak is at most `ceiling` (about -0.2 dBFS).

    A decoder's output is not bounded: a loud passage may peak above full scale, which the file writer would
    hard-clip. Quieter audio comes back unchanged (the same array)."""
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    return audio if peak <= ceiling else (audio * (ceiling / peak)).astype(audio.dtype, copy=False)


def save_audio(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> Path:
    """Write [channels, samples] (or [samples]) audio; the format follows the suffix: wav, flac, mp3, ogg."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_FORMATS:
        raise HeartMuLaError(f"cannot write {path}: use one of {', '.join(WRITE_FORMATS)}")
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    fmt, subtype = WRITE_FORMATS[suffix]
    with atomic_output(path) as tmp:
        sf.write(str(tmp), np.clip(audio.T, -1.0, 1.0), sample_rate, format=fmt, subtype=subtype)
    return path


class LiveWavWriter:
    """A 16-bit WAV that is valid at every moment while audio is appended (live streaming output).

    Unlike `save_audio` (temp name, then rename), the file is written in place: the point is that a player or a
    second process can open it while it grows. After every `write` the RIFF and data sizes in the header are
    patched (the stdlib `wave` writer does this) and the file is flushed, so a copy taken at any time, or the file
    left by an interrupted run, is a readable WAV of the audio so far.
    """

    def __init__(self, path: str | os.PathLike, sample_rate: int, channels: int):
        import wave

        self.path = Path(path)
        if self.path.suffix.lower() != ".wav":
            raise HeartMuLaError(f"live output must be a .wav file (it is readable while it grows), got {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._wav = wave.open(self._file, "wb")
        self._wav.setnchannels(channels)
        self._wav.setsampwidth(2)
        self._wav.setframerate(sample_rate)
        self._wav.writeframes(b"")  # the header goes out now: an empty but valid WAV
        self._file.flush()
        self.channels, self.samples = channels, 0

    def write(self, audio: np.ndarray) -> None:
        """Append float audio [channels, samples]."""
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 2 or audio.shape[0] != self.channels:
            raise HeartMuLaError(f"expected audio [{self.channels}, samples], got {list(audio.shape)}")
        pcm = np.round(np.clip(audio.T, -1.0, 1.0) * 32767).astype("<i2")
        self._wav.writeframes(pcm.tobytes())
        self._file.flush()
        self.samples += audio.shape[1]

    def close(self) -> None:
        if self._wav is not None:
            self._wav.close()
            self._file.close()
            self._wav = None

    def __enter__(self) -> LiveWavWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
