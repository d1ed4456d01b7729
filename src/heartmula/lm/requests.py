"""What a caller asks of generation (`SongRequest`) and what each frame gives back (`FrameStep`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from heartmula.text import TagPrompt, parse_tag_prompts, validate_weights


@dataclass
class SongRequest:
    """One song: lyrics (empty = instrumental), tags (a string or weighted prompts), optional reference."""

    lyrics: str = ""
    tags: str | Sequence[TagPrompt | tuple[str, float]] = ""
    reference_embedding: torch.Tensor | None = None  # [muq_dim], e.g. a CLAP audio embedding; zeros upstream
    seed: int | None = None
    audio_codes: torch.Tensor | None = None  # [K, T] codes of audio to continue from (an audio prompt), or None

    def tag_prompts(self) -> list[TagPrompt]:
        if isinstance(self.tags, str):
            return parse_tag_prompts(self.tags)
        prompts = [p if isinstance(p, TagPrompt) else TagPrompt(*p) for p in self.tags]
        validate_weights([p.weight for p in prompts])
        return prompts


@dataclass
class FrameStep:
    """One generated frame for every song of the batch."""

    index: int
    codes: torch.Tensor  # [songs, K] long
    valid: torch.Tensor  # [songs] bool: False once a song has ended (its codes are then meaningless)
