"""Preference tuning: rewards and judges on synthetic audio, pairs, the DPO loss on a tiny model, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from heartmula.errors import HeartMuLaError
from heartmula.eval.preference import PreferPrompt, fourier_tempo, onset_rate, summarise, tempo_reward

pytest.importorskip("peft")


def _clicks(bpm: float, seconds: float = 8.0, rate: int = 16000) -> np.ndarray:
    audio = np.zeros(int(seconds * rate), dtype=np.float32)
    rng = np.random.default_rng(0)
    for start in np.arange(0, seconds, 60.0 / bpm):
        i = int(start * rate)
        audio[i : i + 400] += rng.standard_normal(len(audio[i : i + 400])).astype(np.float32) * 0.5
    return audio[None]


def test_judges_and_tempo_reward_read_a_click_track():
    assert abs(fourier_tempo(_clicks(120), 16000) - 120) < 4
    assert abs(fourier_tempo(_clicks(72), 16000) - 72) < 4 or abs(fourier_tempo(_clicks(72), 16000) - 144) < 6
    assert abs(onset_rate(_clicks(120), 16000) - 2.0) < 0.3
    assert onset_rate(_clicks(150), 16000) > onset_rate(_clicks(70), 16000)
    assert tempo_reward(130, "fast") == 0.0 and tempo_reward(60, "slow") == 0.0
    assert tempo_reward(57.5, "fast") == pytest.approx(-1.0)
    assert tempo_reward(float("nan"), "slow") == -2.0 and tempo_reward(100, None) is None


def test_summary_win_rates():
    songs = [dict(clap_own=0.3, clap_other=0.1, tempo_tag="fast", tempo_bpm=130, fourier_bpm=128, onset_rate=4,
                  drums=True, flatness=0.3, lyrics=True, voiced_share=0.8),
             dict(clap_own=0.1, clap_other=0.2, tempo_tag="slow", tempo_bpm=70, fourier_bpm=140, onset_rate=1,
                  drums=False, flatness=0.1, lyrics=False, voiced_share=0.0)]
    summary = summarise(songs)
    assert summary["tag_win_rate"] == 0.5 and summary["tempo_win_rate"] == 1.0
    assert summary["judge_fourier_tempo_win_rate"] == 0.0 and summary["judge_onset_rate_win_rate"] == 1.0
    assert summary["drums_win_rate"] == 1.0 and summary["voiced_share_with_lyrics"] == 0.8


def test_pairs_take_the_best_and_the_worst_song_of_a_prompt():
    from heartmula.train.prefer import ScoredSong, preference_pairs

    codes = np.zeros((8, 4), dtype=np.int64)
    rewards = [{"tag": 0.1, "tempo": -1.0}, {"tag": 0.3, "tempo": 0.0}, {"tag": 0.2, "tempo": -0.5},
               {"tag": 0.15, "tempo": -0.8}]
    songs = [ScoredSong(0, i, codes, r) for i, r in enumerate(rewards)]
    songs += [ScoredSong(1, 9, codes, {"tag": 0.5}), ScoredSong(1, 10, codes, {"tag": 0.5})]  # no spread: no pair
    pairs = preference_pairs(songs, {"tag": 1.0, "tempo": 1.0}, min_margin=0.5)
    assert pairs == [(1, 0), (2, 3)]
    songs[3] = ScoredSong(0, 3, codes, dict(rewards[2]))  # a tie of second best and second worst: no pair
    assert preference_pairs(songs, {"tag": 1.0, "tempo": 1.0}, min_margin=0.5) == [(1, 0)]


def _synthetic_round(folder, prompts: int, seed: int):
    from heartmula.train.prefer import ScoredSong, save_round

    rng = np.random.default_rng(seed)
    songs = []
    for p in range(prompts):
        for j in range(2):
            codes = rng.integers(0, 32, size=(8, 12))
            songs.append(ScoredSong(p, j, codes, {"tag": float(1 - j), "tempo": None, "drums": None, "voice": None}))
    save_round(folder, songs)


@pytest.mark.parametrize("lora", [True, False])
def test_dpo_raises_the_chosen_margin_and_resumes(tmp_path, lora):
    from heartmula.lm.pretrained import write_random_root
    from heartmula.train.prefer import PreferConfig, train_prefer

    base = tmp_path / "base"
    write_random_root(base, "tiny", seed=0)
    out = tmp_path / "run"
    prompts = [PreferPrompt("a", "pop,fast"), PreferPrompt("b", "ballad,slow", "[verse]\nla la")]
    for r in range(2):  # rounds written beforehand: the run trains on them without sampling
        _synthetic_round(out / "rounds" / f"{r:03d}", len(prompts), seed=0)
    config = PreferConfig(rounds=1, songs_per_prompt=2, epochs=6, pair_batch=2, learning_rate=3e-3, rank=4,
                          lora=lora, min_margin=0.1)
    assert train_prefer(base, out, config, prompts, progress=False) == {"round": 1, "step": 6}
    log = [json.loads(line) for line in (out / "prefer_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "step" in r]
    assert steps[0]["dpo_loss"] == pytest.approx(np.log(2), abs=1e-3)  # policy == reference at the start
    assert steps[-1]["dpo_loss"] < steps[0]["dpo_loss"] and steps[-1]["margin"] > steps[0]["margin"]
    assert log[0]["pairs"] == 2 and set(log[0]["rewards"]) == {"tag", "tempo", "drums", "voice"}

    with open(out / "prefer_log.jsonl", "a") as log:  # as if stopped in round 2 before it was saved
        log.write(json.dumps({"round": 1, "songs": 4, "pairs": 2}) + "\n" + json.dumps({"step": 7}) + "\n")
    config.rounds = 2
    assert train_prefer(base, out, config, prompts, progress=False) == {"round": 2, "step": 12}
    log = [json.loads(line) for line in (out / "prefer_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "step" in r]
    assert [r["step"] for r in steps] == list(range(1, 13)) and "dpo_loss" in steps[6]
    assert [r["round"] for r in log if "round" in r] == [0, 1]
    assert steps[6]["margin"] > steps[0]["margin"]  # round 2 starts from the tuned model, not the base
    assert (out / ("adapter_model.safetensors" if lora else "policy/HeartMuLa-oss-3B/model.safetensors")).is_file()


def test_bad_preference_settings_are_refused(tmp_path, capsys):
    from heartmula.cli import main
    from heartmula.train.prefer import PreferConfig, train_prefer

    with pytest.raises(HeartMuLaError, match="songs-per-prompt"):
        train_prefer(tmp_path, tmp_path / "out", PreferConfig(songs_per_prompt=1))
    assert main(["train", "dpo", "--out", str(tmp_path / "o"), "--weights", "tag=1,speed=2"]) == 2
    assert "unknown rewards" in capsys.readouterr().err


def test_sequence_logprobs_match_the_training_loss():
    """The DPO log-likelihood is the training objective's: its mean per token equals lm_losses' cross-entropies."""
    from heartmula.lm.config import GenerationConfig, HeartMuLaConfig
    from heartmula.lm.model import HeartMuLa
    from heartmula.text import TextTokenizer, byte_level_tokenizer
    from heartmula.train.lm import SampleBuilder, lm_losses
    from heartmula.train.prefer import ScoredSong, sequence_logprobs, song_samples

    raw = byte_level_tokenizer()
    tokenizer = TextTokenizer(raw, raw.token_to_id("<|begin_of_text|>"), raw.token_to_id("<|end_of_text|>"))

    sizes = dict(num_layers=1, num_heads=2, num_kv_heads=1, embed_dim=16, intermediate_dim=32, max_seq_len=256)
    config = HeartMuLaConfig(text_vocab_size=raw.get_vocab_size(), audio_vocab_size=37, backbone_config=sizes,
                             decoder_config=dict(sizes, max_seq_len=16))
    model = HeartMuLa(config).init_weights(0)
    builder = SampleBuilder(tokenizer, GenerationConfig(audio_eos_id=33), 8, 256)
    codes = np.random.default_rng(0).integers(0, 32, size=(8, 10))
    sample = song_samples(builder, [PreferPrompt("a", "pop")], [ScoredSong(0, 0, codes, {})])[0]
    with torch.no_grad():
        total = float(sequence_logprobs(model, [sample])[0])
        _, parts = lm_losses(model, [sample], 1.0)
    assert total == pytest.approx(-(parts["c0"] * 10 + parts["dec"] * 10 * 7), rel=1e-4)
