"""The worker never dies silently: storage failures are contained and reported, and a graceful stop is no crash."""

from __future__ import annotations

from serve_helpers import SONG, FullLengthSongs, set_read_only, wait_for, wait_until

from heartmula.serve.jobs import MAX_ATTEMPTS


def ready(client) -> None:
    wait_until(lambda: client.get("/api/health").json()["model"] == "ready", what="the model")


def generating(client, job_id: str) -> bool:
    job = client.get(f"/api/songs/{job_id}").json()
    return job["status"] == "running" and job["progress"] > 0


def test_a_database_that_turns_read_only_mid_job_is_contained_and_reported(make_client):
    c = make_client()
    store, worker = c.app.state.store, c.app.state.worker
    ready(c)
    decode = worker.codec.decode

    def decode_then_lock(*args, **kwargs):  # the database turns read-only while the song is being decoded
        audio = decode(*args, **kwargs)
        set_read_only(store, True)
        return audio

    worker.codec.decode = decode_then_lock
    job = c.post("/api/songs", json=SONG).json()
    health = wait_until(lambda: (h := c.get("/api/health")).status_code == 503 and h, what="health to say 503")
    body = health.json()
    assert body["status"] == "unavailable" and "read-only" in body["problem"], body
    assert body["worker"]["alive"] and body["model"] == "ready"
    refused = c.post("/api/songs", json=SONG)
    assert refused.status_code == 503 and refused.json()["cause"] == "read-only", refused.text
    assert c.get(f"/api/songs/{job['id']}").json()["status"] == "running"  # reads still work

    worker.codec.decode = decode
    set_read_only(store, False)
    failed = wait_for(c, job["id"])
    assert failed["status"] == "failed" and "read-only" in failed["message"], failed
    assert not store.job_dir(job["id"]).exists()  # its files went with it
    wait_until(lambda: c.get("/api/health").status_code == 200, what="health to recover")
    assert wait_for(c, c.post("/api/songs", json=SONG).json()["id"])["status"] == "done"  # the worker goes on


def test_an_exception_anywhere_in_a_batch_leaves_the_worker_running(make_client):
    c = make_client()
    store, worker = c.app.state.store, c.app.state.worker
    ready(c)
    fail = store.fail

    def broken_fail(job_id, reason):  # the error path itself raises, once
        store.fail = fail
        raise RuntimeError("the error path broke")

    store.fail = broken_fail
    worker.codec.decode = lambda *args, **kwargs: 1 / 0
    job = c.post("/api/songs", json=SONG).json()
    failed = wait_for(c, job["id"], timeout=60)
    assert failed["status"] == "failed" and "ZeroDivisionError" in failed["message"]
    del worker.codec.decode
    assert worker.alive()
    assert wait_for(c, c.post("/api/songs", json=SONG).json()["id"])["status"] == "done"
    assert c.get("/api/health").json()["worker"]["problem"] == ""


def test_health_turns_503_when_the_worker_thread_is_gone(make_client):
    c = make_client()
    ready(c)
    worker = c.app.state.worker
    worker._stop.set()  # the thread ends as if it had died
    worker.store.wakeup.set()
    wait_until(lambda: not worker.alive(), what="the thread to end")
    health = c.get("/api/health")
    assert health.status_code == 503 and "not running" in health.json()["problem"]
    assert health.json()["worker"]["alive"] is False


def test_a_graceful_stop_requeues_without_counting_an_attempt(make_client, model_root, tmp_path):
    data = tmp_path / "stops"
    slow = FullLengthSongs(model_root, frame_seconds=0.05)  # 60 s of song: longer than a stop waits (10 s)
    c = make_client(load_models=slow, data_dir=data)
    job = c.post("/api/songs", json=dict(SONG, duration=60.0)).json()
    for _ in range(MAX_ATTEMPTS + 1):  # more stops than a crashing job is allowed
        wait_until(lambda client=c: generating(client, job["id"]), what="the song to be generated")
        c.__exit__(None, None, None)  # lifespan shutdown, as uvicorn runs it on SIGTERM
        c = make_client(load_models=slow, data_dir=data)
        again = c.get(f"/api/songs/{job['id']}").json()
        assert again["status"] in ("queued", "running") and again["attempts"] <= 1, again
        assert c.app.state.recovery["requeued"] == [] and c.app.state.recovery["failed"] == []
    c.delete(f"/api/songs/{job['id']}")
    short = wait_for(c, c.post("/api/songs", json=SONG).json()["id"])
    assert short["status"] == "done" and short["attempts"] == 1
