import json

import numpy as np
import pytest
import soundfile as sf

from heartmula.audio import save_audio
from heartmula.cli import main


@pytest.fixture()
def song(tmp_path):
    rate = 22050  # not the codec's rate: the CLI resamples
    t = np.arange(int(0.9 * rate)) / rate
    path = tmp_path / "song.wav"
    save_audio(path, (0.3 * np.sin(2 * np.pi * 330 * t))[None], rate)
    return path


def test_encode_then_decode_from_the_cli(tmp_path, direct_dir, song, capsys):
    codes_path = tmp_path / "codes.npy"
    assert main(["encode", str(song), "--codes-out", str(codes_path), "--model", str(direct_dir), "--quiet"]) == 0
    codes = np.load(codes_path)
    assert codes.shape == (8, 12)  # 0.9 s at 12.5 Hz, rounded up
    for suffix in (".wav", ".flac", ".mp3"):
        out = tmp_path / f"back{suffix}"
        assert main(["decode", str(codes_path), "--out", str(out), "--model", str(direct_dir), "--quiet"]) == 0
        audio, rate = sf.read(str(out), always_2d=True)
        assert rate == (48000 if suffix == ".mp3" else 4800) and audio.shape[1] == 2  # mp3 has no 4.8 kHz
        if suffix != ".mp3":  # mp3 adds encoder padding
            assert audio.shape[0] == 12 * 384
    capsys.readouterr()
    assert main(["decode", str(codes_path), "--out", str(tmp_path / "m.wav"), "--model", str(direct_dir), "--quiet",
                 "--reference", str(song)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(report) == {"mrstft", "mel_distance", "si_sdr_db", "loudness_diff_lu"}


def test_generative_decode_modes_from_the_cli(tmp_path, tiny_dir):
    codes = np.random.default_rng(0).integers(0, 64, (8, 6))
    np.save(tmp_path / "c.npy", codes)
    outs = []
    for mode in ("default", "compat"):
        out = tmp_path / f"{mode}.wav"
        assert main(["decode", str(tmp_path / "c.npy"), "--out", str(out), "--model", str(tiny_dir.parent),
                     "--mode", mode, "--steps", "2", "--seed", "1", "--quiet"]) == 0
        outs.append(sf.read(str(out))[0])
    assert outs[0].shape == outs[1].shape == (6 * 384, 2)


@pytest.mark.parametrize("content, message", [
    (b"this is not audio", "cannot read"),
    (None, "no samples"),
    ("silence", "silence"),
])
def test_bad_audio_gives_clear_errors(tmp_path, direct_dir, capsys, content, message):
    path = tmp_path / "bad.wav"
    if content is None:
        sf.write(str(path), np.zeros((0, 2)), 48000)
    elif content == "silence":
        sf.write(str(path), np.zeros((4800, 2)), 48000)
    else:
        path.write_bytes(content)
    assert main(["encode", str(path), "--codes-out", str(tmp_path / "c.npy"), "--model", str(direct_dir)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "c.npy").exists()


def test_bad_codes_and_models_give_clear_errors(tmp_path, tiny_dir, direct_dir, song, capsys):
    np.save(tmp_path / "eos.npy", np.full((8, 4), 64))
    out = str(tmp_path / "x.wav")
    assert main(["decode", str(tmp_path / "eos.npy"), "--model", str(direct_dir), "--out", out]) == 2
    assert "lie in" in capsys.readouterr().err
    assert main(["decode", str(tmp_path / "none.npy"), "--model", str(direct_dir)]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "text.npy").write_text("nope")
    assert main(["decode", str(tmp_path / "text.npy"), "--model", str(direct_dir)]) == 2
    assert "not a .npy" in capsys.readouterr().err
    assert main(["encode", str(song), "--codes-out", str(tmp_path / "c.npy"), "--model", str(tiny_dir)]) == 2
    assert "no trained encoder" in capsys.readouterr().err
    assert main(["decode", str(tmp_path / "eos.npy"), "--model", str(tmp_path)]) == 2
    assert "HeartCodec-oss" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()
