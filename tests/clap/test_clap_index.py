"""The library index: add / search / remove round trip, growth, reuse of freed rows, persistence, empty index."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from heartmula.clap.index import MIN_CAPACITY, ClapIndex, Track
from heartmula.errors import HeartMuLaError


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_add_search_remove_round_trip(tmp_path):
    index = ClapIndex(tmp_path / "ix", dim=16, model="m1")
    vectors = unit_vectors(20, 16)
    index.add([Track(f"/music/a/{i}.flac", title=f"song {i}") for i in range(20)], vectors)
    assert len(index) == 20
    hits = index.search(vectors[7], k=3)
    assert hits[0].track.path == "/music/a/7.flac" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.score for h in hits] == sorted([h.score for h in hits], reverse=True)
    loaded = index._matrix
    assert index.remove(["/music/a/7.flac"]) == 1
    assert all(h.track.path != "/music/a/7.flac" for h in index.search(vectors[7], k=20))
    assert index._matrix is loaded  # a removal only masks its rows: no reload of the whole matrix
    assert len(index.search(vectors[0], k=100)) == 19
    # a freed row is reused, and the new vector (not the old one) is what search sees
    index.add([Track("/music/b/new.flac")], vectors[3:4])
    assert index.get("/music/b/new.flac").row == 7
    assert {h.track.path for h in index.search(vectors[3], k=2)} == {"/music/a/3.flac", "/music/b/new.flac"}
    # removing a folder removes everything under it, not paths that merely share the prefix
    index.add([Track("/music/ab.flac")], vectors[5:6])
    assert index.remove(["/music/a"]) == 19
    assert sorted(t.path for t in index.tracks()) == ["/music/ab.flac", "/music/b/new.flac"]


def test_update_keeps_one_row_per_path(tmp_path):
    index = ClapIndex(tmp_path, dim=8)
    v = unit_vectors(2, 8)
    index.add([Track("/x.wav", tags="old")], v[:1])
    index.add([Track("/x.wav", tags="new")], v[1:])
    assert len(index) == 1 and index.get("/x.wav").tags == "new"
    assert index.search(v[1], k=1)[0].score == pytest.approx(1.0, abs=1e-5)


def test_grows_beyond_initial_capacity(tmp_path):
    index = ClapIndex(tmp_path, dim=4)
    n = MIN_CAPACITY + 10
    vectors = unit_vectors(n, 4, seed=1)
    index.add([Track(f"/t/{i}") for i in range(n)], vectors)
    assert index.capacity() >= n
    assert index.search(vectors[n - 1], k=1)[0].track.path == f"/t/{n - 1}"


def test_persists_across_processes(tmp_path):
    index = ClapIndex(tmp_path / "ix", dim=8, model="fp")
    vectors = unit_vectors(5, 8, seed=2)
    index.add([Track(f"/p/{i}.wav", title=f"t{i}") for i in range(5)], vectors)
    index.remove(["/p/2.wav"])
    index.close()
    np.save(tmp_path / "q.npy", vectors[4])
    code = (
        "import numpy as np; from heartmula.clap.index import ClapIndex;"
        f"ix = ClapIndex(r'{tmp_path / 'ix'}', create=False);"
        f"hits = ix.search(np.load(r'{tmp_path / 'q.npy'}'), k=10);"
        "print(len(ix), ix.model, ix.dim, hits[0].track.path, hits[0].track.title, len(hits))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["4", "fp", "8", "/p/4.wav", "t4", "4"]


def test_empty_index_and_missing_index(tmp_path):
    index = ClapIndex(tmp_path / "empty", dim=8)
    assert len(index) == 0
    assert index.search(unit_vectors(1, 8)[0], k=5) == []
    with pytest.raises(HeartMuLaError, match="no index"):
        ClapIndex(tmp_path / "nothing", create=False)
    with pytest.raises(HeartMuLaError, match="8-d"):
        ClapIndex(tmp_path / "empty", dim=16)


def test_other_model_is_refused(tmp_path):
    index = ClapIndex(tmp_path, dim=8, model="aaa")
    with pytest.raises(HeartMuLaError, match="reindex"):
        index.check_model("bbb")
    index.check_model("aaa")
