"""Real audio for the transcription tests, made here with espeak-ng (installed by scripts/setup.sh), and real
Whisper models from the embedded packages, loaded once per session."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from heartmula.audio import load_audio, save_audio

EN_LINES = ["Every morning I walk along the river.", "The sun is warm and the wind is gentle."]
ES_LINES = ["Cada mañana camino por el río.", "El viento es suave en mi cara."]


def speak(text: str, voice: str, path: Path, speed: int = 140) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is missing: run `bash scripts/setup.sh`")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True)
    return path


def spoken(text: str, voice: str, tmp: Path, sample_rate: int = 16000) -> np.ndarray:
    """Mono float32 speech at `sample_rate`."""
    audio, _ = load_audio(speak(text, voice, tmp / "speech.wav"), sample_rate, 1)
    return audio[0]


@pytest.fixture
def make_speech(tmp_path):
    """make_speech(text, voice) -> mono float32 speech at 16 kHz."""
    return lambda text, voice, sample_rate=16000: spoken(text, voice, tmp_path, sample_rate)


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory) -> Path:
    """en.wav and es.wav (two lines each), and pause.wav: two English lines 5 s apart."""
    folder = tmp_path_factory.mktemp("speech")
    speak(" ".join(EN_LINES), "en-us", folder / "en.wav")
    speak(" ".join(ES_LINES), "es-419", folder / "es.wav", speed=130)
    first = spoken(EN_LINES[0], "en-us", folder)
    second = spoken(EN_LINES[1], "en-us", folder)
    gap = np.zeros(5 * 16000, dtype=np.float32)
    save_audio(folder / "pause.wav", np.concatenate([first, gap, second]), 16000)
    (folder / "en.txt").write_text("\n".join(EN_LINES) + "\n")
    (folder / "es.txt").write_text("\n".join(ES_LINES) + "\n")
    return folder


@pytest.fixture(scope="session")
def base_transcriber():
    from heartmula.transcribe import TranscribeConfig, Transcriber

    return Transcriber(TranscribeConfig(model="base", threads=2))


@pytest.fixture(scope="session")
def tiny_transcriber():
    from heartmula.transcribe import TranscribeConfig, Transcriber

    return Transcriber(TranscribeConfig(model="tiny.en", threads=2))
