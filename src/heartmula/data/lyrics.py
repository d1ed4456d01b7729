"""Singable lyric lines in en, zh, ja, ko and es from text that installs offline.

English, Spanish and Chinese lines are running text: passages of Debian's fortune databases (English verse and
sayings, Spanish sayings, Tang and Song poems) sung in order, so a transcriber's language model has sentence
context (random word lists are sung back far less intelligibly). Japanese and Korean, and any language whose
text package is missing, draw words from `wordfreq` (frequency lists built from real text: Wikipedia, subtitles,
news, books; data CC-BY-SA-4.0). A line fills the syllable slots of a melody phrase, one syllable per slot; running
text that falls a word short holds its last syllable over the spare notes, so the text is always aligned to notes.
Japanese words are converted to kana (pyopenjtalk's dictionary) and sung by mora; Chinese by character; Korean by
hangul block; English and Spanish by orthographic syllables.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heartmula.errors import HeartMuLaError
from heartmula.extras import require

LANGUAGES = ("en", "zh", "ja", "ko", "es")
LANGUAGE_NAMES = {"en": "english", "zh": "chinese", "ja": "japanese", "ko": "korean", "es": "spanish"}
WORD_SOURCE = "wordfreq top-5000 word lists (CC-BY-SA-4.0)"
VOCABULARY_SIZE = 5000
JOINED_WITHOUT_SPACES = ("zh", "ja")

_SMALL_KANA = set("ゃゅょぁぃぅぇぉゎャュョァィゥェォヮ")
_EN_VOWELS = "aeiouy"
_ES_STRONG, _ES_WEAK = "aeoáéíóú", "iuü"


@dataclass(frozen=True)
class Word:
    text: str  # as written in the lyrics
    spoken: str  # as given to the speech synthesiser (kana for Japanese)
    syllables: tuple[str, ...]


def english_syllables(word: str) -> tuple[str, ...]:
    """Orthographic syllables: vowel groups with the consonants before them; a silent final e stays attached."""
    groups = re.findall(rf"[^{_EN_VOWELS}]*[{_EN_VOWELS}]+", word)
    if not groups:
        return (word,)
    tail = word[len("".join(groups)):]
    if len(groups) > 1 and re.fullmatch(r"[^aeiouy]*e", groups[-1]) and not groups[-1].endswith("le") \
            and tail in ("", "s", "d"):
        last = groups.pop()  # "love", "made", "times": the final e is silent
        groups[-1] += last
    groups[-1] += word[len("".join(groups)):]
    return tuple(groups)


def spanish_syllables(word: str) -> tuple[str, ...]:
    """Vowel nuclei: strong vowels split, weak vowels (i, u) join a neighbour (diphthongs)."""
    nucleus = rf"(?:[{_ES_WEAK}]?[{_ES_STRONG}][{_ES_WEAK}]?|[{_ES_WEAK}]+)"
    groups = re.findall(rf"[^aeiouáéíóúü]*{nucleus}", word)
    if not groups:
        return (word,)
    groups[-1] += word[len("".join(groups)):]
    return tuple(groups)


def japanese_morae(kana: str) -> tuple[str, ...]:
    morae: list[str] = []
    for ch in kana:
        if ch in _SMALL_KANA and morae:
            morae[-1] += ch
        else:
            morae.append(ch)
    return tuple(morae)


def katakana_to_hiragana(text: str) -> str:
    return "".join(chr(ord(c) - 0x60) if "ァ" <= c <= "ヶ" else c for c in text)


@functools.cache
def vocabulary(language: str) -> tuple[tuple[Word, ...], np.ndarray]:
    """Singable words of a language, most frequent first, with sampling weights (rank^-0.6: frequent words more
    often, as in real lyrics, without letting 'the' fill every line)."""
    if language not in LANGUAGES:
        raise HeartMuLaError(f"language {language!r} is not one of {', '.join(LANGUAGES)}")
    require("data", "wordfreq")
    import wordfreq

    words: list[Word] = []
    for text in wordfreq.top_n_list(language, VOCABULARY_SIZE):
        word = _singable_word(language, text)
        if word is not None:
            words.append(word)
    ranks = np.arange(1, len(words) + 1, dtype=np.float64)
    weights = ranks**-0.6
    return tuple(words), weights / weights.sum()


_EN_SKIP = frozenset("www http https com org html amp pdf etc th st nd rd ii iii vs ok".split())
# Frequency lists come from the web and subtitles and so contain profanity and slurs; keep them out of lyrics.
# Prefixes block a word family ("fuck..."); exact words block short words that are also parts of innocent ones.
_BLOCKED_PREFIXES = {
    "en": ("fuck", "shit", "bitch", "cunt", "nigg", "fag", "whore", "slut", "porn", "rape", "bastard", "damn",
           "penis", "vagina", "nazi", "kill", "suicid", "murder", "drug"),
    "es": ("puta", "puto", "mierda", "coño", "joder", "pendej", "cabrón", "verga", "culo", "chinga", "polla",
           "maric", "mamad", "follar", "sexo", "matar", "muert", "droga", "nazi", "violac", "asesin"),
}
_BLOCKED_WORDS = {
    "en": frozenset("ass asses dick dicks cock cocks pussy sex sexy sexual dead die died dies gun guns hell tits "
                    "boobs nude naked".split()),
    "es": frozenset("muere morir sexual desnudo desnuda".split()),
}


def is_blocked(language: str, word: str) -> bool:
    return word in _BLOCKED_WORDS.get(language, ()) or word.startswith(_BLOCKED_PREFIXES.get(language, ()))


def _singable_word(language: str, text: str) -> Word | None:
    if is_blocked(language, text):
        return None
    if language == "en":
        if not re.fullmatch(r"[a-z]{2,10}", text) or not re.search(r"[aeiouy]", text) or text in _EN_SKIP:
            return None
        syllables = english_syllables(text)
        return Word(text, text, syllables) if len(syllables) <= 3 else None
    if language == "es":
        if not re.fullmatch(r"[a-záéíóúüñ]{2,12}", text) or not re.search(r"[aeiouáéíóú]", text):
            return None
        syllables = spanish_syllables(text)
        return Word(text, text, syllables) if len(syllables) <= 4 else None
    if language == "zh":
        if not re.fullmatch(r"[\u4e00-\u9fff]{1,3}", text):
            return None
        return Word(text, text, tuple(text))
    if language == "ko":
        if not re.fullmatch(r"[\uac00-\ud7a3]{2,4}", text):
            return None
        return Word(text, text, tuple(text))
    if language == "ja":
        kana = japanese_kana(text)
        if kana is None:
            return None
        morae = japanese_morae(kana)
        return Word(text, kana, morae) if 2 <= len(morae) <= 5 else None
    return None


def japanese_kana(text: str) -> str | None:
    """Reading of a Japanese word in hiragana, or None when the dictionary cannot read it."""
    if not re.fullmatch(r"[\u3040-\u30ff\u4e00-\u9fff]{1,6}", text):
        return None
    require("data", "pyopenjtalk")
    import pyopenjtalk

    reading = pyopenjtalk.g2p(text, kana=True)
    if not re.fullmatch(r"[ァ-ヴー]+", reading):
        return None
    return katakana_to_hiragana(reading)


# Fortune files (one passage per `%`-separated entry) used as lyric text. Chosen for verse and plain sentences
# (no programming jokes, no offensive sections). Licenses from the packages' copyright files.
FORTUNE_DIR = Path("/usr/share/games/fortunes")
TEXT_SOURCES = {
    "en": (("songs-poems", "love", "wisdom", "people", "platitudes", "kids", "pets", "food", "tao", "art"),
           "Debian fortunes (BSD fortune data; quotations and verse, public domain or quoted)"),
    "es": (tuple(f"es/{name}.fortunes" for name in ("amistad", "arte", "familia", "filosofia", "humanos", "libertad",
                                                    "refranes", "proverbios", "sabiduria", "sentimientos", "verdad",
                                                    "vida", "lao-tse")),
           "Debian fortunes-es (texts presumed public domain per its copyright file)"),
    "zh": (("tang300", "song100"), "Debian fortunes-zh: 300 Tang poems and 100 Song ci (public domain classics)"),
}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _passage_words(language: str, passage: str) -> list[Word] | None:
    """A passage as singable words, or None when a word cannot be sung or is blocked (the passage is skipped)."""
    if language == "zh":
        lines = [ln for ln in _ANSI.sub("", passage).splitlines()
                 if ln.strip() and "《" not in ln and not ln.startswith("作者")]
        characters = re.findall(r"[\u4e00-\u9fff]", "".join(lines))
        return [Word(c, c, (c,)) for c in characters] or None
    words = []
    for token in re.findall(r"\S+", passage.replace("--", " ")):
        if token.startswith("--"):
            break  # the attribution line (" -- Author") ends the text
        text = token.strip(".,;:!?¡¿\"'()[]«»-—_*").lower()
        if not text:
            continue
        word = _singable_word(language, text)
        if word is None:
            return None
        words.append(word)
    return words if len(words) >= 4 else None


@functools.cache
def passages(language: str) -> tuple[tuple[Word, ...], ...]:
    """Singable passages of running text for `language` (empty when it has none, or its package is missing)."""
    files, _ = TEXT_SOURCES.get(language, ((), ""))
    found: list[tuple[Word, ...]] = []
    for name in files:
        path = FORTUNE_DIR / name
        if not path.is_file():
            continue
        for passage in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            words = _passage_words(language, passage)
            if words:
                found.append(tuple(words))
    return tuple(found)


def text_source(language: str) -> str:
    """Where a language's lyric text comes from (for the license field)."""
    if passages(language):
        return TEXT_SOURCES[language][1]
    return WORD_SOURCE


class LyricWriter:
    def __init__(self, language: str, rng: np.random.Generator) -> None:
        self.language = language
        self.words, self.weights = vocabulary(language)
        self.rng = rng
        self.passages = passages(language)
        self._stream: list[Word] = []
        self._by_length: dict[int, np.ndarray] = {}
        lengths = np.array([len(w.syllables) for w in self.words])
        for n in range(1, int(lengths.max()) + 1):
            self._by_length[n] = np.flatnonzero(lengths <= n)

    def line(self, n_syllables: int) -> list[Word]:
        """Words for a phrase of `n_syllables` notes: exactly that many syllables from the word lists, or running
        text with at most that many (the caller holds the last syllable over the rest)."""
        if self.passages:
            return self._running_line(n_syllables)
        words: list[Word] = []
        left = n_syllables
        while left > 0:
            candidates = self._by_length.get(min(left, max(self._by_length)))
            if candidates is None or candidates.size == 0:  # no word short enough: a one-syllable filler
                words.append(self._filler())
                left -= 1
                continue
            p = self.weights[candidates]
            choice = self.words[int(self.rng.choice(candidates, p=p / p.sum()))]
            words.append(choice)
            left -= len(choice.syllables)
        return words

    def _running_line(self, n_syllables: int) -> list[Word]:
        """The next words of the current passage (then the next passage) until the next word would not fit."""
        words: list[Word] = []
        left = n_syllables
        fresh_draws = 0
        while left > 0:
            if not self._stream:
                self._stream = list(self.passages[int(self.rng.integers(len(self.passages)))])
                fresh_draws += 1
            if len(self._stream[0].syllables) > left:
                if words or fresh_draws >= 4:
                    break
                self._stream = []  # a line cannot start with a word longer than the phrase: take another passage
                continue
            word = self._stream.pop(0)
            words.append(word)
            left -= len(word.syllables)
        return words or [self._filler() for _ in range(n_syllables)]

    def _filler(self) -> Word:
        syllable = {"en": "oh", "es": "ah", "zh": "啊", "ja": "あ", "ko": "아"}[self.language]
        return Word(syllable, syllable, (syllable,))

    def join(self, words: list[Word]) -> str:
        separator = "" if self.language in JOINED_WITHOUT_SPACES else " "
        return separator.join(w.text for w in words)
