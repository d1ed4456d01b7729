"""The lyrics scoring recipe: WER, CER and PER of transcribed lyrics, with one fixed normalisation per language.

Every lyric-accuracy figure of the project comes from here, so the rules below are a contract; the README
("Lyrics scoring recipe") states them and tests pin them. Change them only with a version bump of RECIPE.

Normalisation, in this order, the same for reference and hypothesis:
 1. bracketed annotations are removed: section headers ([verse], [chorus], ...) and LRC time tags;
 2. Unicode NFKC: full-width letters, digits and punctuation become half-width, half-width katakana full-width;
 3. zh: traditional characters become simplified (OpenCC t2s);
 4. case folding (lowercase);
 5. numbers (digit runs; "1,000" and "1.000" as thousands) are spelled out in the language: en/es/ko with
    num2words (ko: Sino-Korean), ja with kanji numerals (num2words), zh with Chinese numerals (own rules);
 6. apostrophes are deleted (don't -> dont); every other punctuation or symbol character (Unicode P* and S*,
    e.g. ♪ , . ! ? " - 、 。 「 」) becomes a space;
 7. runs of whitespace become one space.
Units:
 - WER: words split on spaces for en/es/ko; zh/ja have no spaces, so their WER is computed on characters
   (it equals their CER).
 - CER: characters without spaces. ja: characters of the katakana reading (pyopenjtalk), so that kanji vs kana
   spellings of the same sung word are not errors.
 - PER: phonemes. en (en-us), es, zh (cmn), ko: espeak-ng 1.52 IPA through phonemizer, using the library and
   data of the espeakng-loader wheel (pinned, so every machine gives the same phonemes); stress marks dropped,
   Mandarin tone numbers kept on their vowel. ja: pyopenjtalk phonemes. Word boundaries are not units.
Rates are corpus-level: edits (substitutions + deletions + insertions, Levenshtein) summed over all pairs, divided
by the summed reference length. A rate can exceed 1 when the hypothesis has many insertions.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path

from heartmula.errors import HeartMuLaError
from heartmula.extras import missing_extra_message, require
from heartmula.transcribe.result import lyrics_text_of

RECIPE = "heartmula-lyrics-v1"
LANGUAGES = ("en", "es", "zh", "ja", "ko")
CHARACTER_LANGUAGES = ("zh", "ja")
ESPEAK_VOICES = {"en": "en-us", "es": "es", "zh": "cmn", "ko": "ko"}

_BRACKETED = re.compile(r"\[[^\]\n]*\]")
_NUMBER = re.compile(r"\d+(?:[,.]\d{3})*(?!\d)")
_APOSTROPHES = "'’ʼ‘`´"


def _check_language(language: str) -> str:
    if language not in LANGUAGES:
        raise HeartMuLaError(f"the lyrics recipe covers {', '.join(LANGUAGES)}; got language {language!r}")
    return language


_CHINESE_DIGITS = "零一二三四五六七八九"


def chinese_number(n: int) -> str:
    """Mandarin reading of a non-negative integer in characters: 10 -> 十, 105 -> 一百零五, 20005 -> 二万零五."""
    if n < 10:
        return _CHINESE_DIGITS[n]
    if n < 20:
        return "十" + (_CHINESE_DIGITS[n - 10] if n > 10 else "")

    def below_10000(v: int) -> str:
        out, zero = "", False
        for unit_value, unit in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
            digit = v // unit_value % 10
            if digit:
                if zero and out:
                    out += "零"
                out += _CHINESE_DIGITS[digit] + unit
                zero = False
            else:
                zero = True
        return out

    parts = []
    for big_value, big_unit in ((10**8, "亿"), (10**4, "万"), (1, "")):
        group = n // big_value % 10**4 if big_value < 10**8 else n // big_value
        if group:
            if parts and group < 1000:
                parts.append("零")
            parts.append((below_10000(group) if group < 10**4 else chinese_number(group)) + big_unit)
    reading = "".join(parts)
    return reading[1:] if reading.startswith("一十") else reading  # 120000 is 十二万, not 一十二万


def spell_number(n: int, language: str) -> str:
    if language == "zh":
        return chinese_number(n)
    require("eval", "num2words")
    from num2words import num2words

    return num2words(n, lang=language)


@functools.lru_cache(maxsize=1)
def _traditional_to_simplified():
    require("eval", "opencc")
    import opencc

    return opencc.OpenCC("t2s")


def normalize_lyrics(text: str, language: str) -> str:
    """Rules 1-7 of the module docstring."""
    _check_language(language)
    text = _BRACKETED.sub(" ", text)
    text = unicodedata.normalize("NFKC", text)
    if language == "zh":
        text = _traditional_to_simplified().convert(text)
    text = text.casefold()
    text = _NUMBER.sub(lambda m: f" {spell_number(int(re.sub(r'[,.]', '', m[0])), language)} ", text)
    text = "".join("" if ch in _APOSTROPHES else " " if unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    return " ".join(text.split())


@functools.lru_cache(maxsize=8)
def _espeak(language: str):
    try:
        import espeakng_loader
        from phonemizer.backend import EspeakBackend
        from phonemizer.backend.espeak.wrapper import EspeakWrapper
    except ImportError:
        raise HeartMuLaError(missing_extra_message("eval", "the phoneme error rate (PER)", "phonemizer and "
                                                   "espeakng-loader; or pass --no-per")) from None
    EspeakWrapper.set_library(espeakng_loader.get_library_path())
    EspeakWrapper.set_data_path(espeakng_loader.get_data_path())
    quiet = logging.getLogger("heartmula.phonemizer")
    quiet.setLevel(logging.ERROR)
    return EspeakBackend(ESPEAK_VOICES[language], preserve_punctuation=False, with_stress=False,
                         language_switch="remove-flags", logger=quiet)


def _pyopenjtalk():
    try:
        import pyopenjtalk
    except ImportError:
        raise HeartMuLaError(missing_extra_message("eval", "Japanese scoring", "pyopenjtalk-plus")) from None
    return pyopenjtalk


def _katakana_reading(normalized: str) -> str:
    if not normalized:
        return ""
    reading = _pyopenjtalk().g2p(normalized, kana=True)
    return "".join(ch for ch in reading if "\u30a0" <= ch <= "\u30ff" and ch != "・")


def phonemes(normalized: str, language: str) -> list[str]:
    if not normalized:
        return []
    if language == "ja":
        return [p for p in _pyopenjtalk().g2p(normalized).split() if p != "pau"]
    from phonemizer.separator import Separator

    ipa = _espeak(language).phonemize([normalized], separator=Separator(phone=" ", word=" | "), strip=True)[0]
    return [p for p in ipa.replace("ˈ", "").replace("ˌ", "").split() if p != "|"]


def units(text: str, language: str, kind: str) -> list[str]:
    """The unit sequence that `kind` (wer, cer, per) counts, after normalisation."""
    normalized = normalize_lyrics(text, language)
    if kind == "per":
        return phonemes(normalized, language)
    if kind == "cer" or language in CHARACTER_LANGUAGES:
        chars = _katakana_reading(normalized) if language == "ja" else normalized
        return [ch for ch in chars if not ch.isspace()]
    if kind == "wer":
        return normalized.split()
    raise ValueError(f"unknown unit kind {kind!r}")


@dataclass
class EditCounts:
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    reference_length: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        if self.reference_length == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return self.errors / self.reference_length

    def __add__(self, other: EditCounts) -> EditCounts:
        return EditCounts(self.substitutions + other.substitutions, self.deletions + other.deletions,
                          self.insertions + other.insertions, self.reference_length + other.reference_length)


def edit_counts(reference: list[str], hypothesis: list[str]) -> EditCounts:
    require("eval", "rapidfuzz")
    from rapidfuzz.distance import Levenshtein

    counts = EditCounts(reference_length=len(reference))
    for op in Levenshtein.editops(reference, hypothesis):
        if op.tag == "replace":
            counts.substitutions += 1
        elif op.tag == "delete":
            counts.deletions += 1
        else:
            counts.insertions += 1
    return counts


def score_pair(reference: str, hypothesis: str, language: str, phonemes: bool = True) -> dict[str, EditCounts]:
    kinds = ("wer", "cer", "per") if phonemes else ("wer", "cer")
    return {kind: edit_counts(units(reference, language, kind), units(hypothesis, language, kind)) for kind in kinds}


def score(reference: str, hypothesis: str, language: str, phonemes: bool = True) -> dict[str, float]:
    """{'wer': .., 'cer': .., 'per': ..} for one pair of lyrics texts."""
    return {kind: counts.rate for kind, counts in score_pair(reference, hypothesis, language, phonemes).items()}


def read_lyrics_file(path: Path) -> str:
    """Plain lyrics, or a transcript of ours (lrc/srt/json) reduced to its words."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HeartMuLaError(f"cannot read {path} as UTF-8 text: {exc}") from None
    try:
        return lyrics_text_of(text, path.suffix)
    except ValueError as exc:  # a broken json/srt
        raise HeartMuLaError(f"cannot read {path} as a {path.suffix} transcript: {exc}") from None


def pair_files(ref: Path, hyps: list[Path]) -> list[tuple[Path, Path]]:
    """(reference, hypothesis) pairs: file + file, or matched by stem when a folder is given."""
    if len(hyps) == 1 and hyps[0].is_dir():
        hyps = sorted(p for p in hyps[0].iterdir() if p.suffix.lower() in (".txt", ".lrc", ".srt", ".json"))
    for path in (ref, *hyps):
        if not path.exists():
            raise HeartMuLaError(f"{path} does not exist")
    if ref.is_file():
        if len(hyps) != 1:
            raise HeartMuLaError("one --ref file scores one --hyp file; for many songs give a --ref folder")
        return [(ref, hyps[0])]
    references = {p.stem: p for p in ref.iterdir() if p.is_file()}
    pairs, unmatched = [], []
    for hyp in hyps:
        if hyp.stem in references:
            pairs.append((references[hyp.stem], hyp))
        else:
            unmatched.append(hyp.name)
    if unmatched:
        raise HeartMuLaError(f"no reference in {ref} for {', '.join(unmatched[:5])}: names must share the stem")
    if not pairs:
        raise HeartMuLaError(f"no hypothesis files to score against {ref}")
    return pairs


def score_corpus(pairs: list[tuple[Path, Path]], language: str, phonemes: bool = True) -> dict:
    """Per-pair rates and corpus-level totals (errors summed before dividing)."""
    _check_language(language)
    items, totals = [], {}
    for ref_path, hyp_path in pairs:
        counts = score_pair(read_lyrics_file(ref_path), read_lyrics_file(hyp_path), language, phonemes)
        if counts["cer"].reference_length == 0:
            raise HeartMuLaError(f"reference {ref_path} has no lyrics left after normalisation")
        items.append({"ref": str(ref_path), "hyp": str(hyp_path),
                      **{kind: c.rate for kind, c in counts.items()},
                      "counts": {kind: asdict(c) for kind, c in counts.items()}})
        for kind, c in counts.items():
            totals[kind] = totals.get(kind, EditCounts()) + c
    return {"recipe": RECIPE, "language": language, "items": items,
            "total": {kind: c.rate for kind, c in totals.items()},
            "total_counts": {kind: asdict(c) for kind, c in totals.items()}}
