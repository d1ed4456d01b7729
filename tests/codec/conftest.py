"""Tiny official-format codec checkpoints, written by the tests themselves (never downloaded)."""

import pytest
from codec_helpers import write_official

from heartmula.codec.config import tiny_config
from heartmula.codec.model import HeartCodec


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("codec") / "HeartCodec-oss"
    write_official(folder, tiny_config(), seed=3)
    return folder


@pytest.fixture(scope="session")
def tiny_codec(tiny_dir):
    return HeartCodec.from_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def direct_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("codec-direct")
    write_official(folder, tiny_config("direct", with_encoder=True), seed=5)
    return folder


@pytest.fixture(scope="session")
def direct_codec(direct_dir):
    return HeartCodec.from_pretrained(direct_dir)
