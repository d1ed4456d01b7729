"""The library index in PostgreSQL + pgvector (a throwaway cluster on 127.0.0.1, see tests/postgres_server.py): an
HNSW index once the table is big enough, add/update/remove, the model fingerprint that keeps two models apart,
export folder -> PostgreSQL -> folder without embedding again, and bad addresses that fail within seconds (the
top-10 and the CLI verbs against the folder index: tests/clap/test_index_backends.py)."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from heartmula.clap import pgvector_index
from heartmula.clap.index import ClapIndex, Track, export_index, open_index
from heartmula.errors import HeartMuLaError


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def library(n: int, dim: int) -> tuple[list[Track], np.ndarray]:
    tracks = [Track(f"/music/{i // 100}/{i}.flac", title=f"song {i}", tags="pop", duration=float(i)) for i in range(n)]
    return tracks, unit_vectors(n, dim)


def test_a_big_table_gets_an_hnsw_index_that_search_uses(tmp_path, postgres_location, monkeypatch):
    monkeypatch.setattr(pgvector_index, "HNSW_MIN_TRACKS", 1000)
    tracks, vectors = library(3000, 32)
    folder = ClapIndex(tmp_path / "folder", dim=32, model="m1")
    folder.add(tracks, vectors)
    table = open_index(postgres_location, dim=32, model="m1")
    table.add(tracks[:500], vectors[:500])
    assert not table.has_hnsw()
    table.add(tracks[500:], vectors[500:])
    assert table.has_hnsw()
    query = unit_vectors(1, 32, seed=1)[0]
    plan = "\n".join(r[0] for r in table.conn.execute(
        f"EXPLAIN SELECT path FROM {table.table} ORDER BY embedding <=> %s LIMIT 10", (query,)))
    assert "_embedding_hnsw" in plan
    bulk = open_index(postgres_location.replace("?table=", "?table=bulk_"), dim=32, model="m1")
    with bulk.bulk_load():  # as `index export` fills a table: one build at the end
        bulk.add(tracks, vectors)
        assert not bulk.has_hnsw()
    assert bulk.has_hnsw()
    bulk.close()
    recall = [len({h.track.path for h in table.search(q, k=10)} & {h.track.path for h in folder.search(q, k=10)}) / 10
              for q in unit_vectors(20, 32, seed=2)]
    assert np.mean(recall) >= 0.9  # approximate, but close to the exact scan
    table.close()
    exact = open_index(f"{postgres_location}&exact=1")
    for query in unit_vectors(20, 32, seed=2):
        assert [h.track.path for h in exact.search(query, k=10)] == [h.track.path for h in folder.search(query, k=10)]
    exact.close()


def test_update_remove_and_persistence(postgres_location):
    index = open_index(postgres_location, dim=8, model="m1")
    v = unit_vectors(4, 8)
    index.add([Track("/m/a/1.wav", tags="old"), Track("/m/a/2.wav"), Track("/m/ab.wav"), Track("/m/b/3.wav")], v)
    index.add([Track("/m/a/1.wav", tags="new")], v[3:])
    assert len(index) == 4 and index.get("/m/a/1.wav").tags == "new"
    np.testing.assert_allclose(index.vector("/m/a/1.wav"), v[3])
    assert index.remove(["/m/a"]) == 2  # a folder's tracks, not a path that merely shares the prefix
    assert index.remove(["/m/b/3.wav", "/m/missing.wav"]) == 1
    index.close()
    again = open_index(postgres_location, create=False)
    assert [t.path for t in again.tracks()] == ["/m/ab.wav"] and again.model == "m1" and again.dim == 8
    with pytest.raises(HeartMuLaError, match="another HeartCLAP model"):
        again.check_model("m2")
    with pytest.raises(HeartMuLaError, match="holds 8-d vectors"):
        open_index(postgres_location, dim=16)
    again.close()
    with_password = postgres_location.replace("heartmula@", "heartmula:secret@")  # trusted: any password works
    with pytest.raises(HeartMuLaError, match="no index at") as error:
        open_index(with_password.replace("?table=", "?table=missing_"), create=False)
    assert "secret" not in str(error.value)


def test_a_writer_never_mixes_in_vectors_of_a_model_recorded_after_it_opened(postgres_location):
    first = open_index(postgres_location, dim=8, model="m1")
    first.add([Track("/m/1.wav")], unit_vectors(1, 8))
    second = open_index(postgres_location, dim=8)
    second.set_model("m2")  # e.g. `index reindex` with another model elsewhere
    with pytest.raises(HeartMuLaError, match="another HeartCLAP model"):
        first.add([Track("/m/2.wav")], unit_vectors(1, 8, seed=1))
    assert [t.path for t in second.tracks()] == ["/m/1.wav"]
    first.close()
    second.close()


def test_export_folder_to_postgres_and_back(tmp_path, postgres_location):
    vectors = unit_vectors(2500, 16)  # more than one export page
    folder = ClapIndex(tmp_path / "folder", dim=16, model="m1")
    folder.add([Track(f"/t/{i:04d}.wav", title=str(i), tags="rock", duration=1.5, size=i, mtime=2.0)
                for i in range(2500)], vectors)
    table = open_index(postgres_location, dim=16, model="m1")
    assert export_index(folder, table, progress=False) == 2500
    assert table.model == "m1" and len(table) == 2500
    assert [h.track.path for h in table.search(vectors[9], k=5)] == [h.track.path for h in folder.search(vectors[9],
                                                                                                         k=5)]
    back = ClapIndex(tmp_path / "back", dim=16, model="")
    assert export_index(table, back, progress=False) == 2500
    assert back.model == "m1"
    assert [(t.path, t.title, t.tags, t.duration, t.size, t.mtime) for t in back.tracks()] == \
        [(t.path, t.title, t.tags, t.duration, t.size, t.mtime) for t in folder.tracks()]
    for path in ("/t/0000.wav", "/t/1234.wav", "/t/2499.wav"):
        np.testing.assert_array_equal(back.vector(path), folder.vector(path))  # float32 all the way
    other = ClapIndex(tmp_path / "other", dim=16, model="m2")
    other.add([Track("/u/x.wav")], vectors[:1])
    with pytest.raises(HeartMuLaError, match="another HeartCLAP model"):
        export_index(other, table, progress=False)
    assert len(table) == 2500
    table.close()


def test_bad_addresses_fail_within_the_connect_timeout():
    with pytest.raises(HeartMuLaError, match="cannot connect to PostgreSQL at 127.0.0.1:1/music"):
        open_index("postgresql://me@127.0.0.1:1/music")
    with socket.socket() as silent:  # accepts connections and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        with pytest.raises(HeartMuLaError, match=f"cannot connect to PostgreSQL at 127.0.0.1:{port}/music.*timeout"):
            open_index(f"postgresql://me@127.0.0.1:{port}/music?connect_timeout=2")
    with pytest.raises(HeartMuLaError, match="postgresql://USER"):
        open_index("postgresql:///music")
    with pytest.raises(HeartMuLaError, match="table name"):
        open_index("postgresql://me@127.0.0.1:1/music?table=x;drop")


def test_the_location_sets_the_table_the_search_list_and_a_connect_timeout():
    where = pgvector_index.parse_location("postgres://u:secret@db.example:5433/lib?table=Songs&sslmode=require"
                                          "&ef_search=400")
    assert (where.table, where.ef_search) == ("songs", 400)
    assert where.url == "postgres://u:secret@db.example:5433/lib?sslmode=require&connect_timeout=10"
    assert "secret" not in where.shown
    assert pgvector_index.parse_location("postgresql://h/lib?connect_timeout=3").url.endswith("?connect_timeout=3")
    assert not where.exact and pgvector_index.parse_location("postgresql://h/lib?exact=1").exact
    with pytest.raises(HeartMuLaError, match="ef_search") as error:
        pgvector_index.parse_location("postgresql://u:secret@h/lib?ef_search=0")
    assert "secret" not in str(error.value)
