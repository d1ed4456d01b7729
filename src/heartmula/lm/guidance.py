"""Classifier-free guidance and prompt mixing over the rows of a batch (formulas in `heartmula.lm.generation`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from heartmula.lm.prompts import PromptRow


@dataclass
class Guidance:
    """Which row belongs to which song, and with what weight; rebuilt whenever a prompt row is added or removed."""

    row_song: torch.Tensor  # [rows] the song of each row
    weights: torch.Tensor  # [songs, rows] float32: each song's prompt weights on its conditional rows
    weights_without_lyrics: torch.Tensor  # [songs, rows]: the same on the lyrics-free twins (else = weights)
    song_null_row: torch.Tensor | None  # [songs] each song's unconditional row (None: not guided)
    row_null_row: torch.Tensor | None  # [rows] the unconditional row of each row's song
    null_rows: torch.Tensor | None  # [rows] bool: the unconditional rows
    lyrics_guided: bool

    @classmethod
    def of_rows(cls, rows: list[PromptRow], songs: int, guided: bool, lyrics_guided: bool, device) -> Guidance:
        row_song = torch.tensor([r.song for r in rows], device=device)
        weights = torch.zeros(songs, len(rows), dtype=torch.float32, device=device)
        weights_without_lyrics = torch.zeros_like(weights)
        for i, row in enumerate(rows):
            if not row.unconditional:
                target = weights_without_lyrics if row.without_lyrics else weights
                target[row.song, i] = row.weight
        for song in range(songs):  # a song without twins (no lyrics): its lyrics-free branch is the conditional one
            if not weights_without_lyrics[song].any():
                weights_without_lyrics[song] = weights[song]
        song_null_row = row_null_row = null_rows = None
        if guided:
            null_of_song = {r.song: i for i, r in enumerate(rows) if r.unconditional}
            song_null_row = torch.tensor([null_of_song[s] for s in range(songs)], device=device)
            row_null_row = song_null_row[row_song]
            null_rows = torch.tensor([r.unconditional for r in rows], device=device)
        return cls(row_song, weights, weights_without_lyrics, song_null_row, row_null_row, null_rows, lyrics_guided)

    @property
    def guided(self) -> bool:
        return self.song_null_row is not None

    def matrix(self, cfg_scale: float, lyrics_scale: float | None) -> torch.Tensor:
        """[songs, rows]: each song's guided logits as one weighted sum of the rows' logits (the formulas with their
        sums expanded), so that guidance is one product per codebook."""
        weights = self.weights
        if self.guided:
            null = torch.zeros_like(weights)
            null[torch.arange(len(weights), device=weights.device), self.song_null_row] = 1.0
        if self.lyrics_guided:
            bare = self.weights_without_lyrics
            lyrics_delta = (weights - bare) * lyrics_scale
            return (bare if not self.guided else null + (bare - null) * cfg_scale) + lyrics_delta
        if not self.guided:
            return weights
        return null + (weights - null * weights.sum(dim=1, keepdim=True)) * cfg_scale

    def upstream(self, logits: torch.Tensor, cfg_scale: float, lyrics_scale: float | None) -> torch.Tensor:
        """Row logits [rows, V] float32 -> guided logits [songs, V] with upstream's operations (its rounding)."""
        if self.lyrics_guided:
            conditional, without_lyrics = self.weights @ logits, self.weights_without_lyrics @ logits
            lyrics_delta = (conditional - without_lyrics) * lyrics_scale
            if not self.guided:
                return without_lyrics + lyrics_delta
            null = logits.index_select(0, self.song_null_row)
            return null + (without_lyrics - null) * cfg_scale + lyrics_delta
        if not self.guided:
            return self.weights @ logits
        delta = self.weights @ (logits - logits.index_select(0, self.row_null_row))
        return logits.index_select(0, self.song_null_row) + delta * cfg_scale
