"""Bring-your-own songs: good files imported with their sidecars, broken ones reported and skipped."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from heartmula.cli import main
from heartmula.data.importer import guess_language
from heartmula.manifest import parse_lyrics_sections, parse_tags, read_manifest


def _tone(seconds, rate, freq=220.0):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_import_folder_with_broken_files(tmp_path, capsys):
    songs = tmp_path / "songs"
    (songs / "album").mkdir(parents=True)
    sf.write(songs / "first.wav", np.stack([_tone(1.5, 44100), _tone(1.5, 44100, 330)], 1), 44100)
    (songs / "first.txt").write_text("[verse]\nte quiero mi corazón\n\n[chorus]\nla noche es bonita\n")
    (songs / "first.tags").write_text("Pop\npiano, happy\n")
    sf.write(songs / "album" / "second.flac", _tone(2.0, 22050), 22050)
    (songs / "garbage.mp3").write_bytes(b"ID3 this is not audio" * 50)
    (songs / "empty.wav").write_bytes(b"")
    sf.write(songs / "bad_lyrics.wav", _tone(1.0, 16000), 16000)
    (songs / "bad_lyrics.txt").write_bytes(b"\xff\xfe\xfa not utf-8 \xc3")
    out = tmp_path / "imported"
    assert main(["data", "import", str(songs), "--out", str(out), "--license", "CC-BY-4.0", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "3 skipped" in err and "garbage.mp3" in err and "bad_lyrics.wav" in err and "empty.wav" in err
    rows = {r["source"]["work"]: r for r in read_manifest(out)}
    assert set(rows) == {"first.wav", "album/second.flac"}
    first, second = rows["first.wav"], rows["album/second.flac"]
    assert first["language"] == "es" and second["language"] is None and second["lyrics"] == ""
    assert parse_tags(first["tags"]) == ["pop", "piano", "happy"]
    assert [name for name, _ in parse_lyrics_sections(first["lyrics"])] == ["verse", "chorus"]
    for row in rows.values():
        info = sf.info(row["audio"])
        assert info.samplerate == 48000 and info.channels == 2 and row["license"] == "CC-BY-4.0"
        assert abs(info.frames / 48000 - row["duration"]) < 0.01
    assert abs(first["duration"] - 1.5) < 0.01 and abs(second["duration"] - 2.0) < 0.01
    report = (out / "import-report.txt").read_text()
    assert "imported 2 of 5" in report
    # Importing again is idempotent (finished items are kept).
    assert main(["data", "import", str(songs), "--out", str(out), "--license", "CC-BY-4.0", "--quiet"]) == 0
    assert {r["id"] for r in read_manifest(out)} == {r["id"] for r in rows.values()}


def test_language_guess_by_script():
    assert guess_language("[verse]\nI love you, my dear") == "en"
    assert guess_language("te quiero, mi amor") == "es"
    assert guess_language("我爱你中国") == "zh"
    assert guess_language("さくら咲く春") == "ja"
    assert guess_language("사랑해요") == "ko"
    assert guess_language("[verse]\n") is None
