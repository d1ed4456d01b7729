"""The shipped HeartCLAP checkpoint loads and, on freshly rendered corpus-like songs (instrumental, a seed the
training corpus did not use), scores the songs' true tags above random tag sets."""

from __future__ import annotations

import random

import numpy as np
import pytest

from heartmula.clap import DEFAULT_MODEL_DIR, known_tags, load_clap, tag_similarity, tags_prompt

pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "model.safetensors").is_file(),
                                reason="no shipped HeartCLAP checkpoint")


@pytest.fixture(scope="module")
def rendered_songs(tmp_path_factory):
    from heartmula.audio import load_audio
    from heartmula.data.corpus import BuildConfig, build_item

    out = tmp_path_factory.mktemp("clap-render")
    config = BuildConfig(out_dir=out, seed=123, sample_rate=24000, items=24, song_seconds=(10.0, 14.0),
                         passes=(1, 1), progress=False)
    songs = []
    for index in (5, 11):  # the instrumental slots: rendering only, no singing (fast)
        row = build_item(config, index)
        audio, rate = load_audio(out / row["audio"])
        songs.append((audio, rate, [t.strip() for t in row["tags"].split(",")]))
    return songs


def test_default_checkpoint_loads():
    model = load_clap()
    assert model.config.embed_dim == 512
    vector = model.embed_text("calm piano")[0]
    assert vector.shape == (512,) and np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_true_tags_score_above_random_tags(rendered_songs):
    model = load_clap()
    rng = random.Random(0)
    vocabulary = known_tags()
    percentiles = []
    for audio, rate, tags in rendered_songs:
        others = [t for t in vocabulary if t not in tags]
        tag_sets = [tags] + [rng.sample(others, len(tags)) for _ in range(30)]
        # what tag_similarity() computes, with the song embedded once and all prompts in one call
        scores = model.embed_text([tags_prompt(t) for t in tag_sets]) @ model.embed_audio(audio, rate)
        assert scores[0] == pytest.approx(tag_similarity(audio, tags, sample_rate=rate, model=model), abs=1e-5)
        percentiles.append(np.mean(scores[0] > scores[1:]))
    # a random model lands near 0.5 on average; the trained one puts the true tags above nearly all random sets
    assert np.mean(percentiles) >= 0.9, percentiles
