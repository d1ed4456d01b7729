"""The worker thread is the server's one model thread: calls run there, between the frames of a batch."""

from __future__ import annotations

import threading

import pytest
from serve_helpers import Gate

from heartmula.errors import HeartMuLaError
from heartmula.serve.jobs import JobStore, SongWorker


@pytest.fixture
def worker(model_root, tmp_path):
    gate = Gate(model_root)
    worker = SongWorker(JobStore(tmp_path / "data"), gate, log=lambda message: None)
    yield worker, gate
    worker.stop()


def test_calls_run_in_the_worker_thread_and_hand_back_results_and_errors(worker):
    worker, gate = worker
    refused = worker.call(lambda: 1)  # still loading: refused at once rather than queued forever
    with pytest.raises(HeartMuLaError, match="not ready"):
        refused.result(timeout=5)
    worker.start()
    gate.event.set()
    assert worker.ready.wait(60) and worker.state == "ready"
    assert worker.call(threading.get_ident).result(timeout=30) == worker._thread.ident
    assert worker.call(lambda a, b=0: a + b, 2, b=3).result(timeout=30) == 5
    with pytest.raises(ZeroDivisionError):
        worker.call(lambda: 1 / 0).result(timeout=30)


def test_calls_take_turns_with_a_batch_frame_by_frame(worker):
    worker, gate = worker
    worker.start()
    gate.event.set()
    assert worker.ready.wait(60)
    frames = []
    original = worker.generator.start

    def start(*args, **kwargs):  # a song that runs its whole length, its frames counted as they are generated
        session = original(*args, **kwargs, min_new_frames=kwargs["max_new_frames"] + 1)
        step = session.next_frame

        def counted():
            frames.append(1)
            return step()

        session.next_frame = counted
        return session

    worker.generator.start = start
    job = worker.store.create("song", dict(lyrics="", tags="pop", seed=1, duration=4.0, temperature=1.0, top_k=50,
                                           cfg_scale=1.5))
    while not frames:
        threading.Event().wait(0.01)
    seen = [worker.call(lambda: len(frames)).result(timeout=60) for _ in range(3)]
    while worker.store.get(job.id).status != "done":
        threading.Event().wait(0.05)
    assert 0 < seen[0] <= seen[1] <= seen[2] < len(frames) == 51  # served between frames, while the song went on
    worker.stop()
    with pytest.raises(HeartMuLaError):
        worker.call(lambda: 1).result(timeout=5)
