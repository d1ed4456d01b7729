"""A small byte-level BPE for the prompt text (tags + lyrics), trained on a corpus' own texts.

The official tokenizer is Llama-3's 128k BPE, which we cannot download and which would dwarf a small model's
embedding table. This one has the same file format (`tokenizers` JSON), the same special tokens the prompt needs
(BOS/EOS, named as in Llama-3) and byte-level fallback: all 256 bytes are in the vocabulary, so any text in any
script encodes; merges learned from the corpus just make en/zh/ja/ko/es text shorter.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from heartmula.text import normalize_lyrics, normalize_tags

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
# A few strings every song prompt holds; kept whole so that tags and section headers are cheap and stable.
PROMPT_TOKENS = ("<tag>", "</tag>", "[intro]", "[verse]", "[prechorus]", "[chorus]", "[bridge]", "[outro]")


def prompt_texts(tags: Iterable[str], lyrics: Iterable[str]) -> list[str]:
    """The texts exactly as the prompt encodes them (normalised tags and lyrics)."""
    return [normalize_tags(t) for t in tags] + [normalize_lyrics(text) for text in lyrics if text.strip()]


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE on `texts`; ids 0 and 1 are BOS and EOS."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # byte fallback: every byte is a token
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    # Added (not special) tokens: they are matched before BPE and decode back to their text.
    tokenizer.add_tokens(list(PROMPT_TOKENS))
    return tokenizer
