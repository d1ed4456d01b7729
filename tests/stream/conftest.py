"""Tiny random-weight LM and codecs for the streaming tests (written by the tests, never downloaded)."""

from dataclasses import replace
from pathlib import Path

import pytest

from heartmula.codec import load_codec
from heartmula.codec.config import tiny_config
from heartmula.codec.model import HeartCodec
from heartmula.lm.pretrained import load_generator, write_random_root


@pytest.fixture(scope="session")
def lm_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stream_lm")
    write_random_root(root, "tiny", seed=0)
    return root


@pytest.fixture(scope="session")
def generator(lm_root):
    return load_generator(lm_root)


@pytest.fixture(scope="session")
def codec_dirs(tmp_path_factory) -> dict[str, Path]:
    # tiny-direct: the fast direct decoder and an encoder (audio prompts), with the tiny LM's 32 codes so that what
    # it encodes is a valid LM prompt; tiny: the official flow-matching decoder.
    # tiny-lookahead: a direct decoder that looks one latent frame ahead (streams with one code frame of delay).
    configs = {"tiny-direct": tiny_config("direct", with_encoder=True), "tiny": tiny_config(),
               "tiny-lookahead": tiny_config("direct", with_encoder=True)}
    configs["tiny-direct"].codebook_size = configs["tiny-lookahead"].codebook_size = 32
    configs["tiny-lookahead"].direct_decoder = replace(configs["tiny-lookahead"].direct_decoder, lookahead=1)
    dirs = {}
    for preset, config in configs.items():
        dirs[preset] = tmp_path_factory.mktemp(preset)
        HeartCodec(config.validate()).init_weights(1).save_pretrained(dirs[preset])
    return dirs


@pytest.fixture(scope="session")
def codecs(codec_dirs):
    return {preset: load_codec(folder) for preset, folder in codec_dirs.items()}
