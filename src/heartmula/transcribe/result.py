"""Transcripts and their file formats: plain lyrics (txt), LRC, SRT and JSON, plus readers for LRC and SRT.

Times are seconds from the start of the file. Lines in txt and LRC are grouped into sections: a blank line marks
a long pause (a new verse or chorus, most likely).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

FORMATS = ("txt", "lrc", "srt", "json")


@dataclass
class Word:
    start: float
    end: float
    text: str
    probability: float = 1.0


@dataclass
class Segment:
    start: float
    end: float
    text: str
    words: list[Word] = field(default_factory=list)
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    compression_ratio: float = 1.0
    section: int = 0  # index of the section (block of lines between long pauses) the line belongs to


@dataclass
class Transcript:
    audio: str
    language: str
    language_probability: float
    duration: float
    segments: list[Segment]
    model: str = ""
    backend: str = ""
    vocal_isolation: str = "off"

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments).strip()

    def words(self) -> list[Word]:
        return [w for s in self.segments for w in s.words]


def _lrc_time(seconds: float) -> str:
    centis = int(round(max(seconds, 0.0) * 100))
    minutes, centis = divmod(centis, 6000)
    return f"{minutes:02d}:{centis // 100:02d}.{centis % 100:02d}"


def _srt_time(seconds: float) -> str:
    millis = int(round(max(seconds, 0.0) * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    return f"{hours:02d}:{minutes:02d}:{millis // 1000:02d},{millis % 1000:03d}"


def to_txt(transcript: Transcript) -> str:
    lines: list[str] = []
    for i, segment in enumerate(transcript.segments):
        if i and segment.section != transcript.segments[i - 1].section:
            lines.append("")
        lines.append(segment.text.strip())
    return "\n".join(lines) + "\n" if lines else ""


def to_lrc(transcript: Transcript) -> str:
    lines = [f"[la:{transcript.language}]", f"[length:{_lrc_time(transcript.duration)[:5]}]", "[re:heartmula]"]
    for i, segment in enumerate(transcript.segments):
        if i and segment.section != transcript.segments[i - 1].section:
            lines.append("")
        lines.append(f"[{_lrc_time(segment.start)}]{segment.text.strip()}")
    if transcript.segments:  # an empty line at the end time clears the last lyric line in players
        lines.append(f"[{_lrc_time(transcript.segments[-1].end)}]")
    return "\n".join(lines) + "\n"


def to_srt(transcript: Transcript) -> str:
    blocks = []
    for index, segment in enumerate(transcript.segments, start=1):
        blocks.append(f"{index}\n{_srt_time(segment.start)} --> {_srt_time(segment.end)}\n{segment.text.strip()}\n")
    return "\n".join(blocks)


def to_json(transcript: Transcript) -> str:
    data = asdict(transcript)
    data["text"] = transcript.text
    return json.dumps(data, ensure_ascii=False, indent=1) + "\n"


def render(transcript: Transcript, fmt: str) -> str:
    return {"txt": to_txt, "lrc": to_lrc, "srt": to_srt, "json": to_json}[fmt](transcript)


_LRC_LINE = re.compile(r"^\[(\d+):(\d{2}(?:\.\d+)?)\](.*)$")
_SRT_TIME = re.compile(r"(\d+):(\d{2}):(\d{2}),(\d{3})\s*-->\s*(\d+):(\d{2}):(\d{2}),(\d{3})")


def parse_lrc(text: str) -> list[tuple[float, str]]:
    """(time, line) for every timed line; metadata tags like [la:en] are skipped."""
    out = []
    for line in text.splitlines():
        match = _LRC_LINE.match(line.strip())
        if match:
            out.append((int(match[1]) * 60 + float(match[2]), match[3].strip()))
    return out


def parse_srt(text: str) -> list[tuple[float, float, str]]:
    """(start, end, text) per cue."""
    cues = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.strip().splitlines()
        if len(lines) < 2:
            continue
        match = _SRT_TIME.search(lines[1])
        if not match or not lines[0].strip().isdigit():
            raise ValueError(f"not an SRT cue: {block!r}")
        h1, m1, s1, ms1, h2, m2, s2, ms2 = (int(x) for x in match.groups())
        cues.append((h1 * 3600 + m1 * 60 + s1 + ms1 / 1000, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000,
                     "\n".join(lines[2:]).strip()))
    return cues


def lyrics_text_of(text: str, suffix: str) -> str:
    """The words of a transcript file of any of our formats (used by the scoring recipe to read hypotheses)."""
    suffix = suffix.lower().lstrip(".")
    if suffix == "lrc":
        return "\n".join(line for _, line in parse_lrc(text) if line)
    if suffix == "srt":
        return "\n".join(cue for _, _, cue in parse_srt(text))
    if suffix == "json":
        data = json.loads(text)
        return "\n".join(s["text"].strip() for s in data.get("segments", []))
    return text
