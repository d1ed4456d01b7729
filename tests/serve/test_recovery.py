"""kill -9 and restart: finished songs intact, interrupted jobs re-queued (or failed with a reason), no debris."""

from __future__ import annotations

import hashlib
import time
import uuid

import httpx
from serve_helpers import SONG

from heartmula.serve.jobs import MAX_ATTEMPTS, JobStore, batch_compatible


def poll(url: str, job_id: str, until, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/api/songs/{job_id}").json()
        if until(job):
            return job
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting on {job_id}: {job}")


def seed_of_the_longest_song(model_root, request: dict) -> int:
    """A random-weight model ends songs at random (EOS): pick the seed whose song runs longest, so the server is
    still generating it when it is killed (a 6-frame song can finish before the test sees it running)."""
    from heartmula.lm.generation import SamplingParams, SongRequest, frames_for_duration
    from heartmula.lm.pretrained import load_generator

    generator = load_generator(model_root)
    seeds = list(range(16))
    songs = [SongRequest(lyrics=request["lyrics"], tags=request["tags"], seed=s) for s in seeds]
    codes = generator.generate(songs, SamplingParams(), frames_for_duration(request["duration"]))
    return max(seeds, key=lambda s: codes[s].shape[1])


def test_kill_9_mid_generation_then_restart(server_factory, model_root, tmp_path):
    server = server_factory().start()
    url = server.url
    keeper = httpx.post(f"{url}/api/songs", json=dict(SONG, title="keeper")).json()
    keeper = poll(url, keeper["id"], lambda j: j["status"] == "done")
    audio_hash = hashlib.sha256(httpx.get(f"{url}/api/songs/{keeper['id']}/audio").content).hexdigest()
    codes_hash = hashlib.sha256(httpx.get(f"{url}/api/songs/{keeper['id']}/codes").content).hexdigest()

    victim_request = dict(SONG, title="victim", duration=20.0)
    victim_request["seed"] = seed_of_the_longest_song(model_root, victim_request)
    victim = httpx.post(f"{url}/api/songs", json=victim_request).json()
    queued = httpx.post(f"{url}/api/songs", json=dict(SONG, title="queued", temperature=0.7)).json()
    poll(url, victim["id"], lambda j: j["status"] == "running" and j["progress"] > 0.02)
    server.kill9()

    songs = tmp_path / "data" / "songs"
    (songs / keeper["id"] / ".song.crash.part.wav").write_bytes(b"RIFF half a file")  # a write cut short
    orphan = songs / uuid.uuid4().hex
    orphan.mkdir()
    (orphan / "song.wav").write_bytes(b"no row owns this")

    server = server_factory().start()
    url = server.url
    keeper_after = httpx.get(f"{url}/api/songs/{keeper['id']}").json()
    assert keeper_after["status"] == "done" and keeper_after["result"] == keeper["result"]
    assert hashlib.sha256(httpx.get(f"{url}/api/songs/{keeper['id']}/audio").content).hexdigest() == audio_hash
    assert hashlib.sha256(httpx.get(f"{url}/api/songs/{keeper['id']}/codes").content).hexdigest() == codes_hash
    assert not (songs / keeper["id"] / ".song.crash.part.wav").exists()
    assert not orphan.exists()

    again = httpx.get(f"{url}/api/songs/{victim['id']}").json()
    assert again["status"] in ("queued", "running", "done")
    victim_done = poll(url, victim["id"], lambda j: j["status"] in ("done", "failed"), timeout=300)
    assert victim_done["status"] == "done", victim_done
    assert victim_done["attempts"] == 2
    assert poll(url, queued["id"], lambda j: j["status"] in ("done", "failed"))["status"] == "done"
    leftovers = [p for p in songs.rglob("*") if ".part" in p.name]
    assert leftovers == []


def test_a_job_that_keeps_crashing_the_server_is_failed_with_a_reason(tmp_path):
    store = JobStore(tmp_path)
    job = store.create("song", dict(SONG, temperature=1.0, top_k=50, cfg_scale=1.5))
    stream = store.create("stream", {"prompts": []}, status="running")
    for attempt in range(1, MAX_ATTEMPTS + 1):
        claimed = store.claim_batch(4, batch_compatible)
        assert [j.id for j in claimed] == [job.id] and claimed[0].attempts == attempt
        store.close()
        store = JobStore(tmp_path)  # a crash: the process is gone, the database stays
        report = store.recover()
        if attempt < MAX_ATTEMPTS:
            assert report["requeued"] == [job.id]
            assert "re-queued" in store.get(job.id).message
    failed = store.get(job.id)
    assert failed.status == "failed" and "giving up" in failed.message
    assert store.get(stream.id).status == "failed" and "live stream" in store.get(stream.id).message
    assert store.claim_batch(4, batch_compatible) == []
    store.close()


def test_a_running_job_deleted_by_a_client_leaves_nothing(make_client):
    from serve_helpers import wait_for

    client = make_client()
    job = client.post("/api/songs", json=dict(SONG, duration=60.0)).json()
    wait_for(client, job["id"], statuses=("running", "done"))
    assert client.delete(f"/api/songs/{job['id']}").status_code == 204
    follow = client.post("/api/songs", json=SONG).json()
    assert wait_for(client, follow["id"])["status"] == "done"  # the worker moved on
    assert client.get(f"/api/songs/{job['id']}").status_code == 404
    assert not (client.app.state.store.songs_dir / job["id"]).exists()
