"""Japanese singing from a score with pysinsy (Sinsy's HTS voice, CC-BY-3.0).

The corpus sings Japanese with espeak-ng (docs/data-card.md says why), so Sinsy is a real singing voice that no
model here is trained on: the transcription tests and `bench/transcriber_heldout.py` use it as a held-out singer.
pysinsy builds from source (scripts/setup.sh installs it); callers import this module only when it is installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np

_STEPS = ["C", "C", "D", "D", "E", "F", "F", "G", "G", "A", "A", "B"]
_ALTERS = [0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 1, 0]
DIVISIONS = 8  # score time steps per quarter note: durations are rounded to 32nd notes


@dataclass(frozen=True)
class SungNote:
    """One mora (kana) on a MIDI pitch for `quarters` quarter notes; text None is a rest."""

    text: str | None
    pitch: int | None
    quarters: float


def _note_xml(note: SungNote) -> str:
    duration = f"<duration>{max(1, round(note.quarters * DIVISIONS))}</duration>"
    if note.text is None:
        return f"<note><rest/>{duration}</note>"
    step, alter, octave = _STEPS[note.pitch % 12], _ALTERS[note.pitch % 12], note.pitch // 12 - 1
    alter_xml = f"<alter>{alter}</alter>" if alter else ""
    return (f"<note><pitch><step>{step}</step>{alter_xml}<octave>{octave}</octave></pitch>{duration}"
            f"<lyric><text>{note.text}</text></lyric></note>")


def music_xml(notes: list[SungNote], tempo: float = 100.0) -> str:
    """A one-part MusicXML score in 4/4: a bar of rest (Sinsy starts on a rest), the notes, a closing rest."""
    events = [SungNote(None, None, 4.0), *notes, SungNote(None, None, 4.0)]
    measures: list[list[str]] = []
    current: list[str] = []
    filled = 0.0
    for note in events:
        current.append(_note_xml(note))
        filled += note.quarters
        if filled >= 4:
            measures.append(current)
            current, filled = [], 0.0
    if current:
        measures.append(current)
    attributes = (f"<attributes><divisions>{DIVISIONS}</divisions><time><beats>4</beats><beat-type>4</beat-type>"
                  f'</time></attributes><direction><sound tempo="{tempo:g}"/></direction>')
    body = "".join(f'<measure number="{i + 1}">{attributes if i == 0 else ""}{"".join(m)}</measure>'
                   for i, m in enumerate(measures))
    return ('<?xml version="1.0" encoding="UTF-8"?><score-partwise version="3.1"><part-list><score-part id="P1">'
            f'<part-name>V</part-name></score-part></part-list><part id="P1">{body}</part></score-partwise>')


def sing(notes: list[SungNote], tempo: float = 100.0) -> tuple[np.ndarray, int]:
    """Mono float32 audio (peak 0.8) and its sample rate; the first 4 quarter notes are the opening rest."""
    import pysinsy

    with TemporaryDirectory() as folder:
        score = Path(folder) / "score.xml"
        score.write_text(music_xml(notes, tempo), encoding="utf-8")
        wave, rate = pysinsy.synthesize(str(score))
    wave = np.asarray(wave, dtype=np.float64)
    # Sinsy can burst far beyond full scale on long notes (docs/data-card.md): level by a high percentile, then clip
    level = max(float(np.percentile(np.abs(wave), 99.9)), 1e-6)
    return np.clip(wave / level * 0.8, -1.0, 1.0).astype(np.float32), int(rate)
