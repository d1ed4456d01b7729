"""Arranging a score as a song: style (General MIDI instruments, drums), tempo, key, dynamics, song form.

A song is the piece played several times (passes) as verse / chorus sections. Chorales keep their real alto,
tenor and bass voices; a folk melody gets chords chosen bar by bar from the diatonic triads that fit its notes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from heartmula.data.scores import Piece, ScoreNote

DRUM_CHANNEL = 9
KICK, SIDE_STICK, SNARE, CLAP, CLOSED_HAT, OPEN_HAT, CRASH, TAMBOURINE = 36, 37, 38, 39, 42, 46, 49, 54


@dataclass(frozen=True)
class Style:
    name: str
    tempo_range: tuple[int, int]
    lead_program: int  # General MIDI program of the melody when nobody sings it
    harmony_program: int
    bass_program: int
    pad_program: int | None  # sustained chords under a folk melody
    drums: str | None  # a pattern name, or None
    accompaniment: str  # "block", "arpeggio" or "sustain" (folk melodies)


STYLES = (
    Style("hymn", (60, 84), 19, 19, 19, None, None, "sustain"),
    Style("classical", (60, 100), 40, 41, 42, 48, None, "sustain"),
    Style("ballad", (60, 84), 0, 0, 0, 48, None, "arpeggio"),
    Style("folk", (84, 126), 73, 25, 32, None, "folk", "arpeggio"),
    Style("pop", (92, 128), 80, 4, 33, 48, "pop", "block"),
    Style("rock", (108, 150), 30, 29, 34, None, "rock", "block"),
    Style("electronic", (112, 132), 81, 89, 38, None, "electronic", "block"),
)
STYLE_BY_NAME = {s.name: s for s in STYLES}
# Tag words of the General MIDI programs the styles use (upstream tags name instruments plainly).
PROGRAM_TAGS = {0: "piano", 4: "electric piano", 19: "organ", 25: "acoustic guitar", 29: "electric guitar",
                30: "electric guitar", 32: "bass", 33: "bass", 34: "bass", 38: "synth bass", 40: "violin",
                41: "viola", 42: "cello", 48: "strings", 73: "flute", 80: "synthesizer", 81: "synthesizer",
                89: "synthesizer"}
# Chorale harmony suits slow, sustained styles best; folk tunes take any.
CHORALE_STYLES = ("hymn", "classical", "ballad", "pop", "folk")

# Vocal range targets: the median melody note after transposition (MIDI).
# Female singing is placed lower than a soprano line: Whisper (our intelligibility judge) hears high voices worse.
MELODY_MEDIAN = {"female": 64, "male": 55, None: 67}

MAJOR_TRIADS = ((0, 4, 7), (2, 5, 9), (5, 9, 0), (7, 11, 2), (9, 0, 4))  # I ii IV V vi
MINOR_TRIADS = ((0, 3, 7), (5, 8, 0), (7, 11, 2), (3, 7, 10), (8, 0, 3))  # i iv V III VI
# Slight preference for tonic, subdominant, dominant: they sound most like real accompaniment.
TRIAD_PRIOR = (0.3, 0.0, 0.2, 0.25, 0.05)


@dataclass(frozen=True)
class MidiNote:
    start: float  # seconds
    end: float
    pitch: int
    velocity: int
    channel: int


@dataclass
class Arrangement:
    style: Style
    tempo: float  # beats (quarter notes) per minute
    transpose: int
    vocal_octave_shift: int  # -12 for a male voice singing the soprano line
    sections: list[str]  # one per pass: "verse", "chorus", ...
    programs: dict[int, int]  # channel -> General MIDI program
    notes: list[MidiNote]
    melody: list[list[tuple[ScoreNote, float, float]]]  # per pass: (note, start s, end s) with transposition
    duration: float  # seconds, with the ring-out tail

    def instrument_tags(self) -> list[str]:
        """Tags of the instruments that actually play, in channel order (no duplicates)."""
        playing = sorted({n.channel for n in self.notes})
        tags = [PROGRAM_TAGS[self.programs[c]] for c in playing if c != DRUM_CHANNEL and c in self.programs]
        if DRUM_CHANNEL in playing:
            tags.append("drums")
        return list(dict.fromkeys(tags))


def seconds_per_quarter(tempo: float) -> float:
    return 60.0 / tempo


def choose_transposition(piece: Piece, gender: str | None, rng: np.random.Generator) -> int:
    median = float(np.median([n.pitch for n in piece.melody]))
    return int(np.clip(round(MELODY_MEDIAN[gender] - median + rng.integers(-2, 3)), -9, 9))


def arrange(piece: Piece, style: Style, gender: str | None, vocal: bool, rng: np.random.Generator,
            target_seconds: float, pass_range: tuple[int, int] = (2, 4)) -> Arrangement:
    tempo = float(rng.integers(style.tempo_range[0], style.tempo_range[1] + 1))
    spq = seconds_per_quarter(tempo)
    transpose = choose_transposition(piece, gender, rng)
    pass_seconds = piece.length * spq
    # A long piece (some chorales run for minutes) is played once rather than making a ten-minute song.
    fewest = 1 if pass_seconds > 0.75 * target_seconds else pass_range[0]
    passes = int(np.clip(round(target_seconds / pass_seconds), fewest, min(pass_range[1], 4)))
    sections = ["verse", "chorus", "verse", "chorus"][:passes]
    lead_channel, harmony_channel, bass_channel, pad_channel = 0, 1, 2, 3
    programs = {lead_channel: style.lead_program, harmony_channel: style.harmony_program,
                bass_channel: style.bass_program}
    if style.pad_program is not None:
        programs[pad_channel] = style.pad_program
    chords = None if piece.parts else harmonize(piece)
    notes: list[MidiNote] = []
    melody_passes = []
    for index, section in enumerate(sections):
        base = index * piece.length
        # Dynamics: choruses louder than verses, with a little human variation per note.
        loudness = (92 if section == "chorus" else 74) + int(rng.integers(-6, 7))

        def add(note: ScoreNote, channel: int, velocity: int, shift: int = 0, base=base) -> None:
            start = (base + note.onset) * spq
            end = start + max(note.duration * spq - 0.02, 0.05)
            v = int(np.clip(velocity + rng.integers(-5, 6), 20, 127))
            notes.append(MidiNote(start, end, int(np.clip(note.pitch + transpose + shift, 21, 108)), v, channel))

        pass_melody = []
        for note in piece.melody:
            start = (base + note.onset) * spq
            pass_melody.append((note, start, start + note.duration * spq))
            # With a singer, the lead instrument only doubles the melody softly (as a guide), else it leads.
            if not vocal:
                add(note, lead_channel, loudness + 8)
        melody_passes.append(pass_melody)
        if piece.parts:  # a chorale: alto and tenor on the harmony instrument, bass on the bass instrument
            for voice_index, part in enumerate(piece.parts):
                is_bass = voice_index == len(piece.parts) - 1
                for note in part:
                    add(note, bass_channel if is_bass else harmony_channel, loudness - (4 if is_bass else 8),
                        -12 if is_bass and style.bass_program in (32, 33, 34, 38) else 0)
        else:
            for note in accompaniment_notes(chords, piece, style.accompaniment):
                channel = bass_channel if note.pitch < 48 else harmony_channel
                add(note, channel, loudness - 10)
            if style.pad_program is not None:
                for note in accompaniment_notes(chords, piece, "sustain"):
                    if note.pitch >= 48:
                        add(note, pad_channel, loudness - 30)
        if style.drums:
            for note in drum_pattern(style.drums, piece, index == 0 or section == "chorus"):
                start = (base + note.onset) * spq
                velocity = int(np.clip(note.duration + loudness - 80 + rng.integers(-6, 7), 20, 127))
                notes.append(MidiNote(start, start + 0.1, note.pitch, velocity, DRUM_CHANNEL))
    duration = len(sections) * pass_seconds + 2.0
    return Arrangement(style, tempo, transpose, -12 if gender == "male" else 0, sections, programs, notes,
                       melody_passes, duration)


def harmonize(piece: Piece) -> list[tuple[float, float, tuple[int, ...]]]:
    """(start, end, chord pitch classes) windows of half a bar (a bar in 3/4 and 3/8) covering the piece."""
    triads = MAJOR_TRIADS if piece.mode == "major" else MINOR_TRIADS
    window = piece.bar_length / 2 if piece.bar_length >= 4 or piece.beat_unit == 1.5 else piece.bar_length
    starts = [0.0] if piece.first_downbeat > 0 else []
    starts += list(np.arange(piece.first_downbeat, piece.length, window))
    chords = []
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else piece.length
        weights = np.zeros(12)
        for n in piece.melody:
            overlap = min(end, n.onset + n.duration) - max(start, n.onset)
            if overlap > 0:
                # Notes on the window's first beat weigh more: they are the ones a listener hears as harmony.
                weights[(n.pitch - piece.tonic) % 12] += overlap * (2.0 if abs(n.onset - start) < 1e-6 else 1.0)
        scores = [sum(weights[p] for p in triad) - 0.4 * (weights.sum() - sum(weights[p] for p in triad)) + prior
                  for triad, prior in zip(triads, TRIAD_PRIOR)]
        best = triads[0] if i == len(starts) - 1 else triads[int(np.argmax(scores))]  # end on the tonic
        chords.append((float(start), float(end), tuple((piece.tonic + p) % 12 for p in best)))
    return chords


def accompaniment_notes(chords, piece: Piece, pattern: str) -> list[ScoreNote]:
    """Bass roots (MIDI 36-47) and chord tones (MIDI 52-64, under the melody) for each chord window."""
    out: list[ScoreNote] = []
    beat = piece.beat_unit
    for start, end, pcs in chords:
        root = 36 + pcs[0]
        tones = sorted(52 + (pc - 4) % 12 for pc in pcs)
        out.append(ScoreNote(start, end - start, root))
        if pattern == "sustain":
            out.extend(ScoreNote(start, end - start, t) for t in tones)
        elif pattern == "block":
            for t in np.arange(start, end - 1e-6, beat):
                out.extend(ScoreNote(float(t), min(beat, end - t) * 0.9, p) for p in tones)
        else:  # arpeggio in eighths (thirds of a compound beat)
            step = beat / 3 if beat == 1.5 else 0.5
            for k, t in enumerate(np.arange(start, end - 1e-6, step)):
                out.append(ScoreNote(float(t), step, (tones + [tones[0] + 12])[k % 4]))
    return out


def drum_pattern(kind: str, piece: Piece, crash_first: bool) -> list[ScoreNote]:
    """Drum hits of one pass; `duration` carries the accent (velocity offset around 80)."""
    hits: list[ScoreNote] = []
    beat = piece.beat_unit
    beats_per_bar = max(int(round(piece.bar_length / beat)), 1)
    bar_starts = np.arange(piece.first_downbeat, piece.length - 1e-6, piece.bar_length)
    for bar_index, bar in enumerate(bar_starts):
        for b in range(beats_per_bar):
            t = float(bar + b * beat)
            if t >= piece.length:
                break
            strong = b == 0 or (beats_per_bar == 4 and b == 2)
            backbeat = (beats_per_bar in (2, 4) and b % 2 == 1) or (beats_per_bar == 3 and b > 0)
            if kind == "electronic":
                hits.append(ScoreNote(t, 95, KICK))
                if backbeat:
                    hits.append(ScoreNote(t, 85, CLAP))
                hits.append(ScoreNote(t + beat / 2, 70, OPEN_HAT))
                continue
            if strong or (kind == "rock" and b == beats_per_bar - 1 and beats_per_bar == 4):
                hits.append(ScoreNote(t, 95 if kind != "folk" else 80, KICK))
            if backbeat:
                hits.append(ScoreNote(t, 90 if kind == "rock" else 80, SIDE_STICK if kind == "folk" else SNARE))
            hat = TAMBOURINE if kind == "folk" else CLOSED_HAT
            hits.append(ScoreNote(t, 70, hat))
            if kind != "folk":
                hits.append(ScoreNote(t + beat / 2, 55, hat))
        if bar_index == 0 and crash_first:
            hits.append(ScoreNote(float(bar), 90, CRASH))
    return hits
