"""Bad requests get a clear 4xx and the server keeps serving."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
from serve_helpers import SONG, wait_for

from heartmula.errors import HeartMuLaError
from heartmula.serve.jobs import JobStore


@pytest.fixture(scope="module")
def client(model_root, tmp_path_factory):
    from fastapi.testclient import TestClient

    from heartmula.serve import ServeConfig, create_app

    config = ServeConfig(data_dir=tmp_path_factory.mktemp("bad"), model=model_root, max_duration=60,
                         max_upload_bytes=200_000)
    with TestClient(app := create_app(config)) as c:
        c.app_ref = app
        yield c


def detail(response) -> str:
    return str(response.json()["detail"])


BAD_BODIES = [
    ("malformed json", b'{"lyrics": "x", ', 422, "json"),
    ("not an object", b"[1, 2, 3]", 422, ""),
    ("wrong type duration", b'{"duration": "long"}', 422, "duration"),
    ("string number", b'{"duration": "10"}', 422, "duration"),  # strict: no silent coercion
    ("bool seed", b'{"seed": true}', 422, "seed"),
    ("negative duration", b'{"duration": -1}', 422, "duration"),
    ("zero duration", b'{"duration": 0}', 422, "duration"),
    ("over the server limit", b'{"duration": 61}', 422, "limit"),
    ("NaN temperature", b'{"temperature": NaN}', 422, "temperature"),
    ("infinite cfg", b'{"cfg_scale": Infinity}', 422, "cfg_scale"),
    ("top_k zero", b'{"top_k": 0}', 422, "top_k"),
    ("float top_k", b'{"top_k": 2.5}', 422, "top_k"),
    ("negative seed", b'{"seed": -5}', 422, "seed"),
    ("huge seed", b'{"seed": 1e30}', 422, "seed"),
    ("unknown field", b'{"lyrics": "x", "sneaky": 1}', 422, "sneaky"),
    ("lyrics not text", b'{"lyrics": ["a", "b"]}', 422, "lyrics"),
    ("lyrics too long", ('{"lyrics": "%s"}' % ("la " * 7000)).encode(), 422, "lyrics"),
    ("bad tag weights", b'{"tags": "jazz:-1,rock:0.5"}', 422, "weight"),
    ("tag weight not a number", b'{"tags": "jazz:abc"}', 422, "weight"),
    ("empty body", b"", 422, ""),
]


@pytest.mark.parametrize("name, body, status, word", BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_song_requests(client, name, body, status, word):
    response = client.post("/api/songs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert word.lower() in response.text.lower()


def test_a_huge_body_is_413_before_it_is_parsed(client):
    huge = b'{"lyrics": "' + b"x" * (3 << 20) + b'"}'
    response = client.post("/api/songs", content=huge, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "larger than" in detail(response)

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        yield b'{"lyrics": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}'

    response = client.post("/api/songs", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413


PATH_TRICKS = [
    "/api/songs/..%2F..%2Fjobs.sqlite3",
    "/api/songs/%2E%2E/audio",
    "/api/songs/../../etc/passwd",
    "/api/songs/ABCDEF0123456789ABCDEF0123456789",  # upper case: not an id this server makes
    "/api/songs/0123456789abcdef0123456789abcde",  # 31 digits
    "/api/songs/0123456789abcdef0123456789abcdef0",  # 33 digits
    "/api/songs/0123456789abcdef0123456789abcdeg",
    "/api/songs/%00/audio",
    "/api/songs/0123456789abcdef0123456789abcdef%2F..",
    "/api/songs/0123456789abcdef0123456789abcdef/audio?format=../../jobs.sqlite3",
    "/api/songs/0123456789abcdef0123456789abcdef/audio?format=exe",
]


@pytest.mark.parametrize("path", PATH_TRICKS)
def test_path_tricks_never_reach_the_disk(client, path):
    for method in ("GET", "DELETE"):
        response = client.request(method, path)
        assert response.status_code in (404, 405, 422), (method, path, response.status_code)
        assert b"SQLite" not in response.content and b"root:" not in response.content


def test_job_store_refuses_ids_that_are_paths(tmp_path):
    store = JobStore(tmp_path)
    for bad in ("../x", "/etc/passwd", "a" * 31, "", "0123456789abcdef0123456789abcdef/.."):
        with pytest.raises(HeartMuLaError):
            store.job_dir(bad)
        assert store.get(bad) is None
    store.close()


def test_bad_list_queries(client):
    for params in ({"limit": 0}, {"limit": 10_000}, {"limit": "ten"}, {"offset": -1}, {"status": "exploded"},
                   {"q": "x" * 500}):
        assert client.get("/api/songs", params=params).status_code == 422, params
    assert client.get("/api/songs", params={"q": "%_\\'\";--"}).status_code == 200


def wav_bytes(seconds: float = 0.5, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(int(seconds * rate), dtype=np.float32), rate, format="WAV")
    return buffer.getvalue()


def test_broken_uploads(client):
    cases = [
        ("random bytes", ("x.wav", np.random.default_rng(0).bytes(5000), "audio/wav")),
        ("empty file", ("x.wav", b"", "audio/wav")),
        ("text", ("lyrics.mp3", b"[verse]\nnot audio at all\n" * 50, "audio/mpeg")),
        ("truncated wav", ("cut.wav", wav_bytes()[:30], "audio/wav")),
        ("path in the name", ("../../../etc/passwd", b"junk" * 100, "application/octet-stream")),
    ]
    for name, upload in cases:
        response = client.post("/api/transcribe", files={"file": upload})
        assert response.status_code == 422, (name, response.status_code, response.text)
        assert "not audio" in detail(response), name
    assert client.post("/api/transcribe").status_code == 422  # no file at all
    assert client.post("/api/transcribe", files={"file": ("a.wav", wav_bytes(), "audio/wav")},
                       data={"language": "../en"}).status_code == 422
    big = client.post("/api/transcribe", files={"file": ("big.wav", wav_bytes(10.0), "audio/wav")})
    assert big.status_code == 413  # 320 kB over this server's 200 kB limit
    leftovers = [p for p in client.app_ref.state.store.data_dir.iterdir() if p.name.startswith("tmp")]
    assert leftovers == []  # uploads are removed whatever happened


def test_the_server_still_serves_after_all_that(client):
    assert client.get("/api/health").status_code == 200
    job = wait_for(client, client.post("/api/songs", json=SONG).json()["id"])
    assert job["status"] == "done"
