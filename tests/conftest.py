import pytest
import torch

from heartmula.codec.pretrained import write_random_codec
from heartmula.lm.pretrained import write_random_root

# Two cores, as on the target machines; also keeps test timings stable under parallel agents.
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def song_root(tmp_path_factory):
    """A random tiny official-layout root with its codec (HeartCodec-oss): read-only for the tests that share it."""
    path = tmp_path_factory.mktemp("song_root")
    write_random_root(path, "tiny", seed=3)
    write_random_codec(path / "HeartCodec-oss", "tiny", seed=0)
    return path
