"""`heartmula transcribe` end to end with the embedded default model."""

from __future__ import annotations

import json
import shutil

import pytest

from heartmula.cli import main
from heartmula.transcribe.result import parse_lrc


def test_prints_timed_lyrics_with_the_embedded_default(audio_dir, capsys):
    assert main(["transcribe", str(audio_dir / "en.wav"), "--format", "lrc", "--threads", "2", "--quiet"]) == 0
    lines = [(t, line) for t, line in parse_lrc(capsys.readouterr().out) if line]
    assert lines and "river" in " ".join(line for _, line in lines).lower()
    assert [t for t, _ in lines] == sorted(t for t, _ in lines)


def test_folder_to_out_dir_writes_one_file_per_song(audio_dir, tmp_path, capsys):
    songs = tmp_path / "songs"
    (songs / "disc2").mkdir(parents=True)
    shutil.copy(audio_dir / "en.wav", songs / "a.wav")
    shutil.copy(audio_dir / "pause.wav", songs / "disc2" / "b.wav")
    (songs / "notes.txt").write_text("not audio")  # ignored: not an audio suffix
    out = tmp_path / "out"
    code = main(["transcribe", str(songs), "--model", "tiny.en", "--format", "json", "--out", str(out), "--quiet"])
    assert code == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a.json", "disc2/b.json"]  # no temporary files left behind
    assert json.loads((out / "a.json").read_text())["language"] == "en"


def test_one_bad_file_is_skipped_and_reported(audio_dir, tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"garbage" * 100)
    out = tmp_path / "out"
    code = main(["transcribe", str(audio_dir / "en.wav"), str(bad), "--model", "tiny.en", "--out", str(out),
                 "--quiet"])
    assert code == 1
    assert "skipped" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["en.txt"]


def test_user_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["transcribe", str(tmp_path / "missing.mp3")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    for folder in ("x", "y"):
        (tmp_path / folder / "same.wav").write_bytes(b"")
    assert main(["transcribe", str(tmp_path / "x" / "same.wav"), str(tmp_path / "y" / "same.wav"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "several inputs" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["transcribe", "--format", "docx", "a.wav"], ["transcribe", "--vocals", "x"]])
def test_bad_options_are_rejected(argv):
    with pytest.raises(SystemExit):
        main(argv)


def test_cli_choices_match_the_package():
    from heartmula.cli import transcribe as cli
    from heartmula.transcribe import FORMATS
    from heartmula.transcribe.vocals import METHODS

    assert cli.FORMATS == FORMATS and cli.VOCAL_METHODS == METHODS
