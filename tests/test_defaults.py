"""The embedded default models that ship inside the package: they load, make a song with no --model, and stay small."""

import json

import numpy as np
import torch

from heartmula.audio import load_audio
from heartmula.cli import main
from heartmula.codec.pretrained import DEFAULT_CODEC_DIR, load_codec
from heartmula.song_models import DEFAULT_LM_DIR, default_lm_installed, resolve_codec, resolve_lm

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
    assert 0.5 <= seconds <= 4.0 + 1e-6, seconds
    rms = float(np.sqrt(np.mean(audio**2)))
    assert rms > 1e-3, rms  # not silent
    assert np.mean(np.abs(audio) >= 0.999) < 1e-3  # not clipped
    assert np.ptp(audio[:, : rate // 2]) > 0  # sound from the start, not a leading gap


def test_default_codec_round_trip_keeps_the_spectrum():
    from heartmula.eval.codec_metrics import mel_distance

    codec = load_codec()
    rate = codec.sample_rate
    t = np.arange(2 * rate) / rate
    tone = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 330 * t))[None].astype(np.float32)
    decoded, decoded_rate = codec.decode(codec.encode(tone, rate))
    assert decoded_rate == rate
    n = min(decoded.shape[-1], tone.shape[-1])
    close = float(mel_distance(torch.from_numpy(decoded[None, :, :n]), torch.from_numpy(tone[None, :, :n]), rate))
    silence = float(mel_distance(torch.zeros(1, 1, n) + 1e-4, torch.from_numpy(tone[None, :, :n]), rate))
    assert close < 0.5 * silence, (close, silence)
