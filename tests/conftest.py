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


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL cluster with pgvector on 127.0.0.1 for the session (tests/postgres_server.py): the
    superuser's postgresql:// URL. Skips when the 'scale' extra's psycopg/pgvector or the server binaries are absent."""
    pytest.importorskip("psycopg", reason="the 'scale' extra (psycopg) is not installed")
    pytest.importorskip("pgvector", reason="the 'scale' extra (pgvector) is not installed")
    from postgres_server import Cluster, find_bindir

    bindir = find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server with pgvector installed (Debian: postgresql-15 and pgvector built by "
                    "scripts/setup.sh)")
    cluster = Cluster(bindir).start()
    yield cluster.url
    cluster.stop()


@pytest.fixture
def postgres_location(postgres_url, request):
    """A table of its own in the session's cluster for each test."""
    import hashlib
    import re

    name = re.sub(r"[^a-z0-9]", "_", request.node.name.lower())[:30]
    return f"{postgres_url}?table={name}_{hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8]}"
