"""Prompt rows: a song's tokens [tags..., reference slot, lyrics..., audio prompt frames...] as the backbone reads
them, one row per tag prompt (and per lyrics-free twin or unconditional row)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from heartmula.errors import HeartMuLaError
from heartmula.text import TagPrompt, TextTokenizer, validate_weights


@dataclass
class PromptRow:
    song: int
    tokens: torch.Tensor  # [P, K+1]
    mask: torch.Tensor  # [P, K+1]
    reference_slot: int
    unconditional: bool
    weight: float = 0.0
    tags: str = ""
    without_lyrics: bool = False  # the lyrics-guidance twin of a conditional row: same tags, empty lyrics


def text_prompt(tokenizer: TextTokenizer, num_codebooks: int, tags: str, lyrics: str):
    """Rows [tags..., reference slot, lyrics...] -> (tokens [P, K+1], mask [P, K+1], reference slot index)."""
    tag_ids = tokenizer.encode_tags(tags)
    lyric_ids = tokenizer.encode_lyrics(lyrics)
    length = len(tag_ids) + 1 + len(lyric_ids)
    tokens = torch.zeros(length, num_codebooks + 1, dtype=torch.long)
    tokens[: len(tag_ids), -1] = torch.tensor(tag_ids)
    tokens[len(tag_ids) + 1 :, -1] = torch.tensor(lyric_ids)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, -1] = True
    return tokens, mask, len(tag_ids)


def frame_rows(codes: torch.Tensor, empty_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes [K, T] -> (tokens, mask) [T, K+1] laid out exactly like the frames fed back while generating."""
    k = codes.shape[0]
    tokens = torch.full((codes.shape[1], k + 1), empty_id, dtype=torch.long)
    tokens[:, :k] = codes.t()
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[:, -1] = False
    return tokens, mask


def checked_audio_codes(codes, num_codebooks: int, codebook_size: int) -> torch.Tensor:
    """An audio prompt as long CPU codes [K, T], or an error that says what is wrong with it."""
    codes = torch.as_tensor(codes)
    k = num_codebooks
    if codes.dim() != 2 or codes.shape[0] != k or codes.shape[1] == 0 or codes.is_floating_point():
        raise HeartMuLaError(f"an audio prompt must be integer codes of shape [{k}, frames], got "
                             f"{list(codes.shape)} {codes.dtype}")
    if int(codes.min()) < 0 or int(codes.max()) >= codebook_size:
        raise HeartMuLaError(f"audio prompt codes must lie in [0, {codebook_size}): encode the audio with a codec "
                             "whose codebook matches this model")
    return codes.long().cpu()


class PromptRowBuilder:
    """The rows of a batch of songs: one per tag prompt, a lyrics-free twin of each for sung songs when the lyrics
    are guided, and one unconditional row per song when guided."""

    def __init__(self, tokenizer: TextTokenizer, num_codebooks: int, codebook_size: int, empty_id: int, songs: list,
                 lyrics_guided: bool):
        self.tokenizer, self.num_codebooks, self.codebook_size = tokenizer, num_codebooks, codebook_size
        self.empty_id, self.songs, self.lyrics_guided = empty_id, songs, lyrics_guided

    def layout(self, prompts: list[list[TagPrompt]], guided: bool) -> list[PromptRow]:
        rows = []
        for s in range(len(self.songs)):
            weights = validate_weights([p.weight for p in prompts[s]])
            for prompt, weight in zip(prompts[s], weights):
                rows.append(self.row(s, prompt.tags, weight, False))
                if self.has_twins(s):
                    rows.append(self.row(s, prompt.tags, weight, False, without_lyrics=True))
        if guided:
            # The null row only needs the prompt's length: every text column embeds as the null text.
            for s in range(len(self.songs)):
                rows.append(self.row(s, prompts[s][0].tags, 0.0, True))
        return rows

    def has_twins(self, song: int) -> bool:
        return self.lyrics_guided and bool(self.songs[song].lyrics.strip())

    def row(self, song: int, tags: str, weight: float, unconditional: bool, without_lyrics: bool = False):
        """Prompt rows [tags, reference slot, lyrics] followed by the song's audio prompt, if any."""
        lyrics = "" if without_lyrics else self.songs[song].lyrics
        tokens, mask, slot = text_prompt(self.tokenizer, self.num_codebooks, tags, lyrics)
        audio = self.songs[song].audio_codes
        if audio is not None:
            codes = checked_audio_codes(audio, self.num_codebooks, self.codebook_size)
            audio_tokens, audio_mask = frame_rows(codes, self.empty_id)
            tokens, mask = torch.cat([tokens, audio_tokens]), torch.cat([mask, audio_mask])
        return PromptRow(song, tokens, mask, slot, unconditional, weight, tags, without_lyrics)
