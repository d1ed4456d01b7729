"""`heartmula stream`: a readable WAV, scripted controls applied reproducibly, state saved, --play fails clearly."""

import importlib.util

import numpy as np
import pytest
import soundfile as sf

from heartmula.cli import main
from heartmula.stream import StreamControls, StreamSession

LYRICS = "[verse]\nhello little star"


def test_stream_cli_writes_a_readable_wav_that_follows_the_control_file(lm_root, codec_dirs, codecs, generator,
                                                                       tmp_path, capsys):
    controls = tmp_path / "controls.txt"
    controls.write_text("0.4 prompts='jazz:0.2|electronic:0.8' temperature=0.7\n", encoding="utf-8")
    out, state = tmp_path / "live.wav", tmp_path / "state.safetensors"
    code = main(["stream", "--model", str(lm_root), "--codec", str(codec_dirs["tiny-direct"]), "--lyrics", LYRICS,
                 "--tags", "jazz:0.7,electronic:0.3", "--topk", "10", "--seed", "5", "--duration", "1.5",
                 "--controls", str(controls), "--out", str(out), "--save-state", str(state), "--quiet"])
    assert code == 0
    assert "1 control changes applied" in capsys.readouterr().err
    audio, rate = sf.read(str(out), dtype="float32", always_2d=True)
    codec = codecs["tiny-direct"]
    assert rate == codec.sample_rate and audio.shape[1] == codec.config.audio_channels
    # the same song through the Python API: the file holds it, to 16-bit rounding
    session = StreamSession(generator, codec, LYRICS, StreamControls("jazz:0.7,electronic:0.3", top_k=10), seed=5,
                            max_seconds=1.5)
    session.schedule(5, prompts="jazz:0.2|electronic:0.8", temperature=0.7)
    expected = np.concatenate([c.audio for c in session], axis=1)
    assert audio.shape[0] == expected.shape[1] > 0
    np.testing.assert_allclose(audio.T, np.clip(expected, -1, 1), atol=1e-4)
    resumed = StreamSession.resume(generator, codec, state)
    assert resumed.finished and resumed.controls_version == 1


def test_stream_cli_errors(lm_root, codec_dirs, tmp_path, capsys):
    base = ["stream", "--model", str(lm_root), "--codec", str(codec_dirs["tiny-direct"]), "--duration", "0.5",
            "--quiet"]
    assert main([*base, "--out", str(tmp_path / "x.mp3")]) == 2
    assert "--out must be a .wav" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "x.wav"), "--temperature", "-2"]) == 2
    assert "temperature must be >= 0" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "x.wav"), "--threads", "0"]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()  # nothing half-written
    if importlib.util.find_spec("sounddevice") is None:
        assert main([*base, "--out", str(tmp_path / "x.wav"), "--play"]) == 2
        assert "--play needs the sounddevice package" in capsys.readouterr().err


@pytest.mark.parametrize("verb", [["stream", "--help"]])
def test_stream_help(verb, capsys):
    with pytest.raises(SystemExit):
        main(verb)
    assert "--controls" in capsys.readouterr().out
