import math

import numpy as np
import pytest
import torch
from codec_helpers import random_codes

from heartmula.codec.decoding import DecodeOptions, plan_windows
from heartmula.errors import HeartMuLaError


# --- an independent, slow statement of upstream's detokenize maths -------------------------------------------------
def reference_euler(codec, condition, noise, prefix, steps, guidance):
    estimator = codec.flow_matching.estimator
    t_span = torch.linspace(0, 1, steps + 1)
    t, dt = t_span[0], t_span[1] - t_span[0]
    in_context = torch.zeros_like(noise)
    p = 0 if prefix is None else prefix.shape[1]
    if p:
        in_context[:, :p] = prefix
    x = noise.clone()
    for step in range(1, steps + 1):
        if p:
            x[:, :p] = (1 - (1 - 1e-6) * t) * noise[:, :p] + t * in_context[:, :p]
        both = estimator(torch.cat([torch.cat([x, x]), torch.cat([in_context, in_context]),
                                    torch.cat([torch.zeros_like(condition), condition])], 2), t.repeat(2))
        uncond, cond = both[:1], both[1:]
        x = x + dt * (uncond + guidance * (cond - uncond))
        t = t + dt
        if step < steps:
            dt = t_span[step + 1] - t
    if p:
        x[:, :p] = prefix
    return x


def reference_compat(codec, codes, window, steps, guidance, noises):
    total = codes.shape[1]
    hop = window // 93 * 80
    overlap = window - hop
    length = max(total, window)
    if total >= window and (length - 2 * overlap) % hop:
        length = math.ceil((length - overlap) / hop) * hop + overlap
    tiled = codes[:, [i % total for i in range(length)]]  # upstream's doubling amounts to cyclic repetition here
    latents = []
    for k, start in enumerate(range(0, length - hop + 1, hop)):
        condition = codec.condition(tiled[None, :, start:start + window])
        prefix = latents[-1][:, -2 * overlap:] if k else None
        latents.append(reference_euler(codec, condition, noises[k][None], prefix, steps, guidance))
    rate = codec.sample_rate
    window_samples = int(window / 12.5 * rate)
    fade = window_samples - window_samples // 93 * 80
    out = None
    for latent in latents:
        audio = codec.latent_to_audio(latent)[0, :, :window_samples].double()
        if out is None:
            out = audio
            continue
        weight = torch.tensor([i / (fade - 1) for i in range(fade)], dtype=torch.float64)
        mixed = out[:, -fade:] * (1 - weight) + audio[:, :fade] * weight
        out = torch.cat([out[:, :-fade], mixed, audio[:, fade:]], dim=1)
    return out[:, :int(total / 12.5 * rate)].float().numpy()


def window_noise(count, length, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(length, 256, generator=g) for _ in range(count)]


@pytest.mark.parametrize("frames", [20, 100])  # shorter than a window (tiled), and two windows
def test_compat_matches_slow_reference(tiny_codec, frames):
    codes = random_codes(frames, seed=frames)
    noises = window_noise(2, 2 * 93, seed=11)
    with torch.no_grad():
        expected = reference_compat(tiny_codec, codes, 93, 4, 1.25, noises)
    audio, rate = tiny_codec.decode(codes, mode="compat", window_frames=93, steps=4, noise=noises)
    assert audio.shape == (2, frames * 384) == expected.shape
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(audio, expected, atol=2e-5, rtol=0)


def test_compat_seed_consumes_randomness_in_upstream_order(tiny_codec):
    codes = random_codes(100, seed=4)
    g = torch.Generator().manual_seed(9)
    torch.randn(1, 186, 256, generator=g)  # first_latent, unused
    first = torch.randn(1, 186, 256, generator=g)
    torch.randn(1, 186 - 26, 256, generator=g)  # the padding of window 2's prefix, unused
    second = torch.randn(1, 186, 256, generator=g)
    seeded, _ = tiny_codec.decode(codes, mode="compat", window_frames=93, steps=2, seed=9)
    explicit, _ = tiny_codec.decode(codes, mode="compat", window_frames=93, steps=2, noise=[first, second])
    assert (seeded == explicit).all()
    other, _ = tiny_codec.decode(codes, mode="compat", window_frames=93, steps=2, seed=10)
    assert np.abs(other - seeded).max() > 1e-4


def count_estimator_frames(codec, run):
    lengths = []
    handle = codec.flow_matching.estimator.register_forward_hook(lambda m, i, o: lengths.append(i[0].shape[1]))
    try:
        run()
    finally:
        handle.remove()
    return lengths


def test_default_mode_sizes_windows_to_the_content(tiny_codec):
    codes = random_codes(20)
    default = count_estimator_frames(tiny_codec, lambda: tiny_codec.decode(codes, steps=3, seed=0))
    compat = count_estimator_frames(tiny_codec, lambda: tiny_codec.decode(codes, mode="compat", steps=3, seed=0))
    assert default == [40, 40, 40]
    assert compat == [744, 744, 744]
    assert plan_windows(1000, 372, 52) == [(0, 372), (320, 692), (640, 1000)]
    assert plan_windows(372, 372, 52) == [(0, 372)]


def test_default_agrees_with_compat_on_a_long_input(tiny_codec):
    """Same windows (hop 160 of 186) and noise: identical latents, so the audio agrees wherever compat's separate
    per-window decoding has warmed up (past the SQ decoder's ~3 s causal context) and is not cross-fading."""
    codes = random_codes(400, seed=2)
    noises = window_noise(3, 372, seed=5)
    compat, rate = tiny_codec.decode(codes, mode="compat", window_frames=186, steps=3, noise=noises)
    default, _ = tiny_codec.decode(codes, window_frames=186, overlap_frames=26, steps=3,
                                   noise=[noises[0], noises[1], noises[2][:160]])
    assert compat.shape == default.shape == (2, 400 * 384)
    hop = 384  # samples per code frame at 4.8 kHz
    for lo, hi in [(0, 160), (200, 320)]:
        np.testing.assert_allclose(default[:, lo * hop: hi * hop], compat[:, lo * hop: hi * hop], atol=1e-5)
    # ...and they do differ where compat cross-fades two separately decoded windows
    assert np.abs(default[:, 160 * hop: 186 * hop] - compat[:, 160 * hop: 186 * hop]).max() > 1e-4


def test_seed_reproduces_and_explicit_noise_overrides(tiny_codec):
    codes = random_codes(30)
    a, _ = tiny_codec.decode(codes, steps=2, seed=3)
    b, _ = tiny_codec.decode(codes, steps=2, seed=3)
    c, _ = tiny_codec.decode(codes, steps=2, seed=4)
    g = torch.Generator().manual_seed(3)
    d, _ = tiny_codec.decode(codes, steps=2, noise=[torch.randn(1, 60, 256, generator=g)])
    assert (a == b).all() and (a == d).all()
    assert np.abs(a - c).max() > 1e-4


@pytest.mark.parametrize("codec_name", ["tiny_codec", "direct_codec"])
def test_streaming_equals_offline(request, codec_name):
    codec = request.getfixturevalue(codec_name)
    codes = random_codes(57, seed=8)
    stream = codec.stream(chunk_frames=10, overlap_frames=4, steps=3, seed=6)
    pieces = []
    for lo, hi in [(0, 3), (3, 14), (14, 15), (15, 40), (40, 57)]:
        pieces.append(stream.push(codes[:, lo:hi]))
    if codec_name == "tiny_codec":
        assert pieces[0].shape[-1] == 0  # a window needs 14 codes
        assert pieces[1].shape[-1] > 0  # ...and its audio comes as soon as they are there
    pieces.append(stream.flush())
    streamed = torch.cat(pieces, dim=-1).numpy()
    offline, _ = codec.decode(codes, window_frames=14, overlap_frames=4, steps=3, seed=6)
    assert streamed.shape == offline.shape == (2, 57 * 384)
    np.testing.assert_allclose(streamed, offline, atol=1e-5)
    with pytest.raises(HeartMuLaError, match="flushed"):
        stream.push(codes[:, :1])


def test_sq_decoder_streams_exactly(tiny_codec):
    latent = torch.rand(1, 50, 256) * 2 - 1
    with torch.no_grad():
        full = tiny_codec.latent_to_audio(latent)
        cache = {}
        parts = [tiny_codec.latent_to_audio(latent[:, i:i + 7], cache) for i in range(0, 50, 7)]
        parts.append(tiny_codec.flush_audio(cache))
    torch.testing.assert_close(torch.cat(parts, -1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("codes, message", [
    (np.zeros((7, 10), dtype=np.int64), "shape"),
    (np.zeros((8, 0), dtype=np.int64), "empty"),
    (np.full((8, 10), 64), "lie in"),  # 64 is outside the tiny codebooks (like 8192 / EOS officially)
    (np.full((8, 10), -1), "lie in"),
    (np.zeros((8, 10), dtype=np.float32), "integers"),
])
def test_bad_codes_are_rejected(tiny_codec, codes, message):
    with pytest.raises(HeartMuLaError, match=message):
        tiny_codec.decode(codes)


def test_bad_options_are_rejected(tiny_codec):
    for options in [DecodeOptions(mode="fast"), DecodeOptions(steps=0), DecodeOptions(overlap_frames=400)]:
        with pytest.raises(HeartMuLaError):
            tiny_codec.decode(random_codes(5), options)
    with pytest.raises(HeartMuLaError, match="explicit noise"):
        tiny_codec.decode(random_codes(5), noise=[torch.zeros(1, 11, 256)])


def test_bfloat16_decode_is_close_to_float32(tiny_dir, tiny_codec):
    from heartmula.codec import load_codec

    codes = random_codes(10, seed=1)
    half = load_codec(tiny_dir, dtype="bfloat16")
    assert half.dtype == torch.bfloat16
    low, _ = half.decode(codes, steps=2, seed=0)
    full, _ = tiny_codec.decode(codes, steps=2, seed=0)
    assert low.dtype == np.float32 and low.shape == full.shape and np.isfinite(low).all()
    assert np.corrcoef(low.ravel(), full.ravel())[0, 1] > 0.5  # degraded (the 1/9 grid amplifies), not broken
