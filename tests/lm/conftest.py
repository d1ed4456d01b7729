from pathlib import Path

import pytest

from heartmula.lm.pretrained import load_generator, write_random_root
from heartmula.nn import native


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_lm")
    write_random_root(root, "tiny", seed=0)
    return root


@pytest.fixture
def generator(tiny_root):
    return load_generator(tiny_root)


@pytest.fixture
def kernels():
    reason = native.unavailable_reason()
    if reason is not None:
        pytest.skip(f"native kernels not used here: {reason}")
    built = native.kernels()
    assert built is not None, "this CPU can use the native kernels, but they did not build"
    return built
