"""Live controls of a stream: weighted tag prompts and sampling settings, validated; scripted control files."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from heartmula.constants import FRAME_RATE
from heartmula.errors import HeartMuLaError
from heartmula.lm.generation import SamplingParams
from heartmula.text import TagPrompt, parse_tag_prompts, validate_weights

CONTROL_FIELDS = ("prompts", "temperature", "top_k", "cfg_scale")


def parse_prompts(value) -> tuple[tuple[str, float], ...]:
    """Prompts as given by a user -> ((tags, weight), ...).

    Accepts "jazz:0.7,electronic:0.3" (the --tags syntax), a {tags: weight} mapping, or a list of (tags, weight)
    pairs / TagPrompt objects. Tags are stripped; weights must be finite, >= 0 and not all 0; tags must be unique
    (a prompt is addressed by its tags when weights change).
    """
    if isinstance(value, str):
        items = [(p.tags, p.weight) for p in parse_tag_prompts(value)]
    elif isinstance(value, dict):
        items = list(value.items())
    else:
        try:
            items = [(p.tags, p.weight) if isinstance(p, TagPrompt) else tuple(p) for p in value]
        except TypeError:
            raise HeartMuLaError(f"prompts must be a list of (tags, weight) pairs, got {value!r}") from None
    prompts = []
    for item in items:
        if len(item) != 2 or not isinstance(item[0], str):
            raise HeartMuLaError(f"a prompt is a (tags, weight) pair with tags a string, got {item!r}")
        tags, weight = item
        try:
            weight = float(weight)
        except (TypeError, ValueError):
            raise HeartMuLaError(f"the weight of prompt {tags!r} is not a number: {weight!r}") from None
        prompts.append((tags.strip(), weight))
    validate_weights([w for _, w in prompts])
    seen = set()
    for tags, _ in prompts:
        if tags in seen:
            raise HeartMuLaError(f"prompt {tags!r} appears twice; give each set of tags once with its weight")
        seen.add(tags)
    if len(prompts) > 1 and "" in seen:
        raise HeartMuLaError("an empty tag prompt can only stand alone; give every mixed prompt some tags")
    return tuple(prompts)


@dataclass(frozen=True)
class StreamControls:
    """What a player can change while a stream plays. Immutable; `replace` returns a validated copy.

    prompts      ((tags, weight), ...): the style mix; weights are relative (normalised to sum 1)
    temperature  sampling temperature (0 = greedy)
    top_k        sample among the k most likely codes
    cfg_scale    classifier-free guidance (1 = off)
    """

    prompts: tuple[tuple[str, float], ...] = (("", 1.0),)
    temperature: float = 1.0
    top_k: int = 50
    cfg_scale: float = 1.5

    def __post_init__(self):
        object.__setattr__(self, "prompts", parse_prompts(self.prompts))
        for name in ("temperature", "cfg_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise HeartMuLaError(f"{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        self.sampling()  # range checks, with SamplingParams' messages

    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_k=self.top_k, cfg_scale=self.cfg_scale).validate()

    def replace(self, **changes) -> StreamControls:
        unknown = set(changes) - set(CONTROL_FIELDS)
        if unknown:
            raise HeartMuLaError(f"unknown control(s) {sorted(unknown)}; known: {', '.join(CONTROL_FIELDS)}")
        return replace(self, **changes)

    def normalised_weights(self) -> dict[str, float]:
        weights = validate_weights([w for _, w in self.prompts])
        return {tags: w for (tags, _), w in zip(self.prompts, weights)}

    def to_dict(self) -> dict:
        data = asdict(self)
        data["prompts"] = [list(p) for p in self.prompts]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> StreamControls:
        unknown = set(data) - set(CONTROL_FIELDS)
        if unknown:
            raise HeartMuLaError(f"unknown control(s) {sorted(unknown)}; known: {', '.join(CONTROL_FIELDS)}")
        return cls(**data)


# --- scripted control files -----------------------------------------------------------------------------------
@dataclass(order=True)
class ControlChange:
    """Controls to change when the stream reaches `frame` (applied before that frame is generated)."""

    frame: int
    changes: dict = field(compare=False)


_TIME = re.compile(r"^(?:(?P<frame>f\d+)|(?P<seconds>\d+(?:\.\d*)?|\.\d+)s?)$")


def _frame_of(at, where: str) -> int:
    if isinstance(at, (int, float)) and not isinstance(at, bool):
        seconds = float(at)
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise HeartMuLaError(f"{where}: the time must be >= 0 seconds, got {at}")
        return round(seconds * FRAME_RATE)
    match = _TIME.match(str(at).strip())
    if not match:
        raise HeartMuLaError(f"{where}: cannot read the time {at!r}; write seconds (12.5 or 12.5s) or a frame (f150)")
    if match["frame"]:
        return int(match["frame"][1:])
    return round(float(match["seconds"]) * FRAME_RATE)


def _typed_change(key: str, value, where: str):
    if key not in CONTROL_FIELDS:
        raise HeartMuLaError(f"{where}: unknown control {key!r}; known: {', '.join(CONTROL_FIELDS)}")
    if key == "prompts":
        return parse_prompts(value)
    try:
        return int(value) if key == "top_k" else float(value)
    except (TypeError, ValueError):
        raise HeartMuLaError(f"{where}: {key} must be a number, got {value!r}") from None


def read_control_script(path: str | os.PathLike) -> list[ControlChange]:
    """Read a scripted control file: time -> control changes, sorted by time.

    JSON (a `.json` file): a list of objects, each with `at` (seconds, "12.5s" or "f150" for a frame) or `frame`,
    plus controls: {"at": 8, "prompts": {"jazz,piano": 0.2, "electronic": 0.8}, "temperature": 0.9}.

    Plain text (any other name): one change per line, `TIME key=value ...`, shell-style quoting, # comments:

        0      prompts="jazz,piano:1.0"
        8s     prompts="jazz,piano:0.2|electronic:0.8"  cfg_scale=2.0
        f200   temperature=0.8 top_k=30
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise HeartMuLaError(f"cannot read the control file {path}: {exc.strerror}") from None
    changes = []
    if path.suffix.lower() == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise HeartMuLaError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(items, list):
            raise HeartMuLaError(f"{path}: expected a JSON list of changes")
        for n, item in enumerate(items, 1):
            where = f"{path} item {n}"
            if not isinstance(item, dict) or ("at" in item) == ("frame" in item):
                raise HeartMuLaError(f"{where}: each change is an object with either 'at' or 'frame'")
            at = item["at"] if "at" in item else f"f{int(item['frame'])}"
            controls = {k: _typed_change(k, v, where) for k, v in item.items() if k not in ("at", "frame")}
            changes.append(ControlChange(_frame_of(at, where), controls))
    else:
        for n, line in enumerate(text.splitlines(), 1):
            where = f"{path} line {n}"
            try:
                words = shlex.split(line, comments=True)
            except ValueError as exc:
                raise HeartMuLaError(f"{where}: {exc}") from None
            if not words:
                continue
            controls = {}
            for word in words[1:]:
                key, sep, value = word.partition("=")
                if not sep:
                    raise HeartMuLaError(f"{where}: expected key=value, got {word!r}")
                controls[key] = _typed_change(key, value, where)
            changes.append(ControlChange(_frame_of(words[0], where), controls))
    for change in changes:
        if not change.changes:
            raise HeartMuLaError(f"{path}: the change at frame {change.frame} changes nothing")
    return sorted(changes)
