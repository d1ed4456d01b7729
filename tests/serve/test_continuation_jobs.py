"""Continuing library songs through the API: POST /api/songs with continue_from / from_seconds, and recordings
imported into the library (POST /api/songs/import) to continue them."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
from serve_helpers import SONG, FullLengthSongs, wait_for

from heartmula.codec.config import tiny_config
from heartmula.codec.model import HeartCodec


def codes_of(client, job_id: str) -> np.ndarray:
    return np.load(io.BytesIO(client.get(f"/api/songs/{job_id}/codes").content))


@pytest.fixture(scope="module")
def client(model_root, tmp_path_factory):
    from fastapi.testclient import TestClient

    from heartmula.serve import ServeConfig, create_app

    config = ServeConfig(data_dir=tmp_path_factory.mktemp("extend"), model=model_root, max_duration=300)
    with TestClient(create_app(config, load_models=FullLengthSongs(model_root))) as c:
        yield c


@pytest.fixture(scope="module")
def source(client) -> dict:
    job = wait_for(client, client.post("/api/songs", json=dict(SONG, title="River")).json()["id"])
    assert job["status"] == "done" and job["result"]["frames"] == 13, job
    return job


def test_a_continuation_starts_with_the_songs_codes(client, source):
    body = dict(SONG, seed=8, continue_from=source["id"], from_seconds=0.8)
    created = client.post("/api/songs", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["title"] == "River (continued from 0.8 s)"
    job = wait_for(client, created.json()["id"])
    assert job["status"] == "done", job
    assert job["result"]["prompt_frames"] == 10 and job["result"]["frames"] == 10 + 13
    codes = codes_of(client, job["id"])
    assert np.array_equal(codes[:, :10], codes_of(client, source["id"])[:, :10])
    audio, rate = sf.read(io.BytesIO(client.get(f"/api/songs/{job['id']}/audio").content), always_2d=True)
    assert len(audio) == 23 * rate * 8 // 100  # one decode of all 23 frames of 80 ms


def test_the_same_seed_continues_the_same_way(client, source):
    body = dict(SONG, seed=5, continue_from=source["id"])
    first, again = (wait_for(client, client.post("/api/songs", json=body).json()["id"]) for _ in range(2))
    assert first["result"]["prompt_frames"] == 13
    assert np.array_equal(codes_of(client, first["id"]), codes_of(client, again["id"]))


@pytest.mark.parametrize("changes, status, message", [
    ({"continue_from": "0" * 32}, 404, "no song 0{32} to continue"),
    ({"from_seconds": 5.0}, 422, r"beyond the end of the song \(1.04 s\)"),
    ({"from_seconds": 0.01}, 422, "keeps no frame"),
    ({"from_seconds": -1.0}, 422, "greater than or equal to 0"),
    ({"duration": 200.0}, 422, r"at most 1\d\d\.\d s of new music fit; ask for less, or keep fewer seconds"),
    ({"continue_from": None, "from_seconds": 1.0}, 422, "from_seconds needs continue_from"),
])
def test_bad_continuations_are_refused_and_nothing_is_queued(client, source, changes, status, message):
    import re

    before = client.get("/api/songs").json()["total"]
    response = client.post("/api/songs", json={**SONG, "continue_from": source["id"], **changes})
    assert response.status_code == status, response.text
    assert re.search(message, str(response.json()["detail"])), response.text
    assert client.get("/api/songs").json()["total"] == before


def test_a_recording_needs_a_codec_with_an_encoder(client):
    before = client.get("/api/songs").json()["total"]
    response = client.post("/api/songs/import", files={"file": ("take.wav", wav_bytes(4800), "audio/wav")})
    assert response.status_code == 422 and "no encoder" in response.json()["detail"]
    assert client.get("/api/songs").json()["total"] == before


def wav_bytes(rate: int, seconds: float = 1.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, format="WAV")
    return buffer.getvalue()


class WithEncoder:
    """The tiny LM with a tiny direct codec that has an encoder, sized to the LM's 32 codes."""

    def __init__(self, root):
        self.root = root

    def __call__(self):
        from heartmula.lm.pretrained import load_generator

        config = tiny_config("direct", with_encoder=True)
        config.codebook_size = 32
        return load_generator(self.root), HeartCodec(config.validate()).init_weights(0).eval()


def test_an_imported_recording_is_a_library_song_to_continue(make_client, model_root):
    client = make_client(load_models=WithEncoder(model_root))
    wait_for_ready(client)
    created = client.post("/api/songs/import", files={"file": ("take one.wav", wav_bytes(4800, 1.5), "audio/wav")})
    assert created.status_code == 201, created.text
    imported = created.json()
    assert imported["status"] == "done" and imported["kind"] == "import" and imported["title"] == "take one"
    assert imported["result"]["frames"] == 18  # 1.5 s: whole frames of 80 ms
    assert codes_of(client, imported["id"]).shape == (8, 18)
    job = wait_for(client, client.post("/api/songs", json=dict(SONG, continue_from=imported["id"])).json()["id"])
    assert job["status"] == "done", job
    assert np.array_equal(codes_of(client, job["id"])[:, :18], codes_of(client, imported["id"]))
    garbage = client.post("/api/songs/import", files={"file": ("x.wav", b"not audio", "audio/wav")})
    assert garbage.status_code == 422


def wait_for_ready(client, timeout: float = 60.0) -> None:
    from serve_helpers import wait_until

    wait_until(lambda: client.get("/api/health").json()["model"] == "ready", timeout, "the model")
