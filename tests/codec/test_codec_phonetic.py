"""Phonetic features in the codec's encoder (codec/phonetic.py): fusion, Whisper features, distillation, training."""

import json

import numpy as np
import pytest
import torch
from test_codec_voice import TINY_VOICE, _sung_corpus

from heartmula.codec.config import HeartCodecConfig, PhoneticConfig
from heartmula.codec.model import HeartCodec
from heartmula.codec.phonetic import (
    WHISPER_RATE,
    WhisperFeatures,
    code_rate,
    distillation_loss,
    phonetic_features,
    to_latent_rate,
)
from heartmula.codec.pretrained import PRESETS, codec_with_phonetic, write_random_codec
from heartmula.errors import HeartMuLaError
from heartmula.train.codec_voice import VoiceTrainConfig, codebook0_distillation, codec_with_voice, train_voice


def _tiny_whisper(folder):
    """A random Whisper of width 8 in the transformers layout (what `whisper_folder` returns for a name)."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    config = WhisperConfig(vocab_size=64, num_mel_bins=80, d_model=8, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=1, decoder_attention_heads=1, encoder_ffn_dim=16,
                           decoder_ffn_dim=16, max_source_positions=1500, max_target_positions=32,
                           pad_token_id=0, bos_token_id=0, eos_token_id=0, decoder_start_token_id=1)
    torch.manual_seed(0)
    WhisperForConditionalGeneration(config).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder


def test_rate_conversions_average_pairs_of_frames():
    features = torch.arange(10.0)[:, None].repeat(1, 3)  # 10 Whisper frames (50 Hz) of width 3
    latent = to_latent_rate(features, 6)  # 6 latent frames need 12: the last frame repeats
    assert latent.shape == (3, 6)
    np.testing.assert_allclose(latent[0].numpy(), [0.5, 2.5, 4.5, 6.5, 8.5, 9.0])
    codes = code_rate(latent[None])  # [1, 3 code frames, 3]
    np.testing.assert_allclose(codes[0, :, 0].numpy(), [1.5, 5.5, 8.75])
    assert code_rate(latent[None, :, :5]).shape == (1, 3, 3)  # an odd length is padded as the code encoder pads


def test_phonetic_features_change_the_latent_and_a_fresh_extension_changes_nothing():
    base = codec_with_voice(HeartCodec(PRESETS["tiny-harmonic"]()).init_weights(1), TINY_VOICE, seed=0)
    extended = codec_with_phonetic(base, PhoneticConfig(model="unused", feature_dim=8))
    audio = 0.1 * torch.randn(1, 1, 8 * base.config.samples_per_code)
    phonetic = torch.randn(1, 8, 16)
    with torch.no_grad():
        np.testing.assert_array_equal(extended.latent_to_codes(extended.audio_to_latent(audio, phonetic)).numpy(),
                                      base.latent_to_codes(base.audio_to_latent(audio)).numpy())
        extended.scalar_model.encoder.phonetic_in.weight.normal_()
        assert not torch.allclose(extended.audio_to_latent(audio, phonetic), base.audio_to_latent(audio))
    assert codec_with_phonetic(extended) is extended


def test_phonetic_codec_saves_loads_and_keeps_official_configs_free_of_it(tmp_path):
    folder = write_random_codec(tmp_path / "codec", preset="tiny-phonetic")
    saved = json.loads((folder / "config.json").read_text())
    assert saved["phonetic"] == {"model": "base", "feature_dim": 8}
    loaded = HeartCodec.from_pretrained(folder)
    assert loaded.config.phonetic == PhoneticConfig(feature_dim=8)
    assert "phonetic" not in HeartCodecConfig().to_dict()
    with pytest.raises(HeartMuLaError, match="unknown phonetic"):
        PhoneticConfig.from_dict({"model": "base", "layer": 3})
    with pytest.raises(HeartMuLaError, match="istft"):
        HeartCodecConfig(phonetic=PhoneticConfig()).validate()
    with pytest.raises(HeartMuLaError, match="phonetic features"):
        loaded.scalar_model.encode(torch.zeros(1, 1, loaded.config.samples_per_code))


def test_whisper_features_run_at_50_hz_over_30_s_windows_and_feed_encode(tmp_path):
    whisper = WhisperFeatures(_tiny_whisper(tmp_path / "whisper"))
    assert whisper.feature_dim == 8
    long = np.random.default_rng(0).standard_normal(31 * WHISPER_RATE).astype(np.float32) * 0.1
    features = whisper(long)
    assert features.shape == (31 * 50, 8)
    assert whisper(long[: 2 * WHISPER_RATE + 100]).shape == (101, 8)  # a started frame counts
    audio = torch.from_numpy(long[None, None, : 2 * WHISPER_RATE])
    assert phonetic_features(whisper, audio, WHISPER_RATE, 640).shape == (1, 8, 50)  # 640 samples per 40 ms

    codec = HeartCodec(PRESETS["tiny-phonetic"]()).init_weights(0)
    codec.config.phonetic = PhoneticConfig(model=str(tmp_path / "whisper"), feature_dim=8)
    codes = codec.encode(long[: 2 * WHISPER_RATE], WHISPER_RATE)
    assert codes.shape == (4, 25)


def test_distillation_loss_scores_direction_and_trains_the_encoder():
    target = torch.randn(2, 5, 8)
    assert float(distillation_loss(3 * target, target)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(-target, target)) == pytest.approx(2.0, abs=1e-5)
    codec = HeartCodec(PRESETS["tiny-phonetic"]()).init_weights(0)
    audio = 0.1 * torch.randn(2, 1, 8 * codec.config.samples_per_code)
    phonetic = torch.randn(2, 8, 16)
    features = codec.code_encoder(codec.audio_to_latent(audio, phonetic))
    codes, _, residuals = codec.flow_matching.vq_embed.quantize(features)
    loss = codebook0_distillation(codec, codes, residuals, phonetic)
    loss.backward()
    assert 0 < float(loss.detach()) < 2
    assert codec.phonetic_head.weight.grad.abs().sum() > 0
    assert codec.scalar_model.encoder.phonetic_in.weight.grad.abs().sum() > 0  # straight through codebook 0


def test_phonetic_training_caches_features_distils_and_resumes(tmp_path):
    manifest = _sung_corpus(tmp_path)
    whisper = _tiny_whisper(tmp_path / "whisper")
    source = tmp_path / "with-voice"
    train_voice(manifest, write_random_codec(tmp_path / "codec", preset="tiny-harmonic", seed=2), source,
                VoiceTrainConfig(steps=2, batch_size=2, segment_frames=16, threads=1, voice=TINY_VOICE),
                progress=False)
    from heartmula.audio import save_audio

    (tmp_path / "extra").mkdir()
    for name in ("tune", "held out"):  # instrumental recordings beside the corpus; one of them held out
        tone = 0.2 * np.sin(2 * np.pi * 220 * np.arange(3 * 4800) / 4800)
        save_audio(tmp_path / "extra" / f"{name}.wav", tone[None].astype(np.float32), 4800)
    config = VoiceTrainConfig(steps=40, batch_size=4, segment_frames=16, learning_rate=3e-3, threads=1,
                              eval_every=20, train_codes=True, phonetic=True, phonetic_model=str(whisper),
                              distill_weight=3.0, stem_fraction=0.5, extra_audio=(str(tmp_path / "extra"),),
                              extra_exclude=("held",), extra_share=0.3)
    report = train_voice(manifest, source, tmp_path / "phonetic", config, progress=False)
    cached = np.load(tmp_path / "phonetic" / "features-phonetic" / "song0.npz")
    assert cached["phonetic"].shape == (len(cached["mix"]) // 192, 8)  # one row per 40 ms latent frame
    assert cached["phonetic_vocals"].shape == cached["phonetic"].shape and len(cached["vocals"]) == len(cached["mix"])
    assert "vocals" not in np.load(tmp_path / "phonetic" / "features-phonetic" / "song2.npz")  # the instrumental
    extras = sorted(p.name for p in (tmp_path / "phonetic" / "features-phonetic").glob("extra-*"))
    assert extras == ["extra-tune.npz"]
    log = [json.loads(line) for line in (tmp_path / "phonetic" / "train_log.jsonl").read_text().splitlines()]
    assert "distill" in log[-1]["val"] and report["train_items"] == 3  # two songs and the extra recording
    assert np.mean([r["distill"] for r in log[-5:]]) < np.mean([r["distill"] for r in log[:5]])
    trained = HeartCodec.from_pretrained(tmp_path / "phonetic")
    assert trained.config.phonetic == PhoneticConfig(model=str(whisper), feature_dim=8)
    assert trained.scalar_model.encoder.phonetic_in.weight.abs().sum() > 0
    resumed = train_voice(manifest, source, tmp_path / "phonetic", VoiceTrainConfig(**{**config.__dict__,
                                                                                         "steps": 41}),
                          progress=False)
    assert resumed["resumed_from"] == 40 and resumed["last"]["step"] == 41
    with pytest.raises(HeartMuLaError, match="with --phonetic"):
        train_voice(manifest, source, tmp_path / "phonetic", VoiceTrainConfig(**{**config.__dict__,
                                                                                   "phonetic": False}),
                    progress=False)
    with pytest.raises(HeartMuLaError, match="--train-codes"):
        train_voice(manifest, source, tmp_path / "other", VoiceTrainConfig(phonetic=True), progress=False)


def test_phonetic_codec_decodes_and_streams_as_its_source_does():
    base = codec_with_voice(HeartCodec(PRESETS["tiny-harmonic"]()).init_weights(1), TINY_VOICE, seed=0)
    extended = codec_with_phonetic(base, PhoneticConfig(model="unused", feature_dim=8))
    with torch.no_grad():
        extended.scalar_model.encoder.phonetic_in.weight.normal_()  # the encoder differs, the decoder does not
    codes = torch.randint(0, base.config.codebook_size, (base.config.num_quantizers, 12))
    audio, _ = extended.decode(codes)
    np.testing.assert_array_equal(audio, base.decode(codes)[0])
    stream = extended.stream()
    pieces = [stream.push(codes[:, i: i + 5]) for i in range(0, codes.shape[1], 5)] + [stream.flush()]
    np.testing.assert_allclose(torch.cat(pieces, dim=-1).numpy(), audio, atol=1e-4 * np.abs(audio).max() + 1e-7)
