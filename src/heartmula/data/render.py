"""General MIDI rendering: the arrangement becomes a standard MIDI file, FluidSynth plays it with a soundfont."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from heartmula.data.arrangement import Arrangement
from heartmula.errors import HeartMuLaError
from heartmula.extras import require

TICKS_PER_QUARTER = 480


@dataclass(frozen=True)
class Soundfont:
    name: str
    path: str
    license: str


SOUNDFONTS = (
    Soundfont("FluidR3_GM", "/usr/share/sounds/sf2/FluidR3_GM.sf2", "MIT (Debian fluid-soundfont-gm)"),
    Soundfont("TimGM6mb", "/usr/share/sounds/sf2/TimGM6mb.sf2", "GPL-2.0 (Debian timgm6mb-soundfont)"),
)


def available_soundfonts() -> list[Soundfont]:
    found = [s for s in SOUNDFONTS if Path(s.path).is_file()]
    if not found:
        raise HeartMuLaError("no General MIDI soundfont found in /usr/share/sounds/sf2: run `bash scripts/setup.sh` "
                             "(it installs fluid-soundfont-gm and timgm6mb-soundfont)")
    return found


def write_midi(arrangement: Arrangement, path: Path) -> None:
    require("data", "mido")
    import mido

    spq = 60.0 / arrangement.tempo
    events: list[tuple[int, int, mido.Message]] = []  # (tick, order, message): note-offs sort before note-ons

    def tick(seconds: float) -> int:
        return int(round(seconds / spq * TICKS_PER_QUARTER))

    for channel, program in arrangement.programs.items():
        events.append((0, 0, mido.Message("program_change", channel=channel, program=program)))
        # Volume and a little stereo spread per instrument, as a mix engineer would place them.
        events.append((0, 0, mido.Message("control_change", channel=channel, control=7, value=100)))
        events.append((0, 0, mido.Message("control_change", channel=channel, control=10,
                                          value=(64, 40, 64, 88)[channel % 4])))
    for note in arrangement.notes:
        events.append((tick(note.start), 2, mido.Message("note_on", channel=note.channel, note=note.pitch,
                                                         velocity=note.velocity)))
        events.append((tick(note.end), 1, mido.Message("note_off", channel=note.channel, note=note.pitch)))
    events.sort(key=lambda e: (e[0], e[1]))
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=int(round(spq * 1e6)), time=0))
    last = 0
    for t, _, message in events:
        track.append(message.copy(time=t - last))
        last = t
    midi = mido.MidiFile(ticks_per_beat=TICKS_PER_QUARTER)
    midi.tracks.append(track)
    midi.save(str(path))


def render_arrangement(arrangement: Arrangement, soundfont: Soundfont, sample_rate: int) -> np.ndarray:
    """Stereo float32 [2, samples] of exactly `arrangement.duration` seconds."""
    if shutil.which("fluidsynth") is None:
        raise HeartMuLaError("fluidsynth is not installed: run `bash scripts/setup.sh`")
    with tempfile.TemporaryDirectory(prefix="heartmula-render-") as tmp:
        midi_path, wav_path = Path(tmp) / "song.mid", Path(tmp) / "song.wav"
        write_midi(arrangement, midi_path)
        result = subprocess.run(
            ["fluidsynth", "-ni", "-q", "-r", str(sample_rate), "-g", "0.5", "-o", "synth.cpu-cores=1",
             "-F", str(wav_path), "-T", "wav", soundfont.path, str(midi_path)],
            capture_output=True, text=True,
        )
        if result.returncode != 0 or not wav_path.is_file():
            raise HeartMuLaError(f"fluidsynth failed: {result.stderr.strip()[-300:]}")
        audio, rate = sf.read(str(wav_path), dtype="float32", always_2d=True)
    audio = audio.T
    n = int(round(arrangement.duration * sample_rate))
    if audio.shape[1] < n:
        audio = np.pad(audio, ((0, 0), (0, n - audio.shape[1])))
    return np.ascontiguousarray(audio[:, :n])
