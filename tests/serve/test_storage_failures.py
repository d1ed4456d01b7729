"""Storage failures answer JSON naming the cause; nothing half-written or uploaded is left behind."""

from __future__ import annotations

import errno
import io

import numpy as np
import pytest
import soundfile as sf
from serve_helpers import SONG, Gate, set_database_full, wait_for, wait_until

from heartmula.serve.jobs import JobStore

DISK_FULL, READ_ONLY = "disk full", "read-only"


def ready(client) -> None:
    wait_until(lambda: client.get("/api/health").json()["model"] == "ready", what="the model")


def test_a_full_database_answers_503_json_naming_the_cause(make_client, model_root):
    gate = Gate(model_root)  # no model yet: jobs stay queued
    c = make_client(load_models=gate)
    store = c.app.state.store
    set_database_full(store, True)
    try:
        refused = c.post("/api/songs", json=dict(SONG, lyrics="la " * 3000))  # a row that needs new pages
    finally:
        set_database_full(store, False)
    assert refused.status_code == 503 and refused.headers["content-type"] == "application/json"
    assert refused.json()["cause"] == DISK_FULL and "disk full" in refused.json()["detail"]
    assert c.post("/api/songs", json=SONG).status_code == 201
    gate.event.set()


def full_disk(monkeypatch, calls: list) -> None:
    """libsndfile on a full disk: part of the file written, then "System error" (the errno is lost); the data
    folder's file system has no room left."""
    import shutil

    import heartmula.audio
    import heartmula.serve.storage

    def write(path, *args, **kwargs):
        calls.append(path)
        with open(path, "wb") as out:
            out.write(b"RIFF half a file")
        raise sf.LibsndfileError(2, "Error writing: ")

    monkeypatch.setattr(heartmula.audio.sf, "write", write)
    monkeypatch.setattr(heartmula.serve.storage.shutil, "disk_usage",
                        lambda path: shutil._ntuple_diskusage(1 << 30, 1 << 30, 0))


def test_a_full_disk_fails_the_job_with_the_cause_and_leaves_no_files(make_client, monkeypatch):
    c = make_client()
    store = c.app.state.store
    ready(c)
    calls = []
    full_disk(monkeypatch, calls)
    job = wait_for(c, c.post("/api/songs", json=SONG).json()["id"])
    assert calls and job["status"] == "failed" and "disk full" in job["message"], job
    assert not store.job_dir(job["id"]).exists()  # codes.npy was written first: it went too
    monkeypatch.undo()
    assert wait_for(c, c.post("/api/songs", json=SONG).json()["id"])["status"] == "done"


def test_song_files_land_together_or_not_at_all(tmp_path, monkeypatch):
    from heartmula.serve.jobs import write_song_files
    from heartmula.serve.storage import StorageError

    folder = tmp_path / "song"
    codes, audio = np.zeros((8, 5), dtype=np.int64), np.zeros((2, 480), dtype=np.float32)
    full_disk(monkeypatch, [])
    with pytest.raises(StorageError) as caught:
        write_song_files(folder, codes, audio, 48000)
    assert caught.value.cause == DISK_FULL
    assert list(folder.iterdir()) == []
    monkeypatch.undo()
    write_song_files(folder, codes, audio, 48000)
    assert sorted(p.name for p in folder.iterdir()) == ["codes.npy", "song.wav"]


def test_storage_causes_are_named():
    import sqlite3

    from heartmula.serve.storage import storage_cause

    assert storage_cause(OSError(errno.ENOSPC, "No space left on device")) == DISK_FULL
    assert storage_cause(OSError(errno.EROFS, "Read-only file system")) == READ_ONLY
    assert storage_cause(sqlite3.OperationalError("attempt to write a readonly database")) == READ_ONLY
    assert storage_cause(sqlite3.OperationalError("database or disk is full")) == DISK_FULL
    assert storage_cause(sqlite3.OperationalError("no such table: jobs")) is None
    assert storage_cause(ValueError("bad")) is None


def test_uploads_live_in_one_folder_that_a_start_empties(make_client, tmp_path, monkeypatch):
    data = tmp_path / "data"
    store = JobStore(data)
    uploads = data / "uploads"
    (uploads / "tmpcrash").mkdir(parents=True)
    (uploads / "tmpcrash" / "upload.wav").write_bytes(b"x" * 1000)  # a crash mid-upload
    (data / "tmpk2j3h4g5").mkdir()  # where older versions put uploads
    (data / "tmpk2j3h4g5" / "example.bin").write_bytes(b"x" * 1000)
    store.close()
    c = make_client(data_dir=data)
    assert list(uploads.iterdir()) == [] and not (data / "tmpk2j3h4g5").exists()

    import heartmula.serve.uploads

    seen = []

    def load_audio(path, *args, **kwargs):
        seen.append(path)
        raise ValueError("not audio")

    monkeypatch.setattr(heartmula.serve.uploads, "load_audio", load_audio)
    wav = io.BytesIO()
    sf.write(wav, np.zeros(1600, dtype=np.float32), 16000, format="WAV")
    response = c.post("/api/transcribe", files={"file": ("a.wav", wav.getvalue(), "audio/wav")})
    assert response.status_code == 422
    assert seen and seen[0].parent.parent == uploads
    assert list(uploads.iterdir()) == []  # removed once answered
