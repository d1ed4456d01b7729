"""Continuing a song (`continue_from`, `from_seconds`): in the pipeline and the CLI, on tiny models."""

import numpy as np
import pytest
import soundfile as sf

from heartmula import HeartMuLaError, HeartMuLaPipeline
from heartmula.cli import main
from heartmula.codec.config import tiny_config
from heartmula.codec.model import HeartCodec
from heartmula.lm.pretrained import write_random_root

LYRICS = "[verse]\nhello river\n\n[chorus]\nla la la"


@pytest.fixture(scope="module")
def pipe(song_root):
    return HeartMuLaPipeline.from_pretrained(song_root, device="cpu")


@pytest.fixture(scope="module")
def song(pipe):
    return pipe(LYRICS, tags="pop,piano", duration=2.0, min_duration=2.0, seed=5)


@pytest.fixture(scope="module")
def encoder_pipe(tmp_path_factory):
    """A root whose codec has an encoder: the tiny direct codec with the tiny LM's codebook size."""
    path = tmp_path_factory.mktemp("extend_encoder_root")
    write_random_root(path, "tiny", seed=3)
    config = tiny_config("direct", with_encoder=True)
    config.codebook_size = 32
    HeartCodec(config.validate()).init_weights(0).save_pretrained(path / "HeartCodec-oss")
    return HeartMuLaPipeline.from_pretrained(path, device="cpu")


def test_a_continuation_starts_with_the_songs_frames_unchanged(pipe, song):
    longer = pipe.extend(song, duration=1.0, min_duration=1.0, seed=1)
    assert longer.prompt_frames == song.codes.shape[1]
    assert np.array_equal(longer.codes[:, : song.codes.shape[1]], song.codes)
    assert longer.codes.shape[1] > song.codes.shape[1]
    assert longer.lyrics == song.lyrics and longer.tags == song.tags
    hop = pipe.codec.config.samples_per_code
    assert longer.audio.shape[1] == longer.codes.shape[1] * hop
    assert np.array_equal(longer.audio, pipe.decode(longer.codes, seed=1)[0])  # one decode, the join included


def test_from_seconds_keeps_the_start_and_remakes_the_rest(pipe, song):
    varied = pipe(LYRICS, tags="pop,piano", continue_from=song, from_seconds=1.0, duration=1.0, seed=9)
    assert varied.prompt_frames == 12  # whole frames of 80 ms in 1 s
    assert np.array_equal(varied.codes[:, :12], song.codes[:, :12])


def test_the_same_seed_gives_the_same_continuation(pipe, song):
    first = pipe(LYRICS, tags="pop", continue_from=song.codes, from_seconds=1.2, duration=1.0, seed=4)
    again = pipe(LYRICS, tags="pop", continue_from=song.codes, from_seconds=1.2, duration=1.0, seed=4)
    other = pipe(LYRICS, tags="pop", continue_from=song.codes, from_seconds=1.2, duration=1.0, seed=5)
    assert np.array_equal(first.codes, again.codes) and np.array_equal(first.audio, again.audio)
    assert not np.array_equal(first.codes, other.codes)


def test_a_continuation_is_the_same_alone_or_in_a_batch(pipe, song):
    alone = pipe(LYRICS, tags="jazz", continue_from=song, duration=1.0, seed=2)
    batch = pipe([LYRICS, "other words"], tags=["jazz", "rock"], continue_from=song, duration=1.0, seed=[2, 3])
    assert np.array_equal(batch[0].codes, alone.codes)
    assert all(np.array_equal(s.codes[:, : song.codes.shape[1]], song.codes) for s in batch)


def test_greedy_continuation_of_a_greedy_song_repeats_it(pipe):
    """The prompt is laid out exactly as generated frames are fed back: continuing the first frames of a greedy
    song greedily makes the rest of that song."""
    full = pipe(LYRICS, tags="pop", duration=2.0, min_duration=2.0, top_k=1, seed=0)
    continued = pipe(LYRICS, tags="pop", continue_from=full, from_seconds=0.8, duration=2.0 - 0.8,
                     min_duration=2.0 - 0.8, top_k=1, seed=0)
    assert np.array_equal(continued.codes, full.codes)


def test_bad_prompts_fail_clearly(pipe, song, tmp_path):
    with pytest.raises(HeartMuLaError, match=r"shape \[8, frames\]"):
        pipe("", continue_from=np.zeros((3, 4), dtype=np.int64))
    with pytest.raises(HeartMuLaError, match=r"shape \[8, frames\]"):
        pipe("", continue_from=np.zeros((8, 4), dtype=np.float32))
    with pytest.raises(HeartMuLaError, match=r"must lie in \[0, 32\).*found 0\.\.99"):
        pipe("", continue_from=np.full((8, 4), 99).clip(0, 99) * np.arange(2).repeat(16).reshape(8, 4))
    with pytest.raises(HeartMuLaError, match="beyond the end of the song"):
        pipe.extend(song, from_seconds=song.codes.shape[1] / 12.5 + 0.5)
    with pytest.raises(HeartMuLaError, match="from_seconds must be between 0"):
        pipe.extend(song, from_seconds=-1)
    with pytest.raises(HeartMuLaError, match="keeps no frame"):
        pipe.extend(song, from_seconds=0.05)
    with pytest.raises(HeartMuLaError, match="from_seconds needs continue_from"):
        pipe("", from_seconds=1.0)
    with pytest.raises(HeartMuLaError, match="does not exist"):
        pipe.extend(tmp_path / "missing.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(HeartMuLaError, match=r"not a \.npy array"):
        pipe.extend(tmp_path / "junk.npy")


def test_a_prompt_over_the_context_says_how_much_fits(pipe, song):
    context = pipe.generator.model.config.backbone.max_seq_len
    long_prompt = np.tile(song.codes, (1, context // song.codes.shape[1] - 1))
    with pytest.raises(HeartMuLaError, match=r"at most \d+\.\d s of new music fit") as error:
        pipe.extend(long_prompt, duration=30.0)
    fit = float(str(error.value).split("at most ")[1].split(" s")[0])
    assert 0 < fit < 30
    codes = pipe.generate_codes(pipe.requests("", "", 0, prompt=long_prompt), duration=fit)[0]
    assert np.array_equal(codes[:, : long_prompt.shape[1]], long_prompt)


def test_audio_needs_a_codec_with_an_encoder(pipe, song, tmp_path):
    path = song.save(tmp_path / "song.wav")
    with pytest.raises(HeartMuLaError, match="has no encoder"):
        pipe.extend(path)


def test_audio_is_encoded_and_continued(encoder_pipe, tmp_path):
    rate = encoder_pipe.sample_rate
    t = np.arange(int(1.5 * rate)) / rate
    audio = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)[None].repeat(2, 0)
    sf.write(tmp_path / "tone.wav", audio.T, rate)
    expected = encoder_pipe.codec.encode(audio, rate)[:, :18]  # 1.5 s: 18 whole frames
    longer = encoder_pipe.extend(tmp_path / "tone.wav", duration=0.5, seed=0)
    assert longer.prompt_frames == 18 and np.array_equal(longer.codes[:, :18], expected)
    kept = encoder_pipe.extend((audio, rate), from_seconds=1.0, duration=0.5, seed=0)
    assert np.array_equal(kept.codes[:, :12], expected[:, :12])


def test_cli_continues_codes_and_writes_every_frame(song_root, pipe, song, tmp_path):
    np.save(tmp_path / "song.npy", song.codes)
    out, codes_out = tmp_path / "longer.wav", tmp_path / "longer.npy"
    assert main(["generate", "--model", str(song_root), "--continue", str(tmp_path / "song.npy"), "--from-seconds",
                 "1.6", "--lyrics", LYRICS, "--tags", "pop", "--duration", "1", "--seed", "2", "--out", str(out),
                 "--codes-out", str(codes_out), "--quiet"]) == 0
    expected = pipe(LYRICS, tags="pop", continue_from=song.codes, from_seconds=1.6, duration=1.0, seed=2)
    assert np.array_equal(np.load(codes_out), expected.codes)
    assert sf.info(str(out)).frames == expected.audio.shape[1]


def test_cli_errors_leave_no_files(song_root, song, tmp_path, capsys):
    np.save(tmp_path / "song.npy", song.codes)
    outputs = ["--out", str(tmp_path / "longer.wav"), "--codes-out", str(tmp_path / "longer.npy"), "--quiet"]
    assert main(["generate", "--model", str(song_root), "--continue", str(tmp_path / "song.npy"),
                 "--from-seconds", "99", *outputs]) == 2
    assert "beyond the end of the song" in capsys.readouterr().err
    assert main(["generate", "--model", str(song_root), "--from-seconds", "1", *outputs]) == 2
    assert "--from-seconds needs --continue" in capsys.readouterr().err
    assert main(["generate", "--model", str(song_root), "--continue", str(tmp_path / "song.npy"), "--duration", "900",
                 *outputs]) == 2
    assert "of new music fit" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["song.npy"]
