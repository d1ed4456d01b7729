"""Real recordings in HeartCLAP: voice-gated language tags, real-music sources, unknown labels, feature-domain mixing
and augmentation, the real-music section of `heartmula eval clap`, and training with real folders (tiny model,
short excerpts made in the test)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from heartmula.clap import HeartCLAP, HeartCLAPConfig, tag_scores
from heartmula.clap.data import Item
from heartmula.clap.real_music import parse_source, source_rows
from heartmula.clap.tagging import VOICE_TAGS, raw_tag_probabilities, tag_probabilities
from heartmula.errors import HeartMuLaError
from heartmula.eval.clap_metrics import expected_calibration_error
from heartmula.train.clap import ClapTrainConfig, tag_targets, train_clap, unknown_pairs, voice_row
from heartmula.train.clap_augment import FLOOR, AugmentConfig, augment_clip, mel_centres, mix_voice


def tone_song(seconds: float, rate: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220.0 * 2 ** (rng.integers(0, 12) / 12) * t) * np.exp(-(t % 1.0))).astype(
        np.float32)


def noise_song(seconds: float, rate: int, seed: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.random.default_rng(seed).standard_normal(t.size) * np.exp(-8 * (t % 0.25))).astype(np.float32)


@pytest.fixture(scope="module")
def real_folders(tmp_path_factory):
    """Two 'packages' of short instrumental excerpts (tones; noise bursts), one with a linked duplicate."""
    from heartmula.audio import save_audio

    root = tmp_path_factory.mktemp("real")
    for name, make in (("calm-pkg", tone_song), ("loud-pkg", noise_song)):
        for i in range(3):
            save_audio(root / name / f"track{i}.ogg", make(3.0, 16000, 100 + i), 16000)
    (root / "calm-pkg" / "en").mkdir()
    (root / "calm-pkg" / "en" / "track0.ogg").symlink_to(root / "calm-pkg" / "track0.ogg")
    return root


def test_language_tags_are_gated_on_the_voice(tiny_clap_dir):
    model = HeartCLAP.from_pretrained(tiny_clap_dir)
    audio = np.stack([model.embed_audio(tone_song(3.0, 16000, s), 16000) for s in range(3)])
    tags = ["english", "chinese", "piano"]
    raw = raw_tag_probabilities(model, audio, tags + list(VOICE_TAGS))
    gated = tag_probabilities(model, audio, tags)
    voice = raw[:, 3:].max(axis=1)
    assert np.allclose(gated[:, :2], raw[:, :2] * voice[:, None], atol=1e-6)
    assert np.allclose(gated[:, 2], raw[:, 2], atol=1e-6)  # other tags keep their score
    assert np.allclose(tag_probabilities(model, audio, tags, gate_languages=False), raw[:, :3], atol=1e-6)
    ranked = dict(tag_scores(tone_song(3.0, 16000, 0), tags, sample_rate=16000, model=model))
    assert ranked["english"] == pytest.approx(float(gated[0, 0]), abs=1e-5)


def test_sources_list_each_file_once_and_vouch_for_vocal_and_language(real_folders):
    source = parse_source(str(real_folders / "calm-pkg"))
    assert source.name == "calm-pkg" and source.tags == ("instrumental",)
    assert source.known_categories() == {"vocal", "language"}
    rows = source_rows(source)
    assert len(rows) == 3 and len({r["id"] for r in rows}) == 3  # the linked copy under en/ is not listed again
    tagged = parse_source(f"{real_folders / 'loud-pkg'}=instrumental,Electronic")
    assert tagged.tags == ("instrumental", "electronic")
    assert tagged.known_categories() == {"vocal", "language", "genre"}
    with pytest.raises(HeartMuLaError, match="not a folder"):
        parse_source(str(real_folders / "missing"))
    with pytest.raises(HeartMuLaError, match="not installed|dpkg-query"):
        parse_source("deb:no-such-package-of-music")
    (real_folders / "empty").mkdir(exist_ok=True)
    with pytest.raises(HeartMuLaError, match="no audio files"):
        source_rows(parse_source(str(real_folders / "empty")))


def _item(tags, known=None):
    return Item("x", frozenset(tags), list(tags), "", np.zeros((1, 1)), np.zeros((1, 1)), known)


def test_unknown_categories_are_neither_positive_nor_negative():
    real = _item({"instrumental"}, frozenset({"vocal", "language"}))
    corpus = _item({"instrumental", "piano", "calm"})
    items = [corpus, real]
    prompts = [frozenset({"instrumental", "piano"}), frozenset({"instrumental"})]
    assert unknown_pairs(prompts, items).tolist() == [[False, True], [False, False]]
    assert unknown_pairs([frozenset({"male vocal", "piano"}), frozenset({"instrumental"})], items)[0, 1].item() is False
    labels, weights = tag_targets(items, ["instrumental", "male vocal", "english", "piano"])
    assert labels.tolist() == [[1, 0, 0, 1], [1, 0, 0, 0]]
    assert weights.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]  # the real clip's "piano" is unknown


def test_vocal_stems_become_voice_items():
    row = {"id": "s1", "vocals": "/c/vocals/s1.flac", "tags": "pop,piano,female vocal,english,c major",
           "lyrics": "la", "split": "train"}
    assert voice_row(row) == {"id": "s1.vocals", "audio": "/c/vocals/s1.flac", "tags": "female vocal,english",
                              "lyrics": "la", "known": ["vocal", "language"], "split": "train"}
    assert voice_row({**row, "vocals": None}) is None


def test_mixing_adds_powers_at_the_chosen_level():
    rng = np.random.default_rng(0)
    backing = (rng.normal(-4.0, 0.5, (8, 50)).astype(np.float32), np.full((12, 50), 1 / 12, np.float32))
    voice_chroma = np.zeros((12, 50), np.float32)
    voice_chroma[0] = 1.0
    voice = (np.full((8, 50), -20.0, np.float32), voice_chroma)
    loud_mel, loud_chroma = mix_voice(backing, voice, 6.0)
    quiet_mel, _ = mix_voice(backing, voice, -20.0)
    assert np.all(loud_mel >= backing[0]) and loud_mel.mean() > quiet_mel.mean() > backing[0].mean()
    assert abs(quiet_mel - backing[0]).max() < 0.1  # a voice 20 dB down barely changes the mix
    assert np.all(loud_chroma[0] > 1 / 12)  # the loud voice's pitch class dominates


def test_augmentation_keeps_shape_floor_and_can_cut_the_top_band():
    config = HeartCLAPConfig.tiny()
    mel = torch.full((config.n_mels, 100), -2.0)
    outs = [augment_clip(mel, random.Random(seed), config, AugmentConfig()) for seed in range(40)]
    assert all(o.shape == mel.shape and torch.isfinite(o).all() and o.min() >= FLOOR for o in outs)
    assert any(not torch.allclose(o, mel) for o in outs)
    top_cut = [o[-1].mean() < o[len(o) // 2].mean() - 5.0 for o in outs]
    assert any(top_cut)  # some clips went through a low-pass
    assert mel_centres(config)[0] > config.f_min and mel_centres(config)[-1] < config.f_max


def test_expected_calibration_error():
    labels = np.array([1, 0, 1, 0] * 25, bool)
    assert expected_calibration_error(np.where(labels, 1.0, 0.0), labels)["ece"] == pytest.approx(0.0)
    assert expected_calibration_error(np.full(100, 0.5), labels)["ece"] == pytest.approx(0.0)
    assert expected_calibration_error(np.full(100, 0.9), labels)["ece"] == pytest.approx(0.4)


def test_eval_clap_real_section(tiny_clap_dir, real_folders, tmp_path, capsys):
    from heartmula.cli import main

    report_path = tmp_path / "real.json"
    code = main(["eval", "clap", "--model", str(tiny_clap_dir), "--quiet", "--json", str(report_path),
                 "--real", f"{real_folders / 'calm-pkg'}=instrumental,classical",
                 "--real", f"{real_folders / 'loud-pkg'}=instrumental,electronic"])
    out = capsys.readouterr().out
    assert code == 0 and "real instrumental tracks (6)" in out
    report = json.loads(report_path.read_text())["real"]
    assert report["tracks"] == 6 and set(report["sources"]) == {"calm-pkg", "loud-pkg"}
    for rates in (report["gated"], report["ungated"]):
        assert 0.0 <= rates["vocal_rate"] <= 1.0 and 0.0 <= rates["language_rate"] <= 1.0
    assert report["gated"]["language_mean"] <= report["ungated"]["language_mean"] + 1e-9
    assert set(report["retrieval"]) == {"classical", "electronic"}
    assert report["retrieval"]["classical"]["relevant"] == 3
    assert main(["eval", "clap", "--model", str(tiny_clap_dir)]) != 0
    assert "--real" in capsys.readouterr().err


def test_training_with_real_folders_mixes_and_logs_real_rates(synthetic_corpus, real_folders, tmp_path):
    from heartmula.audio import save_audio

    # a copy of the synthetic corpus whose training songs have a sung (here: a tone) vocal stem
    rows = [json.loads(line) for line in (synthetic_corpus / "manifest.jsonl").read_text().splitlines()]
    corpus = tmp_path / "corpus"
    for i, row in enumerate(rows):
        if row["id"] != "broken":
            row["audio"] = str(synthetic_corpus / row["audio"])
            save_audio(corpus / "vocals" / f"{row['id']}.flac", tone_song(3.0, 16000, 50 + i), 16000)
            row["vocals"] = f"vocals/{row['id']}.flac"
            row["tags"] += ",female vocal,english"
    (corpus / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r["id"] != "broken"))
    torch.manual_seed(0)
    out = tmp_path / "run"
    config = ClapTrainConfig(preset="tiny", steps=6, batch_size=6, learning_rate=3e-3, warmup_steps=2,
                             eval_every=3, save_every=3, real_sources=(str(real_folders / "calm-pkg"),),
                             eval_real=(str(real_folders / "loud-pkg"),), real_share=0.34, mix_share=0.34,
                             augment=AugmentConfig(rate=0.5))
    report = train_clap([corpus / "manifest.jsonl"], out, config, progress=False)
    assert report["steps"] == 6
    data = json.loads((out / "training_data.json").read_text())
    assert data["real_tracks"] == 3 and data["vocal_stems"] == 8 and data["eval_real_tracks"] == 3
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in log)
    assert "real_vocal_rate" in log[2] and "real_language_rate" in log[-1]
