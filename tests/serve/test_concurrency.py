"""Many clients at once against a real server process: every job accepted, finished once, downloadable."""

from __future__ import annotations

import io
import threading
import time

import httpx
import soundfile as sf
from serve_helpers import SONG

CLIENTS = 24


def client_session(url: str, index: int, results: dict, errors: list) -> None:
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            body = dict(SONG, seed=1000 + index, title=f"crowd {index}", duration=1.0 + 0.04 * (index % 3))
            created = http.post("/api/songs", json=body)
            assert created.status_code == 201, created.text
            job_id = created.json()["id"]
            deadline = time.monotonic() + 240
            seen = set()
            while time.monotonic() < deadline:
                job = http.get(f"/api/songs/{job_id}").json()
                seen.add(job["status"])
                assert 0.0 <= job["progress"] <= 1.0
                if job["status"] in ("done", "failed"):
                    break
                http.get("/api/songs", params={"limit": 5})  # list while others write
                time.sleep(0.05)
            assert job["status"] == "done", job
            audio = http.get(f"/api/songs/{job_id}/audio")
            data, rate = sf.read(io.BytesIO(audio.content))
            assert rate == job["result"]["sample_rate"] and len(data) > 0
            results[index] = job
    except Exception as exc:  # collected: an assert in a thread would otherwise vanish
        errors.append(f"client {index}: {exc!r}")


def test_many_clients_create_and_poll_jobs(live_server):
    results: dict[int, dict] = {}
    errors: list[str] = []
    threads = [threading.Thread(target=client_session, args=(live_server.url, i, results, errors))
               for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert len(results) == CLIENTS
    ids = {job["id"] for job in results.values()}
    assert len(ids) == CLIENTS
    assert all(job["attempts"] == 1 for job in results.values())  # each generated exactly once
    assert max(job["result"]["batch_size"] for job in results.values()) > 1  # queued songs were batched
    listing = httpx.get(live_server.url + "/api/songs", params={"q": "crowd", "limit": 100}).json()
    assert {s["id"] for s in listing["songs"]} == ids
    assert httpx.get(live_server.url + "/api/health").json()["model"] == "ready"
