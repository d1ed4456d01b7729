"""The library index in Qdrant (qdrant-client's embedded local mode): the same top-10 as the folder index's scan,
the same add/update/remove semantics, export without embedding again that keeps the model fingerprint, the CLI
verbs on a Qdrant location, and an unreachable server that fails at once."""

from __future__ import annotations

import json

import numpy as np
import pytest

from heartmula.clap.index import ClapIndex, Track, export_index, open_index
from heartmula.cli import main
from heartmula.errors import HeartMuLaError

pytest.importorskip("qdrant_client", reason="the 'scale' extra (qdrant-client) is not installed")


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_same_top_10_as_the_folder_scan(tmp_path):
    vectors = unit_vectors(3000, 32)
    tracks = [Track(f"/music/{i // 100}/{i}.flac", title=f"song {i}", tags="pop", duration=float(i)) for i in
              range(3000)]
    folder = ClapIndex(tmp_path / "folder", dim=32, model="m1")
    folder.add(tracks, vectors)
    qdrant = open_index("qdrant-local::memory:", dim=32, model="m1")
    qdrant.add(tracks, vectors)
    assert len(qdrant) == 3000
    for query in unit_vectors(20, 32, seed=1):
        expected, found = folder.search(query, k=10), qdrant.search(query, k=10)
        assert [h.track.path for h in found] == [h.track.path for h in expected]
        np.testing.assert_allclose([h.score for h in found], [h.score for h in expected], atol=1e-5)
    excluded = folder.search(vectors[5], k=3, exclude=["/music/0/5.flac"])
    assert [h.track.path for h in qdrant.search(vectors[5], k=3, exclude=["/music/0/5.flac"])] == \
        [h.track.path for h in excluded]
    assert qdrant.get("/music/0/7.flac") == Track("/music/0/7.flac", "song 7", "pop", 7.0)


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


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().out


def test_cli_verbs_and_export_on_qdrant(tiny_clap_dir, synthetic_corpus, tmp_path, capsys):
    music = synthetic_corpus / "audio"
    folder, qdrant = tmp_path / "ix", f"qdrant-local:{tmp_path / 'q'}"
    code, out = _run(capsys, "index", "add", music, "--index", qdrant, "--model", tiny_clap_dir, "--quiet")
    assert code == 0 and "added 10" in out and "10 tracks" in out
    code, out = _run(capsys, "index", "add", music, "--index", folder, "--model", tiny_clap_dir, "--quiet")
    for verb in (["search", "slow calm piano"], ["similar", (music / "s3.flac").resolve()]):
        results = []
        for location in (folder, qdrant):
            code, out = _run(capsys, *verb, "--index", location, "--model", tiny_clap_dir, "--json")
            assert code == 0
            results.append({h["path"]: h["score"] for h in json.loads(out)})
        assert results[0].keys() == results[1].keys() and len(results[0]) >= 9  # the synthetic songs tie often
        for path, score in results[0].items():
            assert results[1][path] == pytest.approx(score, abs=2e-4)  # the JSON rounds to 4 places
    code, out = _run(capsys, "index", "remove", music / "s0.flac", "--index", qdrant)
    assert "removed 1" in out and "9 left" in out

    exported = f"qdrant-local:{tmp_path / 'exported'}"
    code, out = _run(capsys, "index", "export", "--index", folder, "--to", exported, "--quiet")
    assert code == 0 and "copied 10 tracks" in out
    code, out = _run(capsys, "search", "noise", "--index", exported, "--model", tiny_clap_dir, "--json")
    assert code == 0 and len(json.loads(out)) == 10
