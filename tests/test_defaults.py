"""The embedded default models that ship inside the package: they load, make a song with no --model, and stay small."""

import json

import numpy as np
import torch

from heartmula.audio import load_audio
from heartmula.cli import main
from heartmula.codec.pretrained import DEFAULT_CODEC_DIR, load_codec
from heartmula.lm.generation import SamplingParams, SongRequest
from heartmula.lm.pretrained import write_random_root
from heartmula.nn import native
from heartmula.nn.quant import Int8Linear
from heartmula.song_models import (
    DEFAULT_LM_DIR,
    default_lm_installed,
    int8_by_default,
    load_lm,
    resolve_codec,
    resolve_lm,
)

LYRICS = "[verse]\nthe morning light is on the hill\n[chorus]\nsing it loud\n"


def test_defaults_are_installed_with_model_cards_and_stay_small():
    assert default_lm_installed()
    assert resolve_codec(None, resolve_lm(None, "3B")) == DEFAULT_CODEC_DIR
    folders = [DEFAULT_LM_DIR, DEFAULT_CODEC_DIR, DEFAULT_LM_DIR.parent / "clap"]
    for folder in folders:
        card = (folder / "MODEL_CARD.md").read_text(encoding="utf-8")
        assert "licen" in card.lower() and "heartmula " in card  # data licenses and the training command
    total = sum(f.stat().st_size for folder in folders for f in folder.iterdir())
    assert total < 80e6, total / 1e6
    config = json.loads((DEFAULT_LM_DIR / "config.json").read_text())
    assert config["audio_num_codebooks"] == load_codec().config.num_quantizers == 8


def test_generate_without_model_makes_audible_unclipped_audio_of_the_asked_length(tmp_path, capsys):
    out = tmp_path / "song.wav"
    codes_out = tmp_path / "song.npy"
    assert main(["generate", "--tags", "pop,piano,happy", "--lyrics", LYRICS, "--duration", "4", "--seed", "1",
                 "--out", str(out), "--codes-out", str(codes_out), "--quiet"]) == 0
    audio, rate = load_audio(out)
    seconds = audio.shape[-1] / rate
    codes = np.load(codes_out)
    assert codes.shape[0] == 8 and seconds == codes.shape[1] / 12.5
    assert 0.5 <= seconds <= 4.0 + 0.08 + 1e-6, seconds  # upstream: the prefill frame + 4 s of frames
    rms = float(np.sqrt(np.mean(audio**2)))
    assert rms > 1e-3, rms  # not silent
    assert np.mean(np.abs(audio) >= 0.999) < 1e-3  # not clipped
    assert np.ptp(audio[:, : rate // 2]) > 0  # sound from the start, not a leading gap


def _music_like(rate: int, pitches: tuple[float, ...], seed: int) -> np.ndarray:
    """Two seconds of tremolo tones over light noise (a bare sine is far from the music the codec was trained on)."""
    t = np.arange(2 * rate) / rate
    tones = sum(0.25 * np.sin(2 * np.pi * f * t) for f in pitches) * (1 + 0.5 * np.sin(2 * np.pi * 2 * t))
    return (tones + 0.05 * np.random.default_rng(seed).standard_normal(t.shape))[None].astype(np.float32)


def test_default_codec_round_trip_keeps_the_spectrum():
    from heartmula.eval.codec_metrics import mel_distance

    codec = load_codec()
    rate = codec.sample_rate

    def distance(a, b):
        n = min(a.shape[-1], b.shape[-1])
        return float(mel_distance(torch.from_numpy(a[None, :, :n]), torch.from_numpy(b[None, :, :n]), rate))

    low, high = _music_like(rate, (220.0, 330.0), 0), _music_like(rate, (880.0, 1320.0), 1)
    low_back, rate_back = codec.decode(codec.encode(low, rate))
    high_back, _ = codec.decode(codec.encode(high, rate))
    assert rate_back == rate
    assert distance(low_back, low) < 0.8  # held-out corpus songs measure 0.40-0.66
    assert distance(low_back, low) < 0.7 * distance(high_back, low)  # the codes carry this input, not any input
    assert 0.1 < low_back.std() / low.std() < 2.0


def _first_code_log_probs(generator) -> torch.Tensor:
    """Log-probabilities of codebook 0 of frame 0 (from the prompt prefill) for each prompt row."""
    session = generator.start([SongRequest(lyrics=LYRICS, tags="pop,piano,happy")], SamplingParams(), 1)
    with torch.inference_mode():
        logits = generator.model.codebook0_head(session._prefill())
    session.close()
    return torch.log_softmax(logits.float(), dim=-1)


def test_the_embedded_lm_runs_int8_on_a_cpu_without_native_kernels_and_other_checkpoints_do_not(tmp_path,
                                                                                                 monkeypatch):
    # With the native decoding kernels float32 is the faster choice; without them int8 is.
    assert int8_by_default(DEFAULT_LM_DIR) == (native.kernels() is None)
    monkeypatch.setattr(native, "_loaded", None)
    monkeypatch.setattr(native, "_tried", True)
    assert int8_by_default(DEFAULT_LM_DIR)
    assert not int8_by_default(DEFAULT_LM_DIR, dtype="bfloat16") and not int8_by_default(DEFAULT_LM_DIR,
                                                                                           device="cuda")
    write_random_root(tmp_path, "tiny", seed=1)
    assert not int8_by_default(tmp_path)  # official checkpoints run as upstream unless asked
    assert load_lm(tmp_path).model.audio_head_int8 is None
    assert isinstance(load_lm(tmp_path, int8=True).model.backbone.layers[0].mlp.fused_gate_up.quantized, Int8Linear)

    quantized, full = load_lm(DEFAULT_LM_DIR), load_lm(DEFAULT_LM_DIR, int8=False)
    assert isinstance(quantized.model.decoder.layers[0].attn.fused_qkv.quantized, Int8Linear)
    assert quantized.model.audio_head_int8 is not None and full.model.audio_head_int8 is None
    reference, other = _first_code_log_probs(full), _first_code_log_probs(quantized)
    kl = (reference.exp() * (reference - other)).sum(-1)
    assert float(kl.max()) < 0.05, kl  # bench/lm_int8.py measures about 0.004 nats per code over whole songs
    assert torch.equal(reference.argmax(-1), other.argmax(-1))
