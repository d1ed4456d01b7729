"""The spectral codec's singing-voice branch: synthesis level and pitch, streaming, and its regression trainer."""

import json

import numpy as np
import pytest
import torch

from heartmula.codec.config import HeartCodecConfig, VoiceConfig
from heartmula.codec.model import HeartCodec
from heartmula.codec.pretrained import PRESETS, write_random_codec
from heartmula.codec.spectral import NOISE_FRAMES, harmonic_synthesis_tables
from heartmula.data.singing import load_pyworld
from heartmula.errors import HeartMuLaError
from heartmula.train.codec_voice import LOG_POWER_FLOOR, VoiceTrainConfig, codec_with_voice, train_voice, voice_targets

TINY_VOICE = VoiceConfig(hidden_dim=16, num_blocks=1, frame_blocks=1, kernel_size=3, bands=8, max_harmonics=12)


def _render(decoder, voice: dict) -> np.ndarray:
    """Voice parameters -> audio through the decoder's overlap-add (frame j on samples [j hop, j hop + n_fft))."""
    count = voice["log_f0"].shape[1]
    frames = torch.arange(count) + NOISE_FRAMES // 2
    texture = harmonic_synthesis_tables(decoder.spectral, decoder.sample_rate)["noise"][frames % NOISE_FRAMES]
    harmonic, noise = decoder.voice.frames(voice, None, texture)
    window = torch.hann_window(decoder.n_fft)
    frames = (torch.fft.irfft(noise, n=decoder.n_fft) + harmonic * window) * window / decoder.ola_scale
    audio = torch.nn.functional.fold(frames[0].T[None], (1, (count - 1) * decoder.hop + decoder.n_fft),
                                     (1, decoder.n_fft), stride=(1, decoder.hop))
    return audio[0, 0, 0].numpy()


def _steady_voice(frames: int, f0: float, harmonic: float, noise: float, bands: int) -> dict:
    return {"log_f0": torch.full((1, frames), float(np.log(f0))), "voicing": torch.full((1, frames), 30.0),
            "harmonic": torch.full((1, frames, bands), harmonic), "noise": torch.full((1, frames, bands), noise)}


def test_voice_synthesis_matches_world_in_pitch_and_level():
    # A steady voice with a flat envelope, rendered by the branch and by WORLD's own synthesis from the same
    # parameters: harmonics of the same f0 and the same loudness, for the periodic and the noise part alike.
    world = load_pyworld()
    config = PRESETS["harmonic-24k"]()
    config.spectral.voice = VoiceConfig(max_harmonics=48)
    decoder = HeartCodec(config).scalar_model.decoder
    rate, frames, f0, power = config.sample_rate, 200, 200.0, float(np.exp(-10.0))
    middle = slice(rate // 2, rate * 3 // 2)  # away from the edges of both renderings
    fft = world.get_cheaptrick_fft_size(rate)
    for harmonic, noise, aperiodicity in ((-10.0, -60.0, 1e-6), (-60.0, -10.0, 1.0)):
        ours = _render(decoder, _steady_voice(frames, f0, harmonic, noise, 32))[middle]
        theirs = world.synthesize(np.full(frames, f0 if aperiodicity < 1 else 0.0), np.full((frames, fft // 2 + 1),
                                  power), np.full((frames, fft // 2 + 1), aperiodicity), rate, 10.0)[middle]
        level = 20 * np.log10(np.std(ours) / np.std(theirs))
        assert abs(level) < 1.5, (harmonic, noise, level)
    periodic = _render(decoder, _steady_voice(frames, f0, -10.0, -60.0, 32))[middle]
    spectrum = np.abs(np.fft.rfft(periodic * np.hanning(len(periodic))))
    hz = np.fft.rfftfreq(len(periodic), 1 / rate)
    peaks = hz[np.argsort(spectrum)[-5:]]
    assert np.all(np.abs(peaks / f0 - np.round(peaks / f0)) < 0.02), peaks  # every strong line is a harmonic


def test_voice_targets_follow_the_stem_and_silence():
    rate, hop, n_fft = 24000, 240, 960
    t = np.arange(rate) / rate
    sung = sum(0.2 / k * np.sin(2 * np.pi * 220 * k * t) for k in range(1, 10))
    targets = voice_targets(sung, 90, rate, hop, n_fft, bands=32)
    assert targets["harmonic"].shape == (90, 32) and targets["noise"].shape == (90, 32)
    voiced = targets["f0"][10:80]
    assert (voiced > 0).mean() > 0.9 and abs(np.median(voiced[voiced > 0]) - 220) < 5
    assert targets["harmonic"][10:80].mean() > targets["noise"][10:80].mean()  # a clean tone is periodic
    silent = voice_targets(None, 90, rate, hop, n_fft, bands=32)
    assert (silent["f0"] == 0).all() and (silent["harmonic"] == LOG_POWER_FLOOR).all()


def test_voice_codec_saves_loads_and_streams_exactly(tmp_path):
    folder = write_random_codec(tmp_path / "plain", preset="tiny-harmonic", seed=1)
    codec = codec_with_voice(HeartCodec.from_pretrained(folder), TINY_VOICE, seed=0)
    with torch.no_grad():  # a loud voiced branch, so that its part of the output is far from negligible
        codec.scalar_model.decoder.voice.head.bias[1:] = 3.0
    codec.save_pretrained(tmp_path / "voice")
    data = json.loads((tmp_path / "voice" / "config.json").read_text())
    assert data["spectral"]["voice"]["bands"] == 8
    loaded = HeartCodec.from_pretrained(tmp_path / "voice")
    plain = HeartCodec.from_pretrained(folder)
    rate = loaded.sample_rate
    song = (0.3 * np.sin(2 * np.pi * 330 * np.arange(2 * rate) / rate)).astype(np.float32)
    codes = loaded.encode(song, rate)
    np.testing.assert_array_equal(codes, plain.encode(song, rate))  # the branch leaves the codes alone
    audio, _ = loaded.decode(codes)
    without, _ = plain.decode(codes)
    assert np.std(audio - without) > 0.1 * np.std(without)
    stream = loaded.stream()
    pieces = [stream.push(codes[:, i: i + 3]) for i in range(0, codes.shape[1], 3)] + [stream.flush()]
    # equal up to float32 rounding (chunked convolutions round differently, and exp() scales it up)
    np.testing.assert_allclose(torch.cat(pieces, dim=-1).numpy(), audio, atol=1e-4 * np.abs(audio).max())


def test_voice_needs_harmonic_synthesis():
    config = PRESETS["tiny-spectral"]().to_dict()
    with pytest.raises(HeartMuLaError, match="voice"):
        HeartCodecConfig.from_dict({**config, "spectral": {**config["spectral"], "voice": {"bands": 8}}})
    with pytest.raises(HeartMuLaError, match="unknown voice config"):
        VoiceConfig.from_dict({"bands": 8, "formants": 3})
    with pytest.raises(HeartMuLaError, match="harmonic"):
        codec_with_voice(HeartCodec(PRESETS["tiny-spectral"]()), TINY_VOICE, seed=0)


def _sung_corpus(folder, rate=4800):
    """Three 'songs' at the tiny codec's rate: a buzzy vowel over a low drone (vocal stem kept) and one
    instrumental, as corpus manifest rows."""
    from heartmula.audio import save_audio

    rng = np.random.default_rng(0)
    t = np.arange(6 * rate) / rate
    rows = []
    for i, pitch in enumerate((180, 240, None)):
        drone = 0.1 * np.sin(2 * np.pi * 110 * t)
        vocals = None
        if pitch:
            vocals = sum(0.15 / k * np.sin(2 * np.pi * pitch * k * t * (1 + 0.01 * np.sin(2 * np.pi * 5 * t)))
                         for k in range(1, 8)) * (np.sin(2 * np.pi * 0.5 * t) > -0.3)
            save_audio(folder / f"vocals{i}.wav", vocals[None].astype(np.float32), rate)
        mix = drone + (vocals if vocals is not None else 0) + 0.005 * rng.standard_normal(t.shape)
        save_audio(folder / f"song{i}.wav", mix[None].astype(np.float32), rate)
        rows.append({"id": f"song{i}", "audio": f"song{i}.wav", "vocals": f"vocals{i}.wav" if pitch else None,
                     "lyrics": "", "timing": [], "language": "en", "tags": "pop", "duration": 6.0,
                     "sample_rate": rate, "source": "test", "license": "test",
                     "split": "val" if i == 1 else "train"})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "manifest.jsonl"


def test_voice_training_reduces_the_loss_keeps_the_codes_and_resumes(tmp_path):
    manifest = _sung_corpus(tmp_path)
    source = write_random_codec(tmp_path / "codec", preset="tiny-harmonic", seed=2)
    config = VoiceTrainConfig(steps=80, batch_size=8, segment_frames=16, learning_rate=1e-2, threads=1,
                              eval_every=40, voice=TINY_VOICE)
    report = train_voice(manifest, source, tmp_path / "out", config, progress=False)
    assert report["train_items"] == 2 and report["val_items"] == 1
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert np.mean([r["loss"] for r in log[-5:]]) < 0.6 * np.mean([r["loss"] for r in log[:5]])
    assert log[-1]["val"]["harmonic"] < log[39]["val"]["harmonic"] or log[-1]["val"]["f0"] < log[39]["val"]["f0"]
    trained = HeartCodec.from_pretrained(tmp_path / "out")
    assert trained.config.spectral.voice.bands == TINY_VOICE.bands
    from heartmula.audio import load_audio

    song, rate = load_audio(tmp_path / "song0.wav")
    np.testing.assert_array_equal(trained.encode(song, rate), HeartCodec.from_pretrained(source).encode(song, rate))
    more = train_voice(manifest, source, tmp_path / "out", VoiceTrainConfig(**{**config.__dict__, "steps": 82}),
                       progress=False)
    assert more["resumed_from"] == 80 and more["last"]["step"] == 82


def test_music_losses_of_code_training_leave_the_voice_branch_to_its_targets():
    from heartmula.train.codec_voice import _predict

    codec = codec_with_voice(HeartCodec(PRESETS["tiny-harmonic"]()).init_weights(0), TINY_VOICE, seed=0)
    audio = 0.1 * torch.randn(2, 1, 8 * codec.config.samples_per_code)
    voice, (music, _), _, _ = _predict(codec, audio, VoiceTrainConfig(train_codes=True))
    music.backward(retain_graph=True)
    branch = codec.scalar_model.decoder.voice
    assert all(p.grad is None or not p.grad.any() for p in branch.parameters())
    assert codec.code_encoder.parameters().__next__().grad.abs().sum() > 0
    voice["harmonic"].mean().backward()  # the branch's own loss reaches it, and the codes' encoder
    assert any(p.grad is not None and p.grad.any() for p in branch.parameters())
    assert codec.scalar_model.decoder.render_voice  # muted only while the music losses ran


def test_voice_training_of_the_codes_moves_them_and_reduces_the_voice_loss(tmp_path):
    """--train-codes: the code path learns with the branch (the voice loss falls, the codes change) and a codec
    that already has a branch keeps it."""
    manifest = _sung_corpus(tmp_path)
    source = tmp_path / "with-voice"
    first = VoiceTrainConfig(steps=30, batch_size=8, segment_frames=16, learning_rate=1e-2, threads=1, eval_every=30,
                             voice=TINY_VOICE)
    train_voice(manifest, write_random_codec(tmp_path / "codec", preset="tiny-harmonic", seed=2), source, first,
                progress=False)
    config = VoiceTrainConfig(steps=60, batch_size=4, segment_frames=16, learning_rate=3e-3, threads=1,
                              eval_every=30, train_codes=True, voice_weight=3.0)
    report = train_voice(manifest, source, tmp_path / "joint", config, progress=False)
    log = [json.loads(line) for line in (tmp_path / "joint" / "train_log.jsonl").read_text().splitlines()]
    assert {"token_mel", "codes_used"} <= set(log[0]) and "token_mel" in log[-1]["val"]
    voice_loss = [r["harmonic"] + r["noise"] + r["f0"] + r["voicing"] for r in log]
    assert np.mean(voice_loss[-10:]) < np.mean(voice_loss[:10])
    assert report["train_items"] == 2 and (tmp_path / "joint" / "features-audio" / "song0.npz").is_file()
    before, after = HeartCodec.from_pretrained(source), HeartCodec.from_pretrained(tmp_path / "joint")
    assert after.config.spectral.voice == before.config.spectral.voice  # the source's branch, trained further
    from heartmula.audio import load_audio

    song, rate = load_audio(tmp_path / "song0.wav")
    assert not np.array_equal(after.encode(song, rate), before.encode(song, rate))
    resumed = train_voice(manifest, source, tmp_path / "joint", VoiceTrainConfig(**{**config.__dict__, "steps": 61}),
                          progress=False)
    assert resumed["resumed_from"] == 60
    with pytest.raises(HeartMuLaError, match="with --train-codes"):  # the other mode would mix up the state
        train_voice(manifest, source, tmp_path / "joint", VoiceTrainConfig(**{**config.__dict__, "train_codes": False}),
                    progress=False)


def test_frozen_codes_train_the_voice_branch_alone_and_keep_every_code(tmp_path):
    """--train-codes --freeze-codes: the voice loss falls and the branch changes, but every song encodes to the
    source's codes (an LM trained on them stays valid) and nothing else of the codec moves."""
    from heartmula.audio import load_audio

    manifest = _sung_corpus(tmp_path)
    source = write_random_codec(tmp_path / "codec", preset="tiny-harmonic", seed=2)
    source = codec_with_voice(HeartCodec.from_pretrained(source), TINY_VOICE, seed=0)
    source.save_pretrained(tmp_path / "with-voice")
    config = VoiceTrainConfig(steps=60, batch_size=4, segment_frames=16, learning_rate=3e-3, threads=1,
                              eval_every=30, train_codes=True, freeze_codes=True, voice_weight=3.0)
    train_voice(manifest, tmp_path / "with-voice", tmp_path / "frozen", config, progress=False)
    log = [json.loads(line) for line in (tmp_path / "frozen" / "train_log.jsonl").read_text().splitlines()]
    voice_loss = [r["harmonic"] + r["noise"] + r["f0"] + r["voicing"] for r in log]
    assert np.mean(voice_loss[-10:]) < np.mean(voice_loss[:10])
    assert "codes_used" not in log[-1] and "token_mel" not in log[-1]  # no codebook update, no music loss
    after = HeartCodec.from_pretrained(tmp_path / "frozen")
    for name in ("song0", "song2"):
        song, rate = load_audio(tmp_path / f"{name}.wav")
        np.testing.assert_array_equal(after.encode(song, rate), source.encode(song, rate))
    changed = [n for n, p in after.state_dict().items() if not torch.equal(p, source.state_dict()[n])]
    assert changed and all(n.startswith("scalar_model.decoder.voice.") for n in changed)
    with pytest.raises(HeartMuLaError, match="--freeze-codes"):
        train_voice(manifest, tmp_path / "with-voice", tmp_path / "other",
                    VoiceTrainConfig(freeze_codes=True), progress=False)


def test_voiced_envelope_loss_scores_only_voiced_frames():
    from heartmula.train.codec_voice import VoiceTrainConfig, voice_losses, weighted_voice_loss

    frames, bands = 10, 4
    target = {"f0": torch.tensor([[200.0] * 5 + [0.0] * 5]), "harmonic": torch.full((1, frames, bands), -10.0),
              "noise": torch.full((1, frames, bands), -12.0)}
    predicted = {"log_f0": torch.full((1, frames), float(np.log(200.0))), "voicing": torch.zeros(1, frames),
                 "harmonic": target["harmonic"].clone(), "noise": target["noise"].clone()}
    predicted["harmonic"][:, 5:] += 8.0  # wrong only where nothing is voiced
    losses = voice_losses(predicted, target)
    assert float(losses["harmonic"]) == pytest.approx(0.5 * 8.0 / 4.0)  # half the frames off by 8 nats, 4-nat units
    assert float(losses["harmonic_voiced"]) == 0.0
    predicted["harmonic"][:, :5] += 4.0  # now the voiced frames too
    losses = voice_losses(predicted, target)
    assert float(losses["harmonic_voiced"]) == pytest.approx(1.0)
    plain = weighted_voice_loss(losses, VoiceTrainConfig())
    weighted = weighted_voice_loss(losses, VoiceTrainConfig(voiced_envelope_weight=3.0))
    assert float(weighted - plain) == pytest.approx(3.0 * 1.0)


def _voice_losses(out) -> np.ndarray:
    return np.array([r["loss"] for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())])


@pytest.mark.parametrize("train_codes", [False, True])
def test_voice_training_in_bfloat16_on_the_cpu(tmp_path, train_codes):
    from safetensors.torch import load_file

    manifest = _sung_corpus(tmp_path)
    source = write_random_codec(tmp_path / "codec", preset="tiny-harmonic", seed=2)
    if train_codes:  # the code path trains a codec that has a branch
        train_voice(manifest, source, tmp_path / "with-voice", VoiceTrainConfig(steps=1, batch_size=2,
                    segment_frames=16, threads=1, voice=TINY_VOICE), progress=False)
        source = tmp_path / "with-voice"
    config = VoiceTrainConfig(steps=4, batch_size=4, segment_frames=16, learning_rate=3e-3, threads=1, eval_every=2,
                              voice=TINY_VOICE, train_codes=train_codes, device="cpu")
    train_voice(manifest, source, tmp_path / "fp32", config, progress=False)
    config.precision = "bfloat16"
    report = train_voice(manifest, source, tmp_path / "bf16", config, progress=False)
    full, mixed = _voice_losses(tmp_path / "fp32"), _voice_losses(tmp_path / "bf16")
    assert report["last"]["step"] == 4 and np.isfinite(mixed).all() and not np.array_equal(mixed, full)
    np.testing.assert_allclose(mixed, full, rtol=0.05)
    weights = load_file(str(tmp_path / "bf16" / "model.safetensors")).values()
    assert {t.dtype for t in weights if t.is_floating_point()} == {torch.float32}
    config.steps = 5
    assert train_voice(manifest, source, tmp_path / "bf16", config, progress=False)["resumed_from"] == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_voice_training_on_cuda_resumes_on_the_cpu(tmp_path):
    manifest = _sung_corpus(tmp_path)
    source = write_random_codec(tmp_path / "codec", preset="tiny-harmonic", seed=2)
    config = VoiceTrainConfig(steps=4, batch_size=4, segment_frames=16, threads=1, eval_every=2, voice=TINY_VOICE,
                              device="cuda")
    train_voice(manifest, source, tmp_path / "out", config, progress=False)
    assert np.isfinite(_voice_losses(tmp_path / "out")).all()
    config.steps, config.device = 6, "cpu"
    assert train_voice(manifest, source, tmp_path / "out", config, progress=False)["resumed_from"] == 4
