import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from heartmula.cli import main
from heartmula.lm.pretrained import write_random_root


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli_root")
    write_random_root(path, "tiny", seed=1)
    return path


def test_help_explains_every_verb():
    result = subprocess.run([sys.executable, "-m", "heartmula", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "generate" in result.stdout
    result = subprocess.run([sys.executable, "-m", "heartmula", "generate", "--help"], capture_output=True, text=True)
    for option in ("--model", "--version", "--tags", "--lyrics", "--duration", "--topk", "--temperature",
                   "--cfg-scale", "--seed", "--dtype", "--device", "--codes-out", "--no-decode"):
        assert option in result.stdout, option


def test_generate_writes_codes_in_the_official_layout(root, tmp_path):
    lyrics = tmp_path / "lyrics.txt"
    lyrics.write_text("[verse]\nhello\n[chorus]\nworld\n", encoding="utf-8")
    out = tmp_path / "codes.npy"
    args = ["generate", "--model", str(root), "--tags", "pop,piano", "--lyrics", str(lyrics), "--duration", "2",
            "--seed", "3", "--codes-out", str(out), "--no-decode", "--quiet"]
    assert main(args) == 0
    codes = np.load(out)
    assert codes.dtype == np.int64 and codes.shape[0] == 8 and 1 <= codes.shape[1] <= 26
    again = tmp_path / "again.npy"
    assert main([*args[:-3], str(again), "--no-decode", "--quiet"]) == 0
    assert np.array_equal(np.load(again), codes)  # --seed reproduces the song


def test_instrumental_from_the_cli(root, tmp_path):
    out = tmp_path / "inst.npy"
    assert main(["generate", "--model", str(root), "--tags", "ambient", "--lyrics", "", "--duration", "1",
                 "--codes-out", str(out), "--no-decode", "--quiet"]) == 0
    assert np.load(out).shape[0] == 8


def test_reference_audio_conditions_the_song_through_clap(root, tmp_path):
    from heartmula.audio import save_audio

    rate = 16000
    t = np.arange(3 * rate) / rate
    save_audio(tmp_path / "ref.wav", (0.3 * np.sin(2 * np.pi * 330 * t))[None].astype(np.float32), rate)
    args = ["generate", "--model", str(root), "--tags", "pop", "--lyrics", "la la", "--duration", "1", "--seed", "5",
            "--no-decode", "--quiet"]
    assert main([*args, "--codes-out", str(tmp_path / "plain.npy")]) == 0
    assert main([*args, "--codes-out", str(tmp_path / "ref.npy"), "--reference-audio", str(tmp_path / "ref.wav")]) == 0
    assert not np.array_equal(np.load(tmp_path / "plain.npy"), np.load(tmp_path / "ref.npy"))


def test_lyrics_scale_from_the_cli_and_the_model(root, tmp_path):
    args = ["generate", "--model", str(root), "--tags", "pop", "--lyrics", "la la la", "--duration", "2", "--seed", "5",
            "--topk", "1", "--no-decode", "--quiet"]
    songs = {}
    for name, extra in (("plain", []), ("same", ["--lyrics-scale", "1.5"]), ("pushed", ["--lyrics-scale", "9"])):
        assert main([*args, *extra, "--codes-out", str(tmp_path / f"{name}.npy")]) == 0
        songs[name] = np.load(tmp_path / f"{name}.npy")
    assert np.array_equal(songs["same"], songs["plain"])  # equal to --cfg-scale: upstream's single guidance
    assert not np.array_equal(songs["pushed"], songs["plain"])
    model = tmp_path / "model"  # a model whose gen_config asks for the same lyrics guidance by default
    shutil.copytree(root, model)
    config = json.loads((model / "gen_config.json").read_text())
    (model / "gen_config.json").write_text(json.dumps({**config, "lyrics_scale": 9}))
    assert main([*args[:2], str(model), *args[3:], "--codes-out", str(tmp_path / "default.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "default.npy"), songs["pushed"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--no-decode"], "needs --codes-out"),
        (["--topk", "0", "--codes-out", "x.npy", "--no-decode"], "top_k"),
        (["--duration", "-1", "--codes-out", "x.npy", "--no-decode"], "duration"),
        (["--duration", "100000", "--codes-out", "x.npy", "--no-decode"], "context"),
        (["--tags", "jazz:x", "--codes-out", "x.npy", "--no-decode"], "weight"),
        (["--reference-audio", "missing.wav", "--codes-out", "x.npy", "--no-decode"], "missing.wav"),
        (["--min-duration", "-1", "--codes-out", "x.npy", "--no-decode"], "minimum duration"),
        (["--lyrics-scale", "-2", "--codes-out", "x.npy", "--no-decode"], "lyrics_scale"),
    ],
)
def test_bad_input_gives_a_clear_error_and_writes_nothing(root, tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--model", str(root), "--lyrics", "hi", *extra]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_generate_decodes_with_the_codec_beside_the_model(root, tmp_path):
    import soundfile as sf

    from heartmula.codec.pretrained import write_random_codec

    write_random_codec(root / "HeartCodec-oss", "tiny", seed=0)
    out = tmp_path / "song.flac"
    assert main(["generate", "--model", str(root), "--tags", "pop", "--lyrics", "la la", "--duration", "1",
                 "--seed", "2", "--out", str(out), "--quiet"]) == 0
    info = sf.info(str(out))
    assert info.frames > 0 and info.channels in (1, 2)
    assert np.abs(sf.read(str(out))[0]).max() <= 0.98 + 1e-4  # never written above the peak ceiling


def test_missing_codec_fails_before_generating(root, tmp_path, capsys):
    import shutil

    bare = tmp_path / "lm"
    shutil.copytree(root / "HeartMuLa-oss-3B", bare / "HeartMuLa-oss-3B")
    shutil.copy(root / "tokenizer.json", bare)
    assert main(["generate", "--model", str(bare), "--out", str(tmp_path / "x.wav"), "--quiet"]) == 2
    assert "HeartCodec-oss" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()


def test_wrong_model_folder(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path), "--codes-out", str(tmp_path / "c.npy"), "--no-decode"]) == 2
    assert "HeartMuLa-oss-3B" in capsys.readouterr().err
    assert not (tmp_path / "c.npy").exists()
