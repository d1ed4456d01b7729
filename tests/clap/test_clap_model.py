"""HeartCLAP model: shapes and norms, save/load round trip, front end, prompts in five languages, tag similarity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from heartmula.clap import HeartCLAP, HeartCLAPConfig, tag_scores, tag_similarity
from heartmula.clap.model import chroma_filterbank
from heartmula.clap.prompts import LANGUAGES, known_tags, tags_prompt, training_prompt, translate_tag
from heartmula.errors import HeartMuLaError


def test_embeddings_are_normalised_and_reload_identically(tiny_clap_dir, tmp_path):
    model = HeartCLAP.from_pretrained(tiny_clap_dir)
    audio = np.random.default_rng(0).standard_normal(16000 * 5).astype(np.float32) * 0.1
    a = model.embed_audio(audio, 16000)
    t = model.embed_text(["slow sad piano", "慢速悲伤的钢琴"])
    assert a.shape == (32,) and t.shape == (2, 32)
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    model.save_pretrained(tmp_path / "copy")
    again = HeartCLAP.from_pretrained(tmp_path / "copy")
    assert np.allclose(again.embed_audio(audio, 16000), a, atol=1e-6)
    # stereo at another rate is mixed and resampled, and very short clips still embed
    stereo = np.stack([audio[:22050], audio[:22050]])
    assert model.embed_audio(stereo, 22050).shape == (32,)
    assert model.embed_audio(audio[:500], 16000).shape == (32,)


def test_wrong_folder_is_a_user_error(tmp_path):
    with pytest.raises(HeartMuLaError, match="not a HeartCLAP folder"):
        HeartCLAP.from_pretrained(tmp_path)


def test_chroma_front_end_finds_the_pitch_class():
    config = HeartCLAPConfig.tiny()
    model = HeartCLAP(config)
    t = np.arange(16000 * 2) / 16000
    a440 = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    _, chroma = model.features(a440, 16000)
    assert int(chroma.mean(dim=-1).argmax()) == 9  # A
    bank = chroma_filterbank(16000, 4096, 65.4, 2093.0)
    assert bank.shape == (12, 2049) and bank[:, :10].sum() == 0  # nothing below C2


def test_prompts_in_five_languages():
    assert set(LANGUAGES) == {"en", "zh", "ja", "ko", "es"}
    tags = ["piano", "sad", "slow", "bb major"]
    texts = {lang: tags_prompt(tags, lang) for lang in LANGUAGES}
    assert texts["en"] == "sad, slow, piano, bb major"  # mood, tempo, instrument, key
    assert "钢琴" in texts["zh"] and "変ロ長調" in texts["ja"]
    assert "피아노" in texts["ko"] and "si bemol mayor" in texts["es"]
    assert translate_tag("unheard-of tag", "zh") == "unheard-of tag"
    # every vocabulary tag has all five translations
    assert all(translate_tag(t, lang) for t in known_tags() for lang in LANGUAGES)


def test_training_prompts_mask_tags_and_state_what_they_say():
    import random

    rng = random.Random(0)
    tags = ["pop", "piano", "happy", "fast", "female vocal"]
    seen = set()
    for _ in range(200):
        prompt, stated = training_prompt(tags, "[verse]\nhello there\n", rng, keep=0.5, lyrics_rate=0.5)
        assert prompt and stated <= set(tags)
        seen.add(len(stated))
    assert {0, 1, 5} <= seen  # lyrics-only prompts, heavy masking, and full tag lists all occur


def test_tag_similarity_and_scores_with_a_given_model(tiny_clap_dir):
    model = HeartCLAP.from_pretrained(tiny_clap_dir)
    audio = np.random.default_rng(1).standard_normal(16000 * 3).astype(np.float32) * 0.1
    s = tag_similarity(audio, "pop,piano:0.7", sample_rate=16000, model=model)
    assert -1.0 <= s <= 1.0
    emb = model.embed_audio(audio, 16000)
    assert s == pytest.approx(float(emb @ model.embed_text(tags_prompt(["pop", "piano"]))[0]), abs=1e-5)
    ranked = tag_scores(audio, ["piano", "drums", "organ"], sample_rate=16000, model=model)
    assert sorted(t for t, _ in ranked) == ["drums", "organ", "piano"]
    assert all(0.0 <= p <= 1.0 for _, p in ranked) and ranked[0][1] >= ranked[-1][1]
    with pytest.raises(HeartMuLaError, match="sample_rate"):
        tag_similarity(audio, "pop", model=model)


def test_multilingual_queries_share_one_space(tiny_clap_dir):
    """The frozen sentence encoder puts translations together; a trained (or random) projection keeps it so."""
    model = HeartCLAP.from_pretrained(tiny_clap_dir)
    same = model.embed_text([tags_prompt(["sad", "slow", "piano"], lang) for lang in LANGUAGES])
    other = model.embed_text([tags_prompt(["energetic", "fast", "electric guitar", "drums"], "en")])
    within = (same @ same.T)[np.triu_indices(5, 1)].mean()
    across = float((same @ other.T).mean())
    assert within > across


def test_batchnorm_statistics_are_saved(tiny_clap_dir):
    state = HeartCLAP.from_pretrained(tiny_clap_dir).state_dict()
    assert any(k.endswith("running_mean") for k in state)
    assert torch.is_tensor(state["logit_scale"])
