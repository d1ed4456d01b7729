"""Tags and lyrics: normalisation, weighted tag prompts, and the tokenizer wrapper.

The prompt text rules follow the upstream release: tags are lowercased and wrapped in <tag>...</tag> (plain text,
not special tokens), lyrics are lowercased whole (section headers included), and both get BOS/EOS if missing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from heartmula.errors import HeartMuLaError

SECTION_NAMES = ("intro", "verse", "prechorus", "chorus", "bridge", "outro")
# A prompt longer than this many characters is almost surely a wrong file (a whole book, a binary).
MAX_TEXT_CHARS = 100_000


@dataclass(frozen=True)
class TagPrompt:
    tags: str
    weight: float = 1.0


def read_text_argument(value: str, what: str) -> str:
    """Upstream accepts either the text itself or a path to a UTF-8 file holding it; so do we."""
    if value and len(value) < 4096 and "\n" not in value and os.path.isfile(value):
        try:
            value = Path(value).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise HeartMuLaError(f"{what} file {value} is not UTF-8 text") from None
    if len(value) > MAX_TEXT_CHARS:
        raise HeartMuLaError(f"{what} has {len(value)} characters; the limit is {MAX_TEXT_CHARS}")
    return value


def normalize_tags(tags: str) -> str:
    """Lowercase and wrap in <tag>...</tag> unless already wrapped (upstream rule)."""
    tags = tags.lower()  # not stripped: upstream keeps a tags file's trailing newline, and parity needs it
    if not tags.startswith("<tag>"):
        tags = f"<tag>{tags}"
    if not tags.endswith("</tag>"):
        tags = f"{tags}</tag>"
    return tags


def normalize_lyrics(lyrics: str) -> str:
    return lyrics.lower()


_WEIGHT = re.compile(r"^(?P<tags>.*?):\s*(?P<weight>[-+0-9.eE]+)\s*$", re.S)


def parse_tag_prompts(spec: str) -> list[TagPrompt]:
    """Parse a tags argument into weighted prompts.

    "piano,sad"                    -> one prompt, weight 1
    "jazz:0.7,electronic:0.3"      -> two prompts (every comma item carries a weight)
    "jazz,piano:0.7|electronic:0.3" -> '|' separates prompts that hold several tags
    Weights are normalised to sum to 1 by the generator; they must be >= 0 and not all 0.
    """
    spec = spec.strip()
    if ":" not in spec:
        return [TagPrompt(spec, 1.0)]
    parts = spec.split("|") if "|" in spec else spec.split(",")
    prompts = []
    for part in parts:
        match = _WEIGHT.match(part.strip())
        if not match:
            raise HeartMuLaError(
                f"cannot read the weight in tag prompt {part!r}; write TAGS:WEIGHT, e.g. 'jazz:0.7,electronic:0.3'"
            )
        try:
            weight = float(match["weight"])
        except ValueError:
            raise HeartMuLaError(f"weight {match['weight']!r} in {part!r} is not a number") from None
        prompts.append(TagPrompt(match["tags"].strip(), weight))
    validate_weights([p.weight for p in prompts])
    return prompts


def validate_weights(weights: list[float]) -> list[float]:
    """Return weights normalised to sum 1; reject negative, non-finite or all-zero weights."""
    if not weights:
        raise HeartMuLaError("at least one tag prompt is needed")
    if any(not (w >= 0.0) or w == float("inf") for w in weights):
        raise HeartMuLaError(f"prompt weights must be finite and >= 0, got {weights}")
    total = sum(weights)
    if total <= 0:
        raise HeartMuLaError("prompt weights must not all be 0")
    return [w / total for w in weights]


class TextTokenizer:
    """A `tokenizers` tokenizer plus the BOS/EOS rules of the prompt."""

    def __init__(self, tokenizer: Tokenizer, bos_id: int, eos_id: int):
        self.tokenizer = tokenizer
        self.bos_id = bos_id
        self.eos_id = eos_id

    @classmethod
    def from_file(cls, path: str | os.PathLike, bos_id: int, eos_id: int) -> TextTokenizer:
        path = Path(path)
        if not path.is_file():
            raise HeartMuLaError(f"tokenizer file {path} is missing")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception subclasses on bad JSON
            raise HeartMuLaError(f"cannot read tokenizer {path}: {exc}") from None
        return cls(tokenizer, bos_id, eos_id)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids with exactly one BOS in front and one EOS at the end (empty text -> [BOS, EOS])."""
        ids = self.tokenizer.encode(text).ids if text else []
        if not ids or ids[0] != self.bos_id:
            ids = [self.bos_id, *ids]
        if ids[-1] != self.eos_id:
            ids = [*ids, self.eos_id]
        return ids

    def encode_tags(self, tags: str) -> list[int]:
        return self.encode(normalize_tags(tags))

    def encode_lyrics(self, lyrics: str) -> list[int]:
        """Empty lyrics give [BOS, EOS]: an instrumental song (upstream crashes there)."""
        return self.encode(normalize_lyrics(lyrics) if lyrics.strip() else "")

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)


def byte_level_tokenizer(bos: str = "<|begin_of_text|>", eos: str = "<|end_of_text|>") -> Tokenizer:
    """A byte-level BPE with no merges: covers every language (UTF-8 bytes), ids 0-255 are bytes, then BOS, EOS.

    Fresh models start from it; a trained tokenizer with merges can replace it (same file format).
    """
    from tokenizers import decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([bos, eos])
    return tokenizer
