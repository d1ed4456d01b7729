"""The spectral (iSTFT) waveform codec of the default codec preset, and training on a tiny corpus."""

import json

import numpy as np
import pytest
import torch

from heartmula.codec.config import HeartCodecConfig
from heartmula.codec.model import HeartCodec
from heartmula.codec.pretrained import PRESETS, write_random_codec
from heartmula.codec.spectral import AMPLITUDE_OFFSET
from heartmula.errors import HeartMuLaError


@pytest.mark.parametrize("preset", ["default-24k", "harmonic-24k"])
def test_default_preset_geometry(preset):
    config = PRESETS[preset]()
    assert config.sample_rate >= 24000 and config.num_quantizers == 8 and config.audio_channels == 1
    assert config.samples_per_code * 12.5 == config.sample_rate
    assert config.decoder_type == "direct" and config.waveform_codec == "istft"


@pytest.mark.parametrize("preset", ["tiny-spectral", "tiny-harmonic"])
def test_spectral_codec_saves_loads_and_streams_exactly(tmp_path, preset):
    folder = write_random_codec(tmp_path / "codec", preset=preset, seed=1)
    data = json.loads((folder / "config.json").read_text())
    assert data["waveform_codec"] == "istft" and data["spectral"]["hop_length"] == 48
    assert data["spectral"]["synthesis"] == ("harmonic" if preset == "tiny-harmonic" else "free")
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


def test_harmonic_synthesis_rebuilds_a_steady_tone_at_its_pitch():
    # One semitone oscillator at full amplitude, everything else silent: overlapping frames must add up to a clean
    # unit sine at exactly that note (phase carried from frame to frame), also when decoded in two calls.
    codec = HeartCodec(PRESETS["tiny-harmonic"]()).init_weights(0)
    decoder = codec.scalar_model.decoder
    spectral = codec.config.spectral
    frames = 60
    parameters = torch.full((1, frames, decoder.tones + spectral.noise_bands), -40.0)
    note = 69  # A4, 440 Hz
    parameters[..., note - spectral.lowest_midi] = -AMPLITUDE_OFFSET  # amplitude exp(0) = 1

    def render(first, count):
        spectrum = decoder.harmonic_spectrum(parameters[:, first: first + count], first)
        return torch.fft.irfft(spectrum, n=decoder.n_fft)[0]

    whole, halves = render(0, frames), torch.cat([render(0, 25), render(25, 35)])
    torch.testing.assert_close(whole, halves, atol=1e-5, rtol=0)
    window = torch.hann_window(decoder.n_fft)
    audio = torch.nn.functional.fold((whole * window / decoder.ola_scale).T[None], (1, (frames - 1) * 48 + 192),
                                     (1, 192), stride=(1, 48))[0, 0, 0, 192: frames * 48].numpy()
    assert abs(np.abs(audio).max() - 1) < 0.01 and abs(audio.std() * np.sqrt(2) - 1) < 0.01
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    assert abs(np.fft.rfftfreq(len(audio), 1 / codec.sample_rate)[spectrum.argmax()] - 440) < 4800 / len(audio)


def test_harmonic_encoder_hears_pitch():
    # The analysis filterbank puts a tone's energy in its own semitone: features differ between a C and a C#.
    codec = HeartCodec(PRESETS["tiny-harmonic"]()).init_weights(0)
    encoder, spectral = codec.scalar_model.encoder, codec.config.spectral
    t = torch.arange(4800) / 4800
    for note in (60, 61):
        tone = 0.3 * torch.sin(2 * torch.pi * 440 * 2 ** ((note - 69) / 12) * t)
        energies = encoder.features(tone[None])[0, : spectral.highest_midi - spectral.lowest_midi + 1]
        assert int(energies.mean(dim=1).argmax()) + spectral.lowest_midi == note


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
    with pytest.raises(HeartMuLaError, match="synthesis"):
        HeartCodecConfig.from_dict({**config, "spectral": {**config["spectral"], "synthesis": "fm"}})
    with pytest.raises(HeartMuLaError, match="Nyquist"):  # 4.8 kHz: the top semitone must lie below 2.4 kHz
        HeartCodecConfig.from_dict({**config, "spectral": {**config["spectral"], "synthesis": "harmonic",
                                                           "highest_midi": 100}})


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


@pytest.mark.parametrize("preset", ["tiny-spectral", "tiny-harmonic"])
def test_training_steps_reduce_the_loss_on_a_tiny_corpus(tmp_path, preset):
    from heartmula.train.codec import CodecTrainConfig, train_codec

    _tiny_corpus(tmp_path)
    config = CodecTrainConfig(preset=preset, steps=60, batch_size=4, segment_frames=4, learning_rate=3e-3,
                              save_every=60, mel_weight=1.0, wave_weight=0.0, spread_weight=0.0, end_to_end=True,
                              threads=1, pitch_weight=1.0 if preset == "tiny-harmonic" else 0.0)
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

    songs = [load_audio(tmp_path / f"song{i}.wav")[0] for i in (0, 1)]  # 220 Hz vs 330 Hz
    codes = [codec.encode(song, 4800) for song in songs]
    assert (codes[0] != codes[1]).mean() > 0.1
    # resuming reuses the cached training audio and continues the step count
    assert (tmp_path / "out" / "train_audio.npz").is_file()
    more = train_codec([tmp_path / "manifest.jsonl"], tmp_path / "out", CodecTrainConfig(**{**config.__dict__,
                                                                                            "steps": 62}),
                       progress=False)
    assert more["resumed_from"] == 60 and more["last"]["step"] == 62


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


def test_pitch_loss_needs_a_harmonic_codec(tmp_path):
    from heartmula.train.codec import CodecTrainConfig, train_codec

    _tiny_corpus(tmp_path)
    with pytest.raises(HeartMuLaError, match="harmonic"):
        train_codec([tmp_path / "manifest.jsonl"], tmp_path / "out",
                    CodecTrainConfig(preset="tiny-spectral", steps=1, pitch_weight=1.0), progress=False)


def test_decoder_only_training_keeps_the_codes_and_improves_the_decoder(tmp_path):
    from heartmula.audio import load_audio
    from heartmula.train.codec import CodecTrainConfig, train_codec

    _tiny_corpus(tmp_path)
    config = CodecTrainConfig(preset="tiny-harmonic", steps=10, batch_size=4, segment_frames=4, learning_rate=3e-3,
                              save_every=10, mel_weight=1.0, wave_weight=0.0, spread_weight=0.0, end_to_end=True,
                              threads=1, pitch_weight=1.0)
    train_codec([tmp_path / "manifest.jsonl"], tmp_path / "out", config, progress=False)
    song = load_audio(tmp_path / "song0.wav")[0]
    before = HeartCodec.from_pretrained(tmp_path / "out")
    codes = before.encode(song, 4800)
    decoded_before = before.decode(codes)[0]

    decoder_only = CodecTrainConfig(**{**config.__dict__, "steps": 50, "decoder_only": True})
    train_codec([tmp_path / "manifest.jsonl"], tmp_path / "out", decoder_only, progress=False)
    after = HeartCodec.from_pretrained(tmp_path / "out")
    np.testing.assert_array_equal(after.encode(song, 4800), codes)  # the tokens an LM learned still mean the same
    frozen = ("scalar_model.encoder.", "code_encoder.", "flow_matching.vq_embed.layers.",
              "flow_matching.vq_embed.project_in.")
    old, new = before.state_dict(), after.state_dict()
    for name in old:
        if name.startswith(frozen):
            assert torch.equal(old[name], new[name]), name
    assert not np.allclose(after.decode(codes)[0], decoded_before)  # while the decoding path trained
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert np.mean([r["token_mel"] for r in log[-5:]]) < np.mean([r["token_mel"] for r in log[10:15]])


@pytest.mark.parametrize("lookahead", [0, 2])
def test_direct_decoder_sees_only_its_lookahead(lookahead):
    from heartmula.codec.config import ConvNetConfig
    from heartmula.codec.convnets import DirectDecoder

    decoder = DirectDecoder(8, 4, ConvNetConfig(hidden_dim=16, num_blocks=4, kernel_size=3, lookahead=lookahead))
    condition = torch.randn(1, 40, 8)
    later = condition.clone()
    later[:, 20 + lookahead + 1:] += 1.0  # change everything after the look-ahead of frame 20
    nearer = condition.clone()
    nearer[:, 20 + lookahead] += 1.0  # change the last frame frame 20 may see
    with torch.no_grad():
        out, out_later, out_nearer = decoder(condition), decoder(later), decoder(nearer)
    torch.testing.assert_close(out_later[:, :21], out[:, :21], rtol=0, atol=0)
    assert not torch.allclose(out_nearer[:, 20], out[:, 20])
    assert decoder.right_context == lookahead and decoder.left_context == 2 - lookahead + 2 * (1 + 2 + 4 + 8)
    with pytest.raises(HeartMuLaError, match="lookahead"):
        ConvNetConfig(kernel_size=3, lookahead=3)


@pytest.mark.parametrize("lookahead, lengths", [(0, [1, 2, 2, 5, 1, 26, 0]), (2, [0, 1, 2, 5, 1, 26, 2])])
def test_direct_decoder_streams_from_its_cache_like_one_pass(lookahead, lengths):
    from heartmula.codec.config import ConvNetConfig
    from heartmula.codec.convnets import DirectDecoder

    decoder = DirectDecoder(8, 4, ConvNetConfig(hidden_dim=16, num_blocks=6, kernel_size=3, lookahead=lookahead))
    condition = torch.randn(1, 37, 8)
    cache = {}
    with torch.no_grad():
        pieces = [decoder(piece, cache) for piece in torch.split(condition, [1, 2, 2, 5, 1, 26], dim=1)]
        pieces.append(decoder.end_stream(cache))
        whole = decoder(condition)
    # each piece is out as soon as its look-ahead has arrived; the end supplies the last `lookahead` frames
    assert [p.shape[1] for p in pieces] == lengths
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, rtol=0, atol=1e-5)
    centred = DirectDecoder(8, 4, ConvNetConfig(hidden_dim=16, num_blocks=2, kernel_size=3))
    with pytest.raises(HeartMuLaError, match="look-ahead"):
        centred(condition, {})


def test_training_from_a_codec_with_a_new_decoder_lookahead_keeps_its_codes(tmp_path):
    from heartmula.audio import load_audio
    from heartmula.train.codec import CodecTrainConfig, train_codec

    _tiny_corpus(tmp_path)
    config = CodecTrainConfig(preset="tiny-harmonic", steps=10, batch_size=4, segment_frames=4, learning_rate=3e-3,
                              save_every=10, mel_weight=1.0, wave_weight=0.0, spread_weight=0.0, threads=1)
    train_codec([tmp_path / "manifest.jsonl"], tmp_path / "source", config, progress=False)
    song = load_audio(tmp_path / "song0.wav")[0]
    codes = HeartCodec.from_pretrained(tmp_path / "source").encode(song, 4800)

    streaming = CodecTrainConfig(**{**config.__dict__, "steps": 40, "decoder_only": True, "token_audio_weight": 0.0,
                                    "init_from": str(tmp_path / "source"), "decoder_lookahead": 1})
    train_codec([tmp_path / "manifest.jsonl"], tmp_path / "stream", streaming, progress=False)
    trained = HeartCodec.from_pretrained(tmp_path / "stream")
    assert trained.config.direct_decoder.lookahead == 1 and trained.direct_decoder.right_context == 1
    np.testing.assert_array_equal(trained.encode(song, 4800), codes)
    log = [json.loads(line) for line in (tmp_path / "stream" / "train_log.jsonl").read_text().splitlines()]
    assert np.mean([r["latent_mse"] for r in log[-5:]]) < 0.5 * np.mean([r["latent_mse"] for r in log[:5]])


def _train_tiny_codec(folder, out, steps, **placement):
    from heartmula.train.codec import CodecTrainConfig, train_codec

    config = CodecTrainConfig(preset="tiny-harmonic", steps=steps, batch_size=4, segment_frames=4,
                              learning_rate=3e-3, save_every=2, mel_weight=1.0, wave_weight=0.0, spread_weight=0.0,
                              end_to_end=True, threads=1, pitch_weight=1.0, **placement)
    report = train_codec([folder / "manifest.jsonl"], out, config, progress=False)
    return report, np.array([row["loss"] for row in map(json.loads, (out / "train_log.jsonl").read_text()
                                                          .splitlines())])


def _float32_weights(folder) -> None:
    from safetensors.torch import load_file

    weights = load_file(str(folder / "model.safetensors")).values()
    assert {t.dtype for t in weights if t.is_floating_point()} == {torch.float32}


def test_training_on_the_cpu_in_bfloat16_and_float32(tmp_path):
    _tiny_corpus(tmp_path)
    _, default = _train_tiny_codec(tmp_path, tmp_path / "default", 4)
    _, cpu = _train_tiny_codec(tmp_path, tmp_path / "cpu", 4, device="cpu", precision="float32")
    np.testing.assert_array_equal(cpu, default)
    report, mixed = _train_tiny_codec(tmp_path, tmp_path / "bf16", 4, device="cpu", precision="bfloat16")
    assert report["last"]["step"] == 4 and np.isfinite(mixed).all() and not np.array_equal(mixed, cpu)
    np.testing.assert_allclose(mixed, cpu, rtol=0.05)
    _float32_weights(tmp_path / "bf16")
    report, _ = _train_tiny_codec(tmp_path, tmp_path / "bf16", 6, device="cpu", precision="bfloat16")
    assert report["resumed_from"] == 4
    codec = HeartCodec.from_pretrained(tmp_path / "bf16")
    assert codec.encode(np.zeros((1, 4800), np.float32), 4800).shape[0] == codec.config.num_quantizers


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_cuda_saves_float32_and_resumes_on_the_cpu(tmp_path):
    _tiny_corpus(tmp_path)
    report, losses = _train_tiny_codec(tmp_path, tmp_path / "out", 4, device="cuda")
    assert report["last"]["step"] == 4 and np.isfinite(losses).all()
    _float32_weights(tmp_path / "out")
    report, losses = _train_tiny_codec(tmp_path, tmp_path / "out", 6, device="cpu")
    assert report["resumed_from"] == 4 and np.isfinite(losses).all()
