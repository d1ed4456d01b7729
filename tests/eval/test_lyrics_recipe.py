"""The lyrics scoring recipe on hand-made cases, one group per language: each rule of the normalisation and the
error counting is pinned here, because every lyric-accuracy figure of the project depends on them."""

from __future__ import annotations

import json

import pytest

from heartmula.cli import main
from heartmula.errors import HeartMuLaError
from heartmula.eval.lyrics import chinese_number, edit_counts, normalize_lyrics, score, units


@pytest.mark.parametrize("text, expected", [
    ("[Verse 1]\nHello, World!", "hello world"),  # section headers, case, punctuation
    ("Don't stop — it’s ALIVE...", "dont stop its alive"),  # apostrophes joined, dashes split
    ("Ｌｏｖｅ　ｍｅ　２", "love me two"),  # full-width letters, digits and space
    ("I was born in 1999 with 1,000 dreams", "i was born in one thousand, nine hundred and ninety-nine"
     .replace(",", "").replace("-", " ") + " with one thousand dreams"),
    ("♪ la la la ♪", "la la la"),
])
def test_english_normalisation(text, expected):
    assert normalize_lyrics(text, "en") == expected


def test_english_word_counts():
    def counted(ref, hyp):
        c = edit_counts(units(ref, "en", "wer"), units(hyp, "en", "wer"))
        return c.substitutions, c.deletions, c.insertions, c.reference_length

    assert counted("the cat sat on the mat", "the cat sat on mat") == (0, 1, 0, 6)
    assert counted("the cat sat", "the cat sat down") == (0, 0, 1, 3)
    assert counted("the cat sat", "the dog sat") == (1, 0, 0, 3)
    assert score("The cat, sat!", "the CAT sat", "en") == {"wer": 0.0, "cer": 0.0, "per": 0.0}
    assert score("one two three four", "one two tree four", "en", phonemes=False)["wer"] == 0.25


def test_english_phonemes():
    assert units("cat", "en", "per") == ["k", "æ", "t"]
    assert score("cat", "bat", "en")["per"] == pytest.approx(1 / 3)
    assert score("2 cats", "two cats", "en")["per"] == 0.0  # numbers are spelled before phonemising


def test_spanish():
    assert normalize_lyrics("¡Hola! ¿Cómo estás? Tengo 21 años.", "es") == "hola cómo estás tengo veintiuno años"
    assert score("canta conmigo", "canta con migo", "es", phonemes=False)["wer"] == 1.0  # 1 sub + 1 insertion
    rates = score("la noche es bella", "la noche es vella", "es")
    assert rates["wer"] == 0.25 and rates["per"] == 0.0  # b and v sound the same in Spanish


def test_chinese_characters_simplified_and_numbers():
    assert normalize_lyrics("我愛你，３個月！", "zh") == "我爱你 三 个月"  # spaces do not count in zh
    assert score("我爱你中国", "我愛你中國", "zh") == {"wer": 0.0, "cer": 0.0, "per": 0.0}
    rates = score("我爱你", "我恨你", "zh", phonemes=False)
    assert rates["cer"] == pytest.approx(1 / 3) and rates["wer"] == rates["cer"]  # zh WER is on characters
    assert score("我爱你", "我爱你", "zh")["per"] == 0.0 and score("我爱你", "他爱你", "zh")["per"] > 0


@pytest.mark.parametrize("number, reading", [
    (0, "零"), (7, "七"), (10, "十"), (15, "十五"), (20, "二十"), (105, "一百零五"), (110, "一百一十"),
    (1001, "一千零一"), (20005, "二万零五"), (123456, "十二万三千四百五十六"), (100000000, "一亿"),
])
def test_chinese_numbers(number, reading):
    assert chinese_number(number) == reading


def test_japanese_scored_on_the_kana_reading():
    assert units("桜", "ja", "cer") == ["サ", "ク", "ラ"]
    assert score("さくら さくら", "桜 桜", "ja") == {"wer": 0.0, "cer": 0.0, "per": 0.0}
    rates = score("さくら", "さくま", "ja")
    assert rates["cer"] == pytest.approx(1 / 3) and rates["per"] == pytest.approx(1 / 6)  # s a k u r a
    assert normalize_lyrics("「ｻｸﾗ」、3月", "ja") == "サクラ 三 月"  # half-width kana widened, numbers in kanji


def test_korean():
    assert normalize_lyrics("사랑해요, 너를! 3", "ko") == "사랑해요 너를 삼"
    rates = score("사랑해요 너를", "사랑해요 나를", "ko")
    assert rates["wer"] == 0.5 and rates["cer"] == pytest.approx(1 / 6) and 0 < rates["per"] < 0.2


def test_unknown_language_is_a_user_error():
    with pytest.raises(HeartMuLaError, match="covers"):
        normalize_lyrics("bonjour", "fr")


def test_cli_scores_folders_at_corpus_level(tmp_path, capsys):
    refs, hyps = tmp_path / "ref", tmp_path / "hyp"
    refs.mkdir()
    hyps.mkdir()
    (refs / "a.txt").write_text("[verse]\nthe cat sat on the mat\n")  # 6 words
    (refs / "b.txt").write_text("hello world\n")  # 2 words
    (hyps / "a.lrc").write_text("[la:en]\n[00:01.00]The cat sat on the hat.\n[00:04.00]\n")  # 1 error
    (hyps / "b.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")  # 1 error
    report_path = tmp_path / "scores.json"
    assert main(["eval", "lyrics", "--ref", str(refs), "--hyp", str(hyps), "--language", "en",
                 "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["total"]["wer"] == pytest.approx(2 / 8)  # summed errors over summed words, not mean of 1/6, 1/2
    assert [round(item["wer"], 4) for item in report["items"]] == [round(1 / 6, 4), 0.5]
    assert "total: WER 0.2500" in capsys.readouterr().out


def test_cli_unmatched_names_and_empty_reference_fail(tmp_path, capsys):
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "a.txt").write_text("[chorus]\n")
    (tmp_path / "a.txt").write_text("words")
    (tmp_path / "zzz.txt").write_text("words")
    assert main(["eval", "lyrics", "--ref", str(tmp_path / "ref"), "--hyp", str(tmp_path / "zzz.txt"),
                 "--language", "en"]) == 2
    assert "no reference" in capsys.readouterr().err
    assert main(["eval", "lyrics", "--ref", str(tmp_path / "ref"), "--hyp", str(tmp_path / "a.txt"),
                 "--language", "en"]) == 2
    assert "no lyrics left" in capsys.readouterr().err
