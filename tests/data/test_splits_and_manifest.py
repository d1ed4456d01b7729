"""Split hygiene, manifest reading, lyric sources."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from heartmula.data.corpus import BuildConfig, plan_item, split_of_work
from heartmula.data.lyrics import (
    LANGUAGES,
    WORD_SOURCE,
    LyricWriter,
    english_syllables,
    is_blocked,
    passages,
    spanish_syllables,
    text_source,
    vocabulary,
)
from heartmula.data.scores import catalogue
from heartmula.errors import HeartMuLaError
from heartmula.manifest import read_manifest, write_manifest


def test_no_work_in_two_splits_of_the_tiny_build(tiny_corpus):
    splits = defaultdict(set)
    for row in read_manifest(tiny_corpus):
        splits[row["source"]["work"]].add(row["split"])
        assert row["split"] == split_of_work(row["source"]["work"])
    assert all(len(s) == 1 for s in splits.values())


def test_split_fractions_over_the_whole_catalogue():
    works = catalogue()
    splits = [split_of_work(w.work_id) for w in works]
    counts = {s: splits.count(s) / len(works) for s in ("train", "val", "test")}
    assert 0.86 < counts["train"] < 0.94 and 0.03 < counts["val"] < 0.07 and 0.03 < counts["test"] < 0.07
    # A work's split depends on the work alone, never on the seed or the item.
    assert [split_of_work(w.work_id) for w in works[:50]] == splits[:50]


def test_plan_covers_languages_and_instrumentals_evenly():
    config = BuildConfig(out_dir=None, seed=3)
    plans = [plan_item(config, i) for i in range(60)]
    languages = [p.language for p in plans]
    assert languages.count(None) == 10
    assert all(languages.count(lang) == 10 for lang in LANGUAGES)
    assert plan_item(config, 7) == plans[7]
    assert plan_item(BuildConfig(out_dir=None, seed=4), 7) != plans[7]


def test_read_manifest_reports_broken_lines(tmp_path):
    path = write_manifest(tmp_path / "manifest.jsonl", [{"id": "a"}])
    with pytest.raises(HeartMuLaError, match="lacks"):
        read_manifest(path)
    path.write_text('{"id": \n')
    with pytest.raises(HeartMuLaError, match="not JSON"):
        read_manifest(path)
    with pytest.raises(HeartMuLaError, match="no manifest"):
        read_manifest(tmp_path / "missing")


@pytest.mark.parametrize("language", LANGUAGES)
def test_lyric_lines_fit_the_syllable_slots(language):
    words, weights = vocabulary(language)
    assert len(words) > 2000 and abs(weights.sum() - 1) < 1e-9
    writer = LyricWriter(language, np.random.default_rng(0))
    for n in (1, 3, 7, 12):
        used = sum(len(w.syllables) for w in writer.line(n))
        if writer.passages:  # running text: never more syllables than notes (the last syllable holds the rest)
            assert 1 <= used <= n
        else:  # word lists fill the phrase exactly
            assert used == n


@pytest.mark.parametrize("language", ["en", "es", "zh"])
def test_running_text_lyrics_are_sung_in_order_and_clean(language):
    texts = passages(language)
    if not texts:
        pytest.skip("Debian fortunes packages are missing (scripts/setup.sh installs them)")
    assert all(not is_blocked(language, w.text) for passage in texts for w in passage)
    writer = LyricWriter(language, np.random.default_rng(5))
    first = [w.text for w in writer.line(12)]
    second = [w.text for w in writer.line(12)]
    # A fresh writer starts a passage, and the next line goes on with it where the first stopped: sentence context.
    def continues(passage):
        texts_ = [w.text for w in passage]
        rest = texts_[len(first):]
        return texts_[: len(first)] == first and second[: len(rest)] == rest[: len(second)]

    assert any(continues(passage) for passage in texts)
    assert text_source(language) != WORD_SOURCE


def test_syllabification_rules():
    assert english_syllables("love") == ("love",)
    assert english_syllables("river") == ("ri", "ver")
    assert english_syllables("people") == ("peo", "ple")
    assert spanish_syllables("canción") == ("ca", "nción")
    assert len(spanish_syllables("bonita")) == 3


def test_profanity_never_reaches_lyrics():
    english = {w.text for w in vocabulary("en")[0]}
    assert "class" in english and not any(w.startswith("fuck") or w == "sex" for w in english)


def test_intelligibility_sample_takes_the_first_sung_items_per_language():
    from heartmula.eval.intelligibility import intelligibility_markdown, sample_vocal_rows

    rows = [{"id": f"s-{i:03d}", "language": LANGUAGES[i % 5] if i % 6 else None, "vocals": "v.flac" if i % 6 else None,
             "lyrics": "[verse]\nla" if i % 6 else ""} for i in range(40)]
    sample = sample_vocal_rows(list(reversed(rows)), per_language=2)
    assert len(sample) == 10 and all(r["vocals"] for r in sample)
    for language in LANGUAGES:
        ids = [r["id"] for r in sample if r["language"] == language]
        expected = [r["id"] for r in rows if r["language"] == language][:2]
        assert ids == expected
    table = intelligibility_markdown({"en": {"items": 2, "seconds": 120.0, "wer": 0.5, "cer": 0.25,
                                             "by_gender": {"male": {"cer": 0.2}}}})
    assert "| en | 2 | 2.0 | 0.50 | 0.25 |  | 0.20 |" in table
