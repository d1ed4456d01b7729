"""The spectral (iSTFT) waveform codec of the default codec preset, and training on a tiny corpus."""

import json

import numpy as np
import pytest
import torch

from heartmula.codec.config import HeartCodecConfig
from heartmula.codec.model import HeartCodec
from heartmula.codec.pretrained import PRESETS, write_random_codec
from heartmula.errors import HeartMuLaError


def test_default_preset_geometry():
    config = PRESETS["default-24k"]()
    assert config.sample_rate >= 24000 and config.num_quantizers == 8 and config.audio_channels == 1
    assert config.samples_per_code * 12.5 == config.sample_rate
    assert config.decoder_type == "direct" and config.waveform_codec == "istft"


def test_spectral_codec_saves_loads_and_streams_exactly(tmp_path):
    folder = write_random_codec(tmp_path / "codec", preset="tiny-spectral", seed=1)
    data = json.loads((folder / "config.json").read_text())
    assert data["waveform_codec"] == "istft" and data["spectral"]["hop_length"] == 48
    codec = HeartCodec.from_pretrained(folder)
    rate = codec.sample_rate
    t = np.arange(2 * rate) / rate
    codes = codec.encode((0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), rate)
    assert codes.shape == (4, 2 * rate // codec.config.samples_per_code)
    audio, out_rate = codec.decode(codes)
    assert out_rate == rate and audio.shape == (1, codes.shape[1] * codec.config.samples_per_code)
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0
    # streaming in uneven chunks gives the full pass, sample for sample
    stream = codec.stream()
    pieces = [stream.push(codes[:, i: i + 3]) for i in range(0, codes.shape[1], 3)] + [stream.flush()]
    np.testing.assert_allclose(torch.cat(pieces, dim=-1).numpy(), audio, atol=1e-5)


def test_fresh_spectral_encoder_is_not_saturated():
    # Regression: raw log magnitudes (-12 .. +4) once drove the tanh into saturation, so the encoder output the
    # same latent for every input and never learned.
    codec = HeartCodec(PRESETS["tiny-spectral"]()).init_weights(0)
    rate = codec.sample_rate
    t = torch.arange(rate) / rate
    quiet = (0.01 * torch.sin(2 * torch.pi * 200 * t))[None, None]
    loud = (0.5 * torch.sign(torch.sin(2 * torch.pi * 900 * t)))[None, None]
    with torch.no_grad():
        a, b = codec.audio_to_latent(quiet), codec.audio_to_latent(loud)
    assert (a.abs() > 0.99).float().mean() < 0.1 and (b.abs() > 0.99).float().mean() < 0.1
    assert (a - b).abs().mean() > 0.05


def test_spectral_codec_config_errors():
    config = PRESETS["tiny-spectral"]().to_dict()
    with pytest.raises(HeartMuLaError, match="mono"):
        HeartCodecConfig.from_dict({**config, "out_channels": 2 * config["latent_hidden_dim"]})
    with pytest.raises(HeartMuLaError, match="hop"):
        HeartCodecConfig.from_dict({**config, "spectral": {**config["spectral"], "hop_length": 50}})
    with pytest.raises(HeartMuLaError, match="waveform_codec"):
        HeartCodecConfig.from_dict({**config, "waveform_codec": "wavenet"})


def _tiny_corpus(folder, rate=4800):
    from heartmula.audio import save_audio

    rng = np.random.default_rng(0)
    t = np.arange(4 * rate) / rate
    for i, pitch in enumerate((220, 330, 495)):
        tone = 0.3 * np.sin(2 * np.pi * pitch * t) * (1 + 0.5 * np.sin(2 * np.pi * 2 * t))
        save_audio(folder / f"song{i}.wav", (tone + 0.01 * rng.standard_normal(t.shape))[None], rate)
    (folder / "manifest.jsonl").write_text(
        "".join(json.dumps({"audio": f"song{i}.wav", "split": "train" if i < 2 else "test"}) + "\n"
                for i in range(3)))


def test_training_steps_reduce_the_loss_on_a_tiny_corpus(tmp_path):
    from heartmula.train.codec import CodecTrainConfig, train_codec

    _tiny_corpus(tmp_path)
    config = CodecTrainConfig(preset="tiny-spectral", steps=40, batch_size=4, segment_frames=4, learning_rate=3e-3,
                              save_every=40, mel_weight=1.0, wave_weight=0.0, spread_weight=0.0, end_to_end=True,
                              threads=1)
    report = train_codec([tmp_path / "manifest.jsonl"], tmp_path / "out", config, progress=False)
    assert report["files"] == [str(tmp_path / "song0.wav"), str(tmp_path / "song1.wav")]  # test split held out
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    first = np.mean([row["loss"] for row in log[:5]])
    last = np.mean([row["loss"] for row in log[-5:]])
    assert last < 0.8 * first, (first, last)
    assert np.mean([row["token_mel"] for row in log[-5:]]) < np.mean([row["token_mel"] for row in log[:5]])
    # the codes carry the input: different songs get different codes
    codec = HeartCodec.from_pretrained(tmp_path / "out")
    from heartmula.audio import load_audio

    songs = [load_audio(tmp_path / f"song{i}.wav")[0] for i in (0, 2)]
    codes = [codec.encode(song, 4800) for song in songs]
    assert (codes[0] != codes[1]).mean() > 0.1
    # resuming reuses the cached training audio and continues the step count
    assert (tmp_path / "out" / "train_audio.npz").is_file()
    more = train_codec([tmp_path / "manifest.jsonl"], tmp_path / "out", CodecTrainConfig(**{**config.__dict__,
                                                                                            "steps": 42}),
                       progress=False)
    assert more["resumed_from"] == 40 and more["last"]["step"] == 42


def test_source_weights_and_exclusion(tmp_path):
    from heartmula.train.codec import clip_weights, sourced_audio_files

    _tiny_corpus(tmp_path)
    files = sourced_audio_files([tmp_path / "manifest.jsonl", tmp_path / "song2.wav", tmp_path],
                                exclude=("song1",))
    assert [(f.name, s) for f, s in files] == [("song0.wav", 0), ("song2.wav", 1), ("song0.wav", 2),
                                               ("song2.wav", 2)]
    clips = [np.zeros((1, n)) for n in (100, 300, 100)]
    sources = np.array([0, 0, 1])
    np.testing.assert_allclose(clip_weights(clips), [0.2, 0.6, 0.2])
    np.testing.assert_allclose(clip_weights(clips, sources, [0.5, 0.5]), [0.125, 0.375, 0.5])
    with pytest.raises(HeartMuLaError, match="source weights"):
        clip_weights(clips, sources, [1.0])
