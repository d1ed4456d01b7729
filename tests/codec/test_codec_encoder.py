import numpy as np
import pytest
import torch

from heartmula.codec.rvq import ResidualVQ
from heartmula.errors import HeartMuLaError


def test_encode_decode_round_trip_shapes(direct_codec):
    rate = 22050  # any rate: resampled to the codec's
    t = np.arange(int(1.3 * rate)) / rate
    mono = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    codes = direct_codec.encode(mono, rate)
    frames = int(np.ceil(1.3 * direct_codec.sample_rate / direct_codec.config.samples_per_code))
    assert codes.shape == (8, frames) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < direct_codec.config.codebook_size
    audio, out_rate = direct_codec.decode(codes)
    assert out_rate == direct_codec.sample_rate
    assert audio.shape == (2, frames * direct_codec.config.samples_per_code)
    assert np.isfinite(audio).all()
    # deterministic: the same audio gives the same codes
    assert (direct_codec.encode(mono, rate) == codes).all()


def test_encode_needs_a_trained_encoder(tiny_codec):
    with pytest.raises(HeartMuLaError, match="no trained encoder"):
        tiny_codec.encode(np.zeros((2, 4800), dtype=np.float32), 4800)
    with pytest.raises(HeartMuLaError, match="empty"):
        tiny_codec.encode(np.zeros((2, 0), dtype=np.float32), 4800)


def test_residual_quantiser_picks_nearest_codes_and_embeds_them():
    torch.manual_seed(0)
    vq = ResidualVQ(dim=16, codebook_size=32, codebook_dim=4, num_quantizers=3)
    for layer in vq.layers:
        layer._codebook.embed.normal_()
    features = torch.randn(2, 5, 16)
    codes, total, residuals = vq.quantize(features)
    residual = vq.project_in(features)
    for i, layer in enumerate(vq.layers):
        brute = torch.cdist(residual.reshape(-1, 4), layer.codebook).argmin(-1).reshape(2, 5)
        assert (codes[..., i] == brute).all()
        residual = residual - layer.codebook[brute]
    torch.testing.assert_close(vq.embed_codes(codes), vq.project_out(total))
    # EMA training moves a used code toward its residuals' mean
    before = vq.layers[0].codebook.clone()
    vq.ema_update(codes, residuals, decay=0.5, dead_threshold=0.0)
    used = codes[..., 0].unique()
    assert not torch.allclose(vq.layers[0].codebook[used], before[used])


def test_trainer_runs_saves_and_resumes(tmp_path):
    from heartmula.audio import save_audio
    from heartmula.codec import load_codec
    from heartmula.train.codec import CodecTrainConfig, train_codec

    rate = 4800
    t = np.arange(3 * rate) / rate
    save_audio(tmp_path / "a.wav", np.stack([np.sin(2 * np.pi * 300 * t), np.sin(2 * np.pi * 450 * t)]) * 0.3, rate)
    config = CodecTrainConfig(preset="tiny-direct", steps=2, batch_size=2, segment_frames=2, save_every=1)
    report = train_codec([tmp_path], tmp_path / "out", config, progress=False)
    assert report["resumed_from"] == 0 and np.isfinite(report["last"]["loss"])
    report = train_codec([tmp_path], tmp_path / "out", CodecTrainConfig(**{**config.__dict__, "steps": 3}),
                         progress=False)
    assert report["resumed_from"] == 2 and report["last"]["step"] == 3
    codec = load_codec(tmp_path / "out")
    assert codec.can_encode and codec.encode(np.zeros((2, 384), np.float32) + 0.1, rate).shape == (8, 1)
    with pytest.raises(HeartMuLaError, match="does not exist"):
        train_codec([tmp_path / "missing.wav"], tmp_path / "out2", config, progress=False)


def test_reseeding_dead_codes_keeps_every_residual_layer_in_use():
    # Regression: re-seeding all layers from the forward pass's residuals (stale once the layer before is re-seeded)
    # left every layer after the first with one code in use.
    torch.manual_seed(0)
    vq = ResidualVQ(dim=16, codebook_size=64, codebook_dim=8, num_quantizers=4)
    for layer in vq.layers:
        layer._codebook.embed.normal_()  # unit-scale codebooks, far from the small features below
        layer._codebook.cluster_size.zero_()  # all dead: the first update seeds every code from the batch
    features = 0.05 * torch.randn(4, 20, 16)
    codes, _, residuals = vq.quantize(features)
    vq.ema_update(codes, residuals, decay=0.99, dead_threshold=0.02, generator=torch.Generator().manual_seed(0))
    codes, _, _ = vq.quantize(features + 0.01 * torch.randn(4, 20, 16))
    assert all(len(codes[..., i].unique()) > 10 for i in range(4)), [len(codes[..., i].unique()) for i in range(4)]


def test_resynced_ema_state_keeps_the_codebooks_until_data_moves_them():
    # A checkpoint whose EMA sums do not give its codebooks (float16 storage, frozen-codebook stages): without the
    # resync, the first update (even one that learns nothing from the batch) replaces the codebooks.
    torch.manual_seed(0)
    vq = ResidualVQ(dim=16, codebook_size=32, codebook_dim=4, num_quantizers=2)
    for layer in vq.layers:
        layer._codebook.embed.normal_()
        layer._codebook.cluster_size.uniform_(0.01, 0.1)
        layer._codebook.embed_avg.normal_()  # unrelated to embed
    books = [layer.codebook.clone() for layer in vq.layers]
    features = torch.randn(2, 10, 16)

    def no_op_update():
        codes, _, residuals = vq.quantize(features)
        vq.ema_update(codes, residuals, decay=1.0, dead_threshold=0.0)  # decay 1: the batch counts for nothing

    no_op_update()
    assert not torch.allclose(vq.layers[0].codebook, books[0])
    for layer, book in zip(vq.layers, books):
        layer._codebook.embed.copy_(book[None])
    vq.resync_ema()
    no_op_update()
    for layer, book in zip(vq.layers, books):
        torch.testing.assert_close(layer.codebook, book)
