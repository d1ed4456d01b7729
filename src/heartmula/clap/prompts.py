"""Text prompts from tags: the hand-made tag vocabulary (en/zh/ja/ko/es), sentences built from tags, tag masking.

Training sees many phrasings of the same tag set (some tags dropped, tags translated, sentence frames, lyrics lines)
so that the text projection learns the tag content, not one fixed string.
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

LANGUAGES = ("en", "zh", "ja", "ko", "es")
VOCABULARY_FILE = Path(__file__).with_name("tag_vocabulary.json")
# Order of categories in a built sentence: the way people describe music (style first, key last).
CATEGORY_ORDER = ("genre", "mood", "tempo", "vocal", "instrument", "language", "key")


@functools.lru_cache(maxsize=1)
def vocabulary() -> dict:
    return json.loads(VOCABULARY_FILE.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=1)
def tag_categories() -> dict[str, str]:
    """tag word -> category (genre, instrument, mood, tempo, vocal, language, key)."""
    return {tag: cat for cat, tags in vocabulary()["tags"].items() for tag in tags}


def known_tags() -> list[str]:
    """Every tag of the vocabulary (the default zero-shot tag set of `heartmula tag`)."""
    return list(tag_categories())


def normalise_tag(tag: str) -> str:
    return " ".join(tag.strip().lower().split())


def translate_tag(tag: str, language: str) -> str:
    """A tag in `language`; tags outside the vocabulary stay as written (the text encoder is multilingual)."""
    tag = normalise_tag(tag)
    category = tag_categories().get(tag)
    if category is None:
        return tag
    return vocabulary()["tags"][category][tag].get(language, tag)


def order_tags(tags: list[str]) -> list[str]:
    rank = {c: i for i, c in enumerate(CATEGORY_ORDER)}
    cats = tag_categories()
    return sorted(tags, key=lambda t: rank.get(cats.get(normalise_tag(t), ""), len(rank)))


def tags_prompt(tags: list[str], language: str = "en", template: int = 0) -> str:
    """A description built from tags in one language; template 0 is the bare list, others are sentence frames."""
    vocab = vocabulary()
    words = [translate_tag(t, language) for t in order_tags(tags)]
    listed = vocab["list_separator"][language].join(words)
    templates = vocab["templates"][language]
    return templates[template % len(templates)].format(x=listed)


def lyrics_snippet(lyrics: str, rng: random.Random, max_lines: int = 2) -> str:
    lines = [ln.strip() for ln in lyrics.splitlines() if ln.strip() and not ln.strip().startswith("[")]
    if not lines:
        return ""
    start = rng.randrange(len(lines))
    return " ".join(lines[start : start + rng.randint(1, max_lines)])


def training_prompt(
    tags: list[str], lyrics: str, rng: random.Random, keep: float = 0.7, lyrics_rate: float = 0.1
) -> tuple[str, frozenset[str]]:
    """(prompt, the tags it states). Each tag survives with probability `keep` (at least one always does); the
    language and sentence frame are random; sometimes a lyrics line is added or is the whole prompt.

    The returned tag set is what the prompt claims: any clip that has all of them is a correct match. A
    lyrics-only prompt states no tags and matches its own item only (empty set)."""
    language = rng.choice(LANGUAGES)
    if lyrics and rng.random() < lyrics_rate * 0.3:
        return lyrics_snippet(lyrics, rng), frozenset()
    kept = [t for t in tags if rng.random() < keep] or [rng.choice(tags)]
    template = rng.randrange(len(vocabulary()["templates"][language]))
    prompt = tags_prompt(kept, language, template)
    if lyrics and rng.random() < lyrics_rate:
        prompt = f"{prompt}. {lyrics_snippet(lyrics, rng)}"
    return prompt, frozenset(normalise_tag(t) for t in kept)
