from pathlib import Path

import pytest

from heartmula.lm.pretrained import load_generator, write_random_root


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_lm")
    write_random_root(root, "tiny", seed=0)
    return root


@pytest.fixture
def generator(tiny_root):
    return load_generator(tiny_root)
