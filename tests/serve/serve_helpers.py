"""Helpers shared by the server tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

SONG = {"lyrics": "[verse]\nhello river\n\n[chorus]\nla la la", "tags": "pop,piano", "duration": 1.0, "seed": 3}


def wait_for(client, job_id: str, timeout: float = 120.0, statuses=("done", "failed")) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/songs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not reach {statuses}: {job}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m heartmula serve` in a subprocess, for what only a real process shows: kill -9, a browser."""

    def __init__(self, model_root: Path, data_dir: Path, log: Path, *extra: str):
        self.model_root, self.data_dir, self.log, self.extra = model_root, data_dir, log, extra
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 240.0) -> ServerProcess:  # generous: CI machines can be heavily loaded
        command = [sys.executable, "-m", "heartmula", "serve", "--model", str(self.model_root), "--data",
                   str(self.data_dir), "--port", str(self.port), "--threads", "1", "--log-level", "warning",
                   *self.extra]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/api/health", timeout=2).json()["model"] == "ready":
                    return self
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"server did not get ready in {timeout} s:\n{self.log.read_text()}")

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()


class Gate:
    """A model loader that waits until the test opens it, so jobs can be queued before the worker starts."""

    def __init__(self, root: Path):
        self.root, self.event = root, threading.Event()

    def __call__(self):
        from heartmula.codec.pretrained import load_codec
        from heartmula.lm.pretrained import load_generator

        self.event.wait(60)
        return load_generator(self.root), load_codec(self.root)


class FullLengthSongs:
    """A model loader whose songs run their whole requested length (a random-weight model ends songs at random),
    so a test can act while one is being generated."""

    def __init__(self, root: Path, frame_seconds: float = 0.0):
        self.root = root
        self.frame_seconds = frame_seconds  # extra time per frame, to stand in for a big model

    def __call__(self):
        from heartmula.codec.pretrained import load_codec
        from heartmula.lm.pretrained import load_generator

        generator = load_generator(self.root)
        start = generator.start

        def full_length(*args, **kwargs):
            session = start(*args, **kwargs)
            session.min_new_frames = session.max_new_frames + 1
            if self.frame_seconds:
                next_frame = session.next_frame

                def slow_frame():
                    time.sleep(self.frame_seconds)
                    return next_frame()

                session.next_frame = slow_frame
            return session

        generator.start = full_length
        return generator, load_codec(self.root)


def set_read_only(store, on: bool) -> None:
    """The job database refuses writes (SQLITE_READONLY) like a file on a read-only mount."""
    with store._lock:
        store._db.execute(f"PRAGMA query_only = {int(on)}")


def set_database_full(store, on: bool) -> None:
    """The job database cannot grow (SQLITE_FULL) like a file on a full disk."""
    with store._lock:
        pages = store._db.execute("PRAGMA page_count").fetchone()[0] if on else 1 << 30
        store._db.execute(f"PRAGMA max_page_count = {pages}")


def wait_until(condition, timeout: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
