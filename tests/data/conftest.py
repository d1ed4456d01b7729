"""One tiny real corpus shared by the data tests: six items (all five languages + an instrumental), rendered with
the real FluidSynth and sung with the real espeak-ng + WORLD, at 24 kHz and one pass per song to stay quick."""

from __future__ import annotations

import pytest

TINY_ITEMS = 6
TINY_SEED = 11


def tiny_config(out_dir, **overrides):
    from heartmula.data.corpus import BuildConfig

    settings = dict(out_dir=out_dir, seed=TINY_SEED, workers=2, sample_rate=24000, items=TINY_ITEMS,
                    song_seconds=(8.0, 12.0), passes=(1, 1), progress=False)
    settings.update(overrides)
    return BuildConfig(**settings)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    from heartmula.cli import main

    out = tmp_path_factory.mktemp("corpus")
    code = main(["data", "build", "--out", str(out), "--items", str(TINY_ITEMS), "--seed", str(TINY_SEED),
                 "--sample-rate", "24000", "--workers", "2", "--short", "--quiet"])
    assert code == 0
    return out
