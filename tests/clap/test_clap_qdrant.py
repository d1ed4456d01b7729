"""The library index in Qdrant (qdrant-client's embedded local mode): the add/update/remove semantics, export
without embedding again that keeps the model fingerprint, and an unreachable server that fails at once (the top-10
and the CLI verbs against the folder index: tests/clap/test_index_backends.py)."""

from __future__ import annotations

import numpy as np
import pytest

from heartmula.clap.index import ClapIndex, Track, export_index, open_index
from heartmula.errors import HeartMuLaError

pytest.importorskip("qdrant_client", reason="the 'scale' extra (qdrant-client) is not installed")


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_update_remove_and_persistence(tmp_path):
    location = f"qdrant-local:{tmp_path / 'q'}#library"
    index = open_index(location, dim=8, model="m1")
    v = unit_vectors(4, 8)
    index.add([Track("/m/a/1.wav", tags="old"), Track("/m/a/2.wav"), Track("/m/ab.wav"), Track("/m/b/3.wav")], v)
    index.add([Track("/m/a/1.wav", tags="new")], v[3:])
    assert len(index) == 4 and index.get("/m/a/1.wav").tags == "new"
    np.testing.assert_allclose(index.vector("/m/a/1.wav"), v[3])
    assert index.remove(["/m/a"]) == 2  # a folder's tracks, not a path that merely shares the prefix
    index.close()
    again = open_index(location, create=False)
    assert [t.path for t in again.tracks()] == ["/m/ab.wav", "/m/b/3.wav"] and again.model == "m1"
    with pytest.raises(HeartMuLaError, match="another HeartCLAP model"):
        again.check_model("m2")
    again.close()
    with pytest.raises(HeartMuLaError, match="no index at"):
        open_index(f"qdrant-local:{tmp_path / 'empty'}", create=False)


def test_export_keeps_the_fingerprint_and_never_mixes_models(tmp_path):
    vectors = unit_vectors(50, 16)
    folder = ClapIndex(tmp_path / "folder", dim=16, model="m1")
    folder.add([Track(f"/t/{i}.wav", title=str(i)) for i in range(50)], vectors)
    target = open_index("qdrant-local::memory:#music", dim=16, model="m1")
    assert export_index(folder, target, progress=False) == 50
    assert target.model == "m1" and len(target) == 50
    assert [h.track.path for h in target.search(vectors[9], k=5)] == [h.track.path for h in folder.search(vectors[9],
                                                                                                           k=5)]
    other = ClapIndex(tmp_path / "other", dim=16, model="m2")
    other.add([Track("/u/x.wav")], vectors[:1])
    with pytest.raises(HeartMuLaError, match="another HeartCLAP model"):
        export_index(other, target, progress=False)
    assert len(target) == 50


def test_unreachable_server_fails_at_once():
    with pytest.raises(HeartMuLaError, match="no Qdrant server answers at http://127.0.0.1:1"):
        open_index("qdrant://127.0.0.1:1/music")
    with pytest.raises(HeartMuLaError, match="qdrant://HOST"):
        open_index("qdrant:///music")
