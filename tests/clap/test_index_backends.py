"""Each database backend of the library index gives the folder index's results: the same top-10 as its exact scan
(with exclusions), and the CLI verbs add, search, similar, remove, list and export (folder -> database) without
embedding again."""

from __future__ import annotations

import json

import numpy as np
import pytest

from heartmula.clap.index import ClapIndex, Track, open_index
from heartmula.cli import main

BACKENDS = ["qdrant", "postgres"]


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().out


def _locations(backend: str, tmp_path, request) -> tuple[str, str]:
    """The backend's index location for the test and a second one to export to."""
    if backend == "qdrant":
        pytest.importorskip("qdrant_client", reason="the 'scale' extra (qdrant-client) is not installed")
        return f"qdrant-local:{tmp_path / 'q'}", f"qdrant-local:{tmp_path / 'exported'}"
    location = request.getfixturevalue("postgres_location")  # skips without a PostgreSQL server with pgvector
    return location, location.replace("?table=", "?table=exported_")


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_top_10_as_the_folder_scan(backend, tmp_path, request):
    location, _ = _locations(backend, tmp_path, request)
    vectors = unit_vectors(3000, 32)
    tracks = [Track(f"/music/{i // 100}/{i}.flac", title=f"song {i}", tags="pop", duration=float(i))
              for i in range(3000)]
    folder = ClapIndex(tmp_path / "folder", dim=32, model="m1")
    folder.add(tracks, vectors)
    index = open_index(location, dim=32, model="m1")
    index.add(tracks, vectors)
    assert len(index) == 3000
    if backend == "postgres":
        assert not index.has_hnsw()  # small: an exact scan
    for query in unit_vectors(20, 32, seed=1):
        expected, found = folder.search(query, k=10), index.search(query, k=10)
        assert [h.track.path for h in found] == [h.track.path for h in expected]
        np.testing.assert_allclose([h.score for h in found], [h.score for h in expected], atol=1e-5)
    excluded = folder.search(vectors[5], k=3, exclude=["/music/0/5.flac"])
    assert [h.track.path for h in index.search(vectors[5], k=3, exclude=["/music/0/5.flac"])] == \
        [h.track.path for h in excluded]
    assert index.get("/music/0/7.flac") == Track("/music/0/7.flac", "song 7", "pop", 7.0)
    index.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_cli_verbs_and_export(backend, tiny_clap_dir, synthetic_corpus, tmp_path, capsys, request):
    location, exported = _locations(backend, tmp_path, request)
    music, folder = synthetic_corpus / "audio", tmp_path / "ix"
    code, out = _run(capsys, "index", "add", music, "--index", location, "--model", tiny_clap_dir, "--quiet")
    assert code == 0 and "added 10" in out and "10 tracks" in out
    code, out = _run(capsys, "index", "add", music, "--index", folder, "--model", tiny_clap_dir, "--quiet")
    for verb in (["search", "slow calm piano"], ["similar", (music / "s3.flac").resolve()]):
        results = []
        for index in (folder, location):
            code, out = _run(capsys, *verb, "--index", index, "--model", tiny_clap_dir, "--json")
            assert code == 0
            results.append({h["path"]: h["score"] for h in json.loads(out)})
        assert results[0].keys() == results[1].keys() and len(results[0]) >= 9  # the synthetic songs tie often
        for path, score in results[0].items():
            assert results[1][path] == pytest.approx(score, abs=2e-4)  # the JSON rounds to 4 places
    code, out = _run(capsys, "index", "remove", music / "s0.flac", "--index", location)
    assert "removed 1" in out and "9 left" in out
    code, out = _run(capsys, "index", "list", "--index", location, "--json")
    assert code == 0 and len(json.loads(out)) == 9

    code, out = _run(capsys, "index", "export", "--index", folder, "--to", exported, "--quiet")
    assert code == 0 and "copied 10 tracks" in out
    code, out = _run(capsys, "search", "noise", "--index", exported, "--model", tiny_clap_dir, "--json")
    assert code == 0 and len(json.loads(out)) == 10
