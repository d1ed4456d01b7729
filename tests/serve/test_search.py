"""Library search by text and by example over HeartCLAP embeddings (a tiny random HeartCLAP)."""

from __future__ import annotations

import pytest
from serve_helpers import SONG, wait_for


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    import torch

    from heartmula.clap import HeartCLAP, HeartCLAPConfig

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clap")
    HeartCLAP(HeartCLAPConfig.tiny()).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("backend", ["folder", "qdrant", "postgres"])
def test_search_by_text_example_and_similar(make_client, clap_dir, tmp_path, backend, request):
    location = None
    if backend == "qdrant":
        pytest.importorskip("qdrant_client", reason="the 'scale' extra (qdrant-client) is not installed")
        location = f"qdrant-local:{tmp_path / 'qdrant'}"
    if backend == "postgres":
        location = request.getfixturevalue("postgres_location")  # skips without a PostgreSQL with pgvector
    client = make_client(clap_model=clap_dir, search_index=location)
    assert client.get("/api/health").json()["features"]["search"] is True
    jobs = [wait_for(client, client.post("/api/songs", json=dict(SONG, seed=s, title=f"t{s}", duration=1.0)).json()
                     ["id"]) for s in (1, 2, 3)]
    ids = {j["id"] for j in jobs}
    for _ in range(100):  # indexing follows `done` in the worker
        found = client.get("/api/search", params={"q": "calm piano ballad", "k": 10}).json()["hits"]
        if {h["song"]["id"] for h in found} == ids:
            break
    assert {h["song"]["id"] for h in found} == ids
    scores = [h["score"] for h in found]
    assert scores == sorted(scores, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in scores)

    wav = client.get(f"/api/songs/{jobs[1]['id']}/audio").content
    by_example = client.post("/api/search/audio", files={"file": ("x.wav", wav, "audio/wav")}, data={"k": "1"})
    assert by_example.status_code == 200, by_example.text
    best = by_example.json()["hits"][0]
    assert best["song"]["id"] == jobs[1]["id"] and best["score"] > 0.999  # a song is most like itself

    similar = client.get(f"/api/songs/{jobs[0]['id']}/similar").json()["hits"]
    assert {h["song"]["id"] for h in similar} == ids - {jobs[0]["id"]}

    assert client.delete(f"/api/songs/{jobs[2]['id']}").status_code == 204
    after = client.get("/api/search", params={"q": "anything"}).json()["hits"]
    assert {h["song"]["id"] for h in after} == ids - {jobs[2]["id"]}
    broken = client.post("/api/search/audio", files={"file": ("x.wav", b"junk" * 100, "audio/wav")})
    assert broken.status_code == 422
    assert client.get("/api/search", params={"q": ""}).status_code == 422


def test_songs_done_before_search_existed_are_indexed_at_start(make_client, clap_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("heartmula.serve.app.default_clap_dir", lambda: None)  # as if no HeartCLAP shipped
    plain = make_client(data_dir=tmp_path / "lib")
    job = wait_for(plain, plain.post("/api/songs", json=SONG).json()["id"])
    assert plain.get("/api/search", params={"q": "x"}).status_code == 404  # no CLAP: no search, says how
    plain.__exit__(None, None, None)
    searching = make_client(data_dir=tmp_path / "lib", clap_model=clap_dir)
    for _ in range(200):
        hits = searching.get("/api/search", params={"q": "x"}).json()["hits"]
        if hits:
            break
    assert [h["song"]["id"] for h in hits] == [job["id"]]
