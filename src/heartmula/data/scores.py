"""Real scores from the music21 corpus: the catalogue of usable works and their notes.

Two collections: the Bach chorales (four real voices: soprano melody over alto/tenor/bass) and the Essen folk
songs (one melody; the accompaniment is harmonised in `arrangement`). Times are in quarter lengths here; the
arrangement chooses the tempo.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from heartmula.errors import HeartMuLaError
from heartmula.extras import require

# License notes per collection (recorded in every manifest row).
COLLECTION_LICENSES = {
    "bach-chorales": "public-domain composition; encoding from the music21 corpus (BSD-3-Clause)",
    "essen-folksongs": "Essen Folksong Collection via the music21 corpus; free for research, non-commercial use",
}


@dataclass(frozen=True)
class WorkRef:
    collection: str
    path: str  # music21 corpus path, e.g. "bach/bwv10.7" or "essenFolksong/altdeu10"
    number: int | None = None  # the tune number inside an ABC opus

    @property
    def work_id(self) -> str:
        return f"{self.path}#{self.number}" if self.number is not None else self.path


@dataclass(frozen=True)
class ScoreNote:
    onset: float  # quarter lengths from the start of the piece
    duration: float
    pitch: int


@dataclass
class Piece:
    work: WorkRef
    title: str
    melody: list[ScoreNote]
    parts: list[list[ScoreNote]]  # the other real voices (empty for a folk melody)
    phrase_ends: list[int]  # indices into melody of notes that end a phrase
    bar_length: float  # quarter lengths per bar
    first_downbeat: float  # quarter length of the first full bar (> 0 with a pickup)
    length: float  # quarter lengths of one pass through the piece
    tonic: int  # pitch class 0-11
    mode: str  # "major" or "minor"
    beat_unit: float = 1.0  # 1.5 for compound metres (6/8, 9/8, 12/8)


@functools.lru_cache(maxsize=1)
def catalogue() -> tuple[WorkRef, ...]:
    """Every work the corpus builder may draw from, in a fixed order (the seed indexes into it)."""
    require("data", "music21")
    from music21 import corpus

    works: list[WorkRef] = []
    for path in sorted(corpus.getComposer("bach"), key=lambda p: p.name):
        if path.suffix == ".mxl" and re.match(r"bwv\d+\.\d+$", path.stem):  # the chorales: bwvNNN.M
            works.append(WorkRef("bach-chorales", f"bach/{path.stem}"))
    for path in sorted(corpus.getComposer("essenFolksong"), key=lambda p: p.name):
        if path.stem.startswith("test") or path.suffix != ".abc":
            continue
        numbers = re.findall(r"^X:\s*(\d+)", path.read_text(encoding="latin-1"), re.M)
        works.extend(WorkRef("essen-folksongs", f"essenFolksong/{path.stem}", int(n)) for n in numbers)
    if not works:
        raise HeartMuLaError("the music21 corpus is empty: run `bash scripts/setup.sh` to install music21")
    return tuple(works)


def load_piece(work: WorkRef) -> Piece:
    """Parse one work into notes; raises HeartMuLaError when it is unusable as a song."""
    require("data", "music21")
    from music21 import corpus, expressions, meter

    try:
        score = corpus.parse(work.path, number=work.number) if work.number is not None else corpus.parse(work.path)
    except Exception as exc:  # music21 raises many unrelated types on odd files
        raise HeartMuLaError(f"cannot parse {work.work_id}: {exc}") from None
    parts = list(score.parts) if hasattr(score, "parts") and len(score.parts) else [score]
    melody_part = parts[0].stripTies()
    melody, ends = [], []
    for element in melody_part.flatten().notesAndRests:
        if element.isRest:
            if melody:
                ends.append(len(melody) - 1)
            continue
        pitch = max(p.midi for p in element.pitches)
        melody.append(ScoreNote(float(element.offset), float(element.quarterLength), pitch))
        if any(isinstance(e, expressions.Fermata) for e in element.expressions):
            ends.append(len(melody) - 1)
    melody = [n for n in melody if n.duration > 0]
    if len(melody) < 8:
        raise HeartMuLaError(f"{work.work_id} has too few melody notes")
    ends.append(len(melody) - 1)
    others = []
    for part in parts[1:]:
        notes = [ScoreNote(float(n.offset), float(n.quarterLength), p.midi)
                 for n in part.stripTies().flatten().notes for p in n.pitches if n.quarterLength > 0]
        if notes:
            others.append(notes)
    signatures = list(score.recurse().getElementsByClass(meter.TimeSignature))
    signature = signatures[0] if signatures else meter.TimeSignature("4/4")
    bar = float(signature.barDuration.quarterLength)
    compound = signature.numerator in (6, 9, 12) and signature.denominator == 8
    measures = list(melody_part.getElementsByClass("Measure"))
    first_bar = float(measures[0].duration.quarterLength) if measures else bar
    first_downbeat = first_bar if 0 < first_bar < bar else 0.0
    length = max(max(n.onset + n.duration for n in melody),
                 max((n.onset + n.duration for part in others for n in part), default=0.0))
    try:
        key = score.analyze("key")
        tonic, mode = key.tonic.pitchClass, ("minor" if key.mode == "minor" else "major")
    except Exception:
        tonic, mode = 0, "major"
    title = (score.metadata.title if score.metadata and score.metadata.title else work.work_id) or work.work_id
    return Piece(work, str(title), melody, others, sorted(set(split_long_phrases(melody, ends))), bar,
                 first_downbeat, length, tonic, mode, 1.5 if compound else 1.0)


def split_long_phrases(melody: list[ScoreNote], ends: list[int], max_notes: int = 14) -> list[int]:
    """Folk tunes mark few phrase ends: cut phrases longer than `max_notes` after their longest inner note."""
    result, start = [], 0
    for end in sorted(set(ends)):
        while end - start + 1 > max_notes:
            window = range(start + 4, min(end - 3, start + max_notes))
            if not window:
                break
            cut = max(window, key=lambda i: (melody[i].duration, -abs(i - start - max_notes // 2)))
            result.append(cut)
            start = cut + 1
        result.append(end)
        start = end + 1
    return result
