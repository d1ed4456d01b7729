"""Lyric alignment loss: sung frames attend to the lyric line being sung (training only).

A small LM learns *whether* to sing from (lyrics, audio) pairs long before it learns *which* words go where. The
corpus knows when each lyric line is sung, so training can tell the model directly: for the rows that predict a
sung frame, a few attention heads of one backbone layer are pushed to put their mass on the tokens of the line
sung in that frame,

    loss = mean over (sung rows r, chosen heads h) of  -log sum_{n in line(r)} softmax_n(q_rh . k_nh / sqrt(d))

(guided attention with the true alignment as its prior, in the spirit of DCTTS' diagonal guide). It reads the
attention inputs of the model's own forward pass, so the architecture, checkpoints and generation are unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from heartmula.nn.rope import apply_rope
from heartmula.text import TextTokenizer, normalize_lyrics

ALIGN_UNITS = ("line", "word")  # what a sung frame attends to: its line's tokens or its word's


@dataclass(frozen=True)
class LineSpan:
    """A sung lyric line: its tokens [token_start, token_end) within the lyric ids and its time [start, end) in s."""

    token_start: int
    token_end: int
    start: float
    end: float


def _line_characters(text: str, line: str, cursor: int) -> tuple[int, int] | None:
    """Where `line` sits in `text`: the first match at or after `cursor`, else the first anywhere (a repeated
    chorus written once in the lyrics); None when it is not there."""
    at = text.find(line, cursor)
    if at < 0:
        at = text.find(line)
    return None if at < 0 else (at, at + len(line))


def _token_offsets(tokenizer: TextTokenizer, text: str) -> tuple[list[tuple[int, int]], int]:
    """The character range of every token of `text` ((-1, -1) for special tokens) and the index shift to
    `tokenizer.encode_lyrics` (which puts a BOS in front)."""
    encoding = tokenizer.tokenizer.encode(text)
    shift = 0 if encoding.ids[:1] == [tokenizer.bos_id] else 1
    offsets = [(a, b) if not special else (-1, -1)
               for (a, b), special in zip(encoding.offsets, encoding.special_tokens_mask)]
    return offsets, shift


def _tokens_over(offsets: list[tuple[int, int]], first: int, last: int) -> list[int]:
    return [i for i, (a, b) in enumerate(offsets) if a < last and b > first]


def _in_word(character: str) -> bool:
    """Whether a character joins its neighbours into one word: letters, digits and apostrophes of scripts written
    with spaces (Hangul included); each kana and Han character stands alone."""
    if character == "'":
        return True
    if not character.isalnum():
        return False
    return not ("\u3040" <= character <= "\u30ff" or "\u3400" <= character <= "\u9fff"
                or "\uf900" <= character <= "\ufaff")


def _word_around(text: str, first: int, last: int, line: tuple[int, int]) -> tuple[int, int]:
    """The characters [first, last) widened to the whole word they are part of, within the line."""
    while first > line[0] and _in_word(text[first - 1]) and _in_word(text[first]):
        first -= 1
    while last < line[1] and _in_word(text[last]) and _in_word(text[last - 1]):
        last += 1
    return first, last


def _syllable_spans(text: str, offsets: list[tuple[int, int]], shift: int, entry: dict,
                    line: tuple[int, int]) -> list[LineSpan]:
    """The spans of a line's timed syllables, each widened to the tokens of its word (the syllables of one word
    share a span, merged over their times; a Han or kana character is a word of its own). Empty when a syllable is
    not found in the line's text (the caller then keeps the line as one span)."""
    spans, cursor = [], line[0]
    for syllable in entry.get("syllables") or []:
        piece = normalize_lyrics(syllable.get("text", "")).strip()
        at = text.find(piece, cursor, line[1]) if piece else -1
        if at < 0:
            return []
        cursor = at + len(piece)
        tokens = _tokens_over(offsets, *_word_around(text, at, cursor, line))
        if not tokens:
            return []
        span = LineSpan(tokens[0] + shift, tokens[-1] + 1 + shift, float(syllable["start"]), float(syllable["end"]))
        if spans and (spans[-1].token_start, spans[-1].token_end) == (span.token_start, span.token_end):
            span = LineSpan(span.token_start, span.token_end, spans[-1].start, span.end)
            spans.pop()
        spans.append(span)
    return spans


def line_token_spans(tokenizer: TextTokenizer, lyrics: str, timing: list[dict],
                     unit: str = "line") -> list[LineSpan]:
    """The token span of every timed line of `lyrics`, indexed like `tokenizer.encode_lyrics(lyrics)` (BOS
    included). `timing`: the corpus manifest's line entries ({text, start, end, syllables}). Lines whose text is
    not in the lyrics are left out. `unit="word"`: a span per sung word instead (its syllables' times), where the
    line's syllables can be found in its text."""
    text = normalize_lyrics(lyrics)
    if not text.strip():
        return []
    offsets, shift = _token_offsets(tokenizer, text)
    spans, cursor = [], 0
    for entry in timing:
        line = normalize_lyrics(entry.get("text", "")).strip()
        where = _line_characters(text, line, cursor) if line else None
        if where is None:
            continue
        words = _syllable_spans(text, offsets, shift, entry, where) if unit == "word" else []
        tokens = _tokens_over(offsets, *where)
        if words:
            spans.extend(words)
        elif tokens:
            spans.append(LineSpan(tokens[0] + shift, tokens[-1] + 1 + shift, float(entry["start"]),
                                  float(entry["end"])))
        cursor = where[1]
    return spans


def frame_line_targets(spans: list[LineSpan], first_frame: int, frames: int, frame_rate: float,
                       lyric_row: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For frames first_frame .. first_frame + frames - 1 of a song: (frame index within the crop, first and end
    prompt row of the line sung at the frame's centre), only for frames inside a sung line. `lyric_row`: the
    prompt row of the lyric ids' first token (BOS)."""
    index, first, end = [], [], []
    for j in range(frames):
        time = (first_frame + j + 0.5) / frame_rate
        for span in spans:
            if span.start <= time < span.end:
                index.append(j)
                first.append(lyric_row + span.token_start)
                end.append(lyric_row + span.token_end)
                break
    as_long = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    return as_long(index), as_long(first), as_long(end)


@dataclass(frozen=True)
class AlignmentTargets:
    """Per batch: rows [N] (batch index, row) that predict a sung frame, and the prompt rows [first, end) of the
    line sung in that frame."""

    batch: torch.Tensor
    rows: torch.Tensor
    first: torch.Tensor
    end: torch.Tensor


class AttentionRecorder:
    """Keeps the inputs (normed hidden states, RoPE rows) of one attention module during a forward pass."""

    def __init__(self, attention: torch.nn.Module):
        self.attention = attention
        self.inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self._handle = attention.register_forward_pre_hook(self._keep)

    def _keep(self, module, args):
        self.inputs = (args[0], args[1])

    def remove(self) -> None:
        self._handle.remove()


def line_attention_loss(attention: torch.nn.Module, inputs: tuple[torch.Tensor, torch.Tensor],
                        targets: AlignmentTargets, heads: int) -> torch.Tensor:
    """-log of the attention mass the first `heads` query heads of `attention` put on each target row's line,
    averaged; keys are causal (a row sees rows 0..itself)."""
    x, rope = inputs
    head_dim = attention.head_dim
    groups = attention.num_heads // attention.num_kv_heads
    b, s, _ = x.shape
    rows_x = x[targets.batch, targets.rows]  # [N, d]
    rope_rows = rope[targets.batch if rope.shape[0] > 1 else torch.zeros_like(targets.batch), targets.rows]
    q = attention.q_proj(rows_x).view(-1, 1, attention.num_heads, head_dim)[:, :, :heads]
    q = apply_rope(q, rope_rows[:, None])[:, 0]  # [N, heads, hd]
    k = attention.k_proj(x).view(b, s, attention.num_kv_heads, head_dim)
    k = apply_rope(k, rope if rope.shape[0] == b else rope.expand(b, -1, -1))  # [b, s, kv, hd]
    kv_of_head = torch.arange(heads, device=x.device) // groups
    keys = k[targets.batch][:, :, kv_of_head]  # [N, s, heads, hd]
    scores = torch.einsum("nhd,nshd->nhs", q.float(), keys.float()) / math.sqrt(head_dim)
    positions = torch.arange(s, device=x.device)
    scores = scores.masked_fill((positions[None] > targets.rows[:, None])[:, None], float("-inf"))
    log_probs = scores.log_softmax(dim=-1)
    on_line = (positions[None] >= targets.first[:, None]) & (positions[None] < targets.end[:, None])  # [N, s]
    line_log_mass = log_probs.masked_fill(~on_line[:, None], float("-inf")).logsumexp(dim=-1)  # [N, heads]
    return -line_log_mass.mean()
