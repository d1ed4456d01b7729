"""Search the song library by text or by example: HeartCLAP embeddings in a heartmula.clap library index.

Every finished song is embedded once (by the worker, after its files are in place) and stored in DATA/clap-index/
under its job id; deleting a song removes it. Songs finished before search was available are embedded when the
server starts. The index's SQLite connection belongs to the thread that opened it, so every operation opens the
index under one lock: simple, and cheap next to embedding a song.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from heartmula.clap import DEFAULT_MODEL_DIR, load_clap
from heartmula.clap.index import Track, model_fingerprint, open_index
from heartmula.serve.jobs import AUDIO_FILE, JobStore

BACKFILL = "backfill"  # a queue item: embed every finished song the index does not hold


def default_clap_dir() -> Path | None:
    return DEFAULT_MODEL_DIR if (DEFAULT_MODEL_DIR / "model.safetensors").is_file() else None


class LibrarySearch:
    def __init__(self, store: JobStore, model_dir: str | os.PathLike, compute: Callable | None = None,
                 location: str | None = None):
        self.store = store
        self.model_dir = Path(model_dir)
        # compute(fn, *args) -> fn(*args): where embeddings run (the server's model thread, see SongWorker)
        self.compute = compute or (lambda fn, *args: fn(*args))
        self.folder = store.data_dir / "clap-index"
        # where the index lives: DATA/clap-index/, a Qdrant collection or a PostgreSQL table (clap.index.open_index)
        self.location = location or str(self.folder)
        self._lock = threading.RLock()
        self._model = None
        self._fingerprint = ""
        # Embedding runs in its own thread, so song generation never waits for the search index.
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._index_queued, name="heartmula-search", daemon=True)
        self._thread.start()

    def enqueue(self, job_id: str) -> None:
        self._queue.put(job_id)

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(10)

    def _index_queued(self) -> None:
        while (job_id := self._queue.get()) is not None:
            try:
                if job_id == BACKFILL:
                    self.backfill()
                else:
                    self.add(job_id)
            except Exception as exc:  # a song that cannot be embedded stays playable; it is just not searchable
                print(f"heartmula serve: cannot index {job_id} for search: {type(exc).__name__}: {exc}")

    def pending(self) -> int:
        return self._queue.qsize()

    def model(self):
        with self._lock:
            if self._model is None:
                self._model = load_clap(self.model_dir)
                self._fingerprint = model_fingerprint(self.model_dir)
            return self._model

    def _index(self):
        index = open_index(self.location, dim=self.model().config.embed_dim, model=self._fingerprint)
        index.check_model(self._fingerprint)
        return index

    # --- writes ----------------------------------------------------------------------------------------------
    def add(self, job_id: str) -> None:
        job = self.store.get(job_id)
        path = self.store.job_dir(job_id) / AUDIO_FILE
        if job is None or job.status != "done" or not path.is_file():
            return
        vector = self.compute(self.model().embed_file, path)
        with self._lock:
            index = self._index()
            try:
                index.add([Track(job_id, job.title, job.request.get("tags") or "", job.result.get("seconds"))],
                          vector[None])
            finally:
                index.close()
        if self.store.get(job_id) is None:  # deleted while it was being embedded
            self.remove(job_id)

    def remove(self, job_id: str) -> None:
        if self.location == str(self.folder) and not self.folder.is_dir():
            return
        with self._lock:
            index = self._index()
            try:
                index.remove([job_id])
            finally:
                index.close()

    def backfill(self) -> int:
        """Embed the finished songs the index does not hold yet; returns how many."""
        with self._lock:
            index = self._index()
            try:
                known = {t.path for t in index.tracks()}
            finally:
                index.close()
        done, _ = self.store.list(status="done", limit=10**9)
        missing = [job.id for job in done if job.id not in known]
        for job_id in missing:
            self.add(job_id)
        return len(missing)

    # --- reads -----------------------------------------------------------------------------------------------
    def _search(self, vector: np.ndarray, k: int, exclude: tuple[str, ...] = ()) -> list[tuple[str, float]]:
        with self._lock:
            index = self._index()
            try:
                return [(hit.track.path, hit.score) for hit in index.search(vector, k, exclude)]
            finally:
                index.close()

    def by_text(self, text: str, k: int) -> list[tuple[str, float]]:
        return self._search(self.compute(self.model().embed_text, text)[0], k)

    def by_audio_file(self, path: Path, k: int) -> list[tuple[str, float]]:
        return self._search(self.compute(self.model().embed_file, path), k)

    def similar(self, job_id: str, k: int) -> list[tuple[str, float]] | None:
        """Songs that sound like `job_id` (itself left out); None if that song is not in the index."""
        with self._lock:
            index = self._index()
            try:
                vector = index.vector(job_id)
            finally:
                index.close()
        return None if vector is None else self._search(vector, k, exclude=(job_id,))
