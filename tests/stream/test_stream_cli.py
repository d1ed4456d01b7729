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


@pytest.fixture(scope="module")
def direct_pipe(lm_root, codec_dirs):
    from heartmula.pipeline import HeartMuLaPipeline

    return HeartMuLaPipeline.from_pretrained(lm_root, codec=str(codec_dirs["tiny-direct"]), device="cpu")


def test_stream_continue_plays_the_kept_frames_then_what_generate_continue_makes(lm_root, codec_dirs, codecs,
                                                                               direct_pipe, tmp_path):
    song = direct_pipe(LYRICS, tags="pop", duration=2.0, min_duration=2.0, seed=3)
    np.save(tmp_path / "song.npy", song.codes)
    common = ["--model", str(lm_root), "--codec", str(codec_dirs["tiny-direct"]), "--lyrics", LYRICS, "--tags",
              "pop", "--seed", "2", "--duration", "1", "--continue", str(tmp_path / "song.npy"), "--from-seconds",
              "1.2", "--quiet"]
    assert main(["generate", *common, "--out", str(tmp_path / "song2.wav"), "--codes-out",
                 str(tmp_path / "song2.npy")]) == 0
    expected = np.load(tmp_path / "song2.npy")
    kept = 15  # 1.2 s of 80 ms frames
    assert np.array_equal(expected[:, :kept], song.codes[:, :kept]) and expected.shape[1] > kept
    assert main(["stream", *common, "--out", str(tmp_path / "live.wav")]) == 0
    audio, rate = sf.read(str(tmp_path / "live.wav"), dtype="float32", always_2d=True)
    decoded, decoded_rate = codecs["tiny-direct"].decode(expected)  # the whole song, join included, in one pass
    assert rate == decoded_rate and audio.shape[0] == decoded.shape[1]
    np.testing.assert_allclose(audio.T, np.clip(decoded, -1, 1), atol=1e-4)

    # The Python API: the played prompt's frames come first (controls version 0), then the generated ones.
    session = direct_pipe.stream(LYRICS, "pop", duration=1.0, seed=2, continue_from=song.codes, from_seconds=1.2)
    head = [session.next_chunk() for _ in range(2)]
    assert head[0].first_frame == 0 and 0 < head[0].frames <= kept and set(head[0].frame_versions) == {0}
    resumed = StreamSession.resume(direct_pipe.generator, direct_pipe.codec, session.save_state())
    chunks = head + list(resumed)
    assert [c.first_frame for c in chunks] == list(np.cumsum([0] + [c.frames for c in chunks[:-1]]))
    assert sum(c.frames for c in chunks) == expected.shape[1]
    np.testing.assert_array_equal(resumed.codes(), expected[:, kept:])
    np.testing.assert_allclose(np.concatenate([c.audio for c in chunks], axis=1), decoded, atol=1e-5)


def test_stream_continue_errors_match_generate(lm_root, codec_dirs, direct_pipe, tmp_path, capsys):
    song = direct_pipe(LYRICS, tags="pop", duration=1.0, min_duration=1.0, seed=3)
    np.save(tmp_path / "song.npy", song.codes)
    np.save(tmp_path / "bad.npy", np.zeros((3, 4), dtype=np.int64))
    out = tmp_path / "live.wav"
    base = ["stream", "--model", str(lm_root), "--codec", str(codec_dirs["tiny-direct"]), "--out", str(out),
            "--quiet"]
    for extra, message in [
        (["--from-seconds", "1"], "--from-seconds needs --continue"),
        (["--continue", str(tmp_path / "song.npy"), "--from-seconds", "99"], "beyond the end of the song"),
        (["--continue", str(tmp_path / "bad.npy")], r"shape [8, frames]"),
        (["--continue", str(tmp_path / "missing.npy")], "does not exist"),
        (["--continue", str(tmp_path / "song.npy"), "--duration", "900"], "of new music fit"),
        (["--continue", str(tmp_path / "song.npy"), "--prompt-audio", str(tmp_path / "x.wav")], "without --prompt"),
    ]:
        assert main([*base, *extra]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()
