"""The persistent job queue (SQLite) and the worker that turns queued song jobs into audio.

Crash safety, in order of events for one job:
1. `create` inserts a row `queued` (committed before the HTTP answer, so an accepted job survives a crash);
2. `claim_batch` marks the oldest queued job and compatible ones `running` and counts an attempt;
3. the worker writes codes.npy and song.wav under songs/<id>/ through atomic_output (temp name, then rename);
4. `finish` marks the row `done` only after both files are in place.
A `kill -9` anywhere leaves either a `done` row whose files are complete, or a `running` row that `recover` puts
back in the queue (or fails with a reason once a job has been interrupted MAX_ATTEMPTS times: a job that keeps
killing the server must not do so forever). Leftover temp files and folders of deleted jobs are swept at start.
"""

from __future__ import annotations

import json
import queue
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from heartmula.errors import HeartMuLaError
from heartmula.files import atomic_output

STATUSES = ("queued", "running", "done", "failed")
MAX_ATTEMPTS = 2
ID_PATTERN = r"^[0-9a-f]{32}$"
_ID = re.compile(ID_PATTERN)
AUDIO_FILE = "song.wav"
CODES_FILE = "codes.npy"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    request TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    result TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created);
"""


def valid_id(job_id: str) -> bool:
    return bool(_ID.match(job_id))


@dataclass
class Job:
    id: str
    kind: str
    status: str
    title: str
    request: dict
    progress: float = 0.0
    message: str = ""
    attempts: int = 0
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    result: dict = field(default_factory=dict)

    def public(self) -> dict:
        return {
            "id": self.id, "kind": self.kind, "status": self.status, "title": self.title,
            "progress": round(self.progress, 4), "message": self.message, "attempts": self.attempts,
            "created": self.created, "started": self.started, "finished": self.finished,
            "request": self.request, "result": self.result,
        }


def _row_to_job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"], kind=row["kind"], status=row["status"], title=row["title"], request=json.loads(row["request"]),
        progress=row["progress"], message=row["message"], attempts=row["attempts"], created=row["created"],
        started=row["started"], finished=row["finished"], result=json.loads(row["result"] or "{}"),
    )


class JobStore:
    """Jobs in DATA/jobs.sqlite3, results in DATA/songs/<id>/. Safe to use from several threads."""

    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir)
        self.songs_dir = self.data_dir / "songs"
        self.songs_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.wakeup = threading.Event()  # set when a job is queued, so the worker does not poll
        self._db = sqlite3.connect(self.data_dir / "jobs.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            # WAL: readers (polling clients) never block the worker's writes; FULL sync: a committed row survives
            # a crash of the process and of the machine.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- paths -------------------------------------------------------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        if not valid_id(job_id):  # the only place ids become paths: never let '../' or '/' through
            raise HeartMuLaError(f"invalid job id {job_id!r}")
        return self.songs_dir / job_id

    # --- writes --------------------------------------------------------------------------------------------------
    def create(self, kind: str, request: dict, title: str = "", status: str = "queued") -> Job:
        job = Job(id=uuid.uuid4().hex, kind=kind, status=status, title=title, request=request, created=time.time())
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, kind, status, title, request, created) VALUES (?, ?, ?, ?, ?, ?)",
                (job.id, kind, status, title, json.dumps(request), job.created),
            )
        if status == "queued":
            self.wakeup.set()
        return job

    def claim_batch(self, max_batch: int, compatible: Callable[[Job, Job], bool]) -> list[Job]:
        """Mark the oldest queued job and up to max_batch-1 compatible queued ones running; return them."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    "SELECT * FROM jobs WHERE status = 'queued' AND kind = 'song' ORDER BY created, id LIMIT 200"
                ).fetchall()
                if not rows:
                    self._db.execute("COMMIT")
                    return []
                queued = [_row_to_job(r) for r in rows]
                lead = queued[0]
                batch = [lead] + [j for j in queued[1:] if j.kind == lead.kind and compatible(lead, j)]
                batch = batch[:max_batch]
                now = time.time()
                for job in batch:
                    job.status, job.attempts, job.started, job.progress = "running", job.attempts + 1, now, 0.0
                    self._db.execute(
                        "UPDATE jobs SET status = 'running', attempts = ?, started = ?, progress = 0 WHERE id = ?",
                        (job.attempts, now, job.id),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return batch

    def set_progress(self, job_id: str, progress: float, message: str = "") -> bool:
        """False when the job is gone (deleted by a client): the worker then stops working on it."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE jobs SET progress = ?, message = ? WHERE id = ? AND status = 'running'",
                (float(progress), message, job_id),
            )
        return cursor.rowcount == 1

    def finish(self, job_id: str, result: dict) -> bool:
        with self._lock:
            cursor = self._db.execute(
                "UPDATE jobs SET status = 'done', progress = 1, message = '', finished = ?, result = ? "
                "WHERE id = ? AND status = 'running'",
                (time.time(), json.dumps(result), job_id),
            )
        return cursor.rowcount == 1

    def fail(self, job_id: str, reason: str) -> bool:
        with self._lock:
            cursor = self._db.execute(
                "UPDATE jobs SET status = 'failed', message = ?, finished = ? WHERE id = ? AND status = 'running'",
                (reason, time.time(), job_id),
            )
        return cursor.rowcount == 1

    def requeue(self, job_id: str, message: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status = 'queued', progress = 0, message = ? WHERE id = ? AND status = 'running'",
                (message, job_id),
            )
        self.wakeup.set()

    def delete(self, job_id: str) -> bool:
        """Remove the row and the files; a running job notices at its next progress update and is dropped."""
        folder = self.job_dir(job_id)
        with self._lock:
            cursor = self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        shutil.rmtree(folder, ignore_errors=True)
        return cursor.rowcount == 1

    def recover(self) -> dict:
        """After a start: re-queue (or fail) jobs a crash left running; sweep temp files and orphaned folders."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            running = self._db.execute("SELECT id, kind, attempts FROM jobs WHERE status = 'running'").fetchall()
            requeued, failed = [], []
            for row in running:
                if row["kind"] != "song":  # a live stream cannot be redone: its listener and controls are gone
                    self._db.execute(
                        "UPDATE jobs SET status = 'failed', message = ?, finished = ? WHERE id = ?",
                        ("the server stopped while this live stream was being saved", time.time(), row["id"]),
                    )
                    failed.append(row["id"])
                elif row["attempts"] >= MAX_ATTEMPTS:
                    reason = (f"the server stopped while generating this song {row['attempts']} times; giving up "
                              "(it may need more memory than the server has)")
                    self._db.execute("UPDATE jobs SET status = 'failed', message = ?, finished = ? WHERE id = ?",
                                     (reason, time.time(), row["id"]))
                    failed.append(row["id"])
                else:
                    self._db.execute(
                        "UPDATE jobs SET status = 'queued', progress = 0, message = ? WHERE id = ?",
                        ("re-queued: the server stopped while this song was being generated", row["id"]),
                    )
                    requeued.append(row["id"])
            self._db.execute("COMMIT")
            known = {r["id"]: r["status"] for r in self._db.execute("SELECT id, status FROM jobs")}
        removed = 0
        for folder in self.songs_dir.iterdir():
            status = known.get(folder.name)
            if status is None or not folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True) if folder.is_dir() else folder.unlink(missing_ok=True)
                removed += 1
                continue
            for tmp in folder.glob(".*.part*"):  # atomic_output's temp names: a write a crash interrupted
                tmp.unlink(missing_ok=True)
                removed += 1
            if status in ("queued", "failed"):  # partial results of an interrupted run are redone from scratch
                shutil.rmtree(folder, ignore_errors=True)
        if requeued:
            self.wakeup.set()
        return {"requeued": requeued, "failed": failed, "removed": removed}

    # --- reads ---------------------------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        if not valid_id(job_id):
            return None
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _row_to_job(row) if row else None

    def list(self, query: str = "", status: str | None = None, limit: int = 50, offset: int = 0,
             ids: list[str] | None = None) -> tuple[list[Job], int]:
        where, params = [], []
        if status:
            where.append("status = ?")
            params.append(status)
        if query:
            # Text search over the title, tags and lyrics (the request JSON holds both); LIKE wildcards escaped.
            pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append("(title LIKE ? ESCAPE '\\' OR request LIKE ? ESCAPE '\\')")
            params += [pattern, pattern]
        if ids is not None:
            where.append(f"id IN ({','.join('?' * len(ids))})" if ids else "0")
            params += ids
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM jobs {clause}", params).fetchone()[0]
            rows = self._db.execute(
                f"SELECT * FROM jobs {clause} ORDER BY created DESC, id LIMIT ? OFFSET ?", [*params, limit, offset]
            ).fetchall()
        return [_row_to_job(r) for r in rows], total

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        return {status: 0 for status in STATUSES} | {r["status"]: r["n"] for r in rows}


def write_codes(path: Path, codes: np.ndarray) -> None:
    with atomic_output(path) as tmp:
        np.save(tmp, np.asarray(codes, dtype=np.int64))


# --- the worker ------------------------------------------------------------------------------------------------
LM_SHARE = 0.9  # share of a job's progress bar spent in the language model; the codec takes the rest


def sampling_key(request: dict) -> tuple:
    return (float(request["temperature"]), int(request["top_k"]), float(request["cfg_scale"]))


def batch_compatible(lead: Job, other: Job) -> bool:
    """Songs share one LM batch when they sample alike and have similar lengths (a batch runs as long as its
    longest song, so a 10 s song must not wait for a 4-minute one)."""
    if sampling_key(lead.request) != sampling_key(other.request):
        return False
    ratio = float(other.request["duration"]) / float(lead.request["duration"])
    return 0.75 <= ratio <= 1.0 / 0.75


class SongWorker:
    """One thread: loads the models, then claims batches of queued song jobs and generates them.

    It is also the thread of every other use of the models (`call`: live streams): torch's CPU kernels run on GNU
    OpenMP, which nearly stops spin-waiting once more of its threads exist than cores, so a second thread doing
    multi-threaded model work makes both about twice as slow per frame (see heartmula.stream.pacer).
    """

    def __init__(self, store: JobStore, load_models: Callable[[], tuple], max_batch: int = 4,
                 model_lock: threading.Lock | None = None, log: Callable[[str], None] = print,
                 after_finish: Callable[[str], None] | None = None, on_ready: Callable[[], None] | None = None):
        self.store = store
        self.load_models = load_models
        self.max_batch = max(1, max_batch)
        self.model_lock = model_lock or threading.Lock()  # KV caches live in the model: one session at a time
        self.log = log
        self.after_finish, self.on_ready = after_finish, on_ready  # e.g. the library search index
        self.state, self.error = "loading", ""
        self.generator = self.codec = None
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="heartmula-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.store.wakeup.set()
        self._thread.join(timeout)
        self._fail_calls("the server is stopping")

    def call(self, fn: Callable, *args, **kwargs) -> Future:
        """Run fn(*args, **kwargs) in the worker thread, between two frames of the batch in hand (if any)."""
        future: Future = Future()
        if self.state != "ready" or self._stop.is_set():
            future.set_exception(HeartMuLaError(f"the model is not ready ({self.state})"))
        elif threading.current_thread() is self._thread:  # already there (a hook): waiting would be forever
            self._calls.put((future, fn, args, kwargs))
            self._serve_calls()
        else:
            self._calls.put((future, fn, args, kwargs))
            self.store.wakeup.set()
        return future

    def _queued_calls(self):
        """The calls queued so far (not cancelled by their callers), each marked running."""
        while True:
            try:
                future, fn, args, kwargs = self._calls.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                yield future, fn, args, kwargs

    def _serve_calls(self) -> None:
        for future, fn, args, kwargs in self._queued_calls():
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to the caller, as an executor would
                future.set_exception(exc)

    def _fail_calls(self, reason: str) -> None:
        for future, *_ in self._queued_calls():
            future.set_exception(HeartMuLaError(reason))

    def _run(self) -> None:
        import torch

        try:
            self.generator, self.codec = self.load_models()
            try:  # the streaming engine's lock for this model, so live streams and jobs share the model
                from heartmula.stream import model_lock

                self.model_lock = model_lock(self.generator.model)
            except ImportError:
                pass
            self.state = "ready"
        except Exception as exc:  # a bad checkpoint: keep serving (list, download, transcribe), say why in health
            self.state, self.error = "error", f"{type(exc).__name__}: {exc}"
            self.log(f"heartmula serve: cannot load the models: {self.error}")
            return
        finally:
            self.ready.set()
        self._hook(self.on_ready)
        try:
            while not self._stop.is_set():
                self._serve_calls()
                batch = self.store.claim_batch(self.max_batch, batch_compatible)
                if not batch:
                    self.store.wakeup.wait(1.0)
                    self.store.wakeup.clear()
                    continue
                with torch.inference_mode():
                    self._run_batch(batch)
        finally:
            self._fail_calls("the server is stopping")

    def _run_batch(self, jobs: list[Job]) -> None:
        try:
            self._generate(jobs)
        except HeartMuLaError as exc:
            if len(jobs) > 1:  # one bad song (e.g. too long for the context) must not fail its batch mates
                for job in jobs:
                    self._run_batch([job])
            else:
                self.store.fail(jobs[0].id, str(exc))
        except Exception as exc:
            import traceback

            self.log(traceback.format_exc())
            for job in jobs:
                self.store.fail(job.id, f"internal error: {type(exc).__name__}: {exc}")

    def _generate(self, jobs: list[Job]) -> None:
        import torch

        from heartmula.lm.generation import SamplingParams, SongRequest, frames_for_duration

        started = time.time()
        temperature, top_k, cfg_scale = sampling_key(jobs[0].request)
        sampling = SamplingParams(temperature=temperature, top_k=top_k, cfg_scale=cfg_scale)
        songs = [SongRequest(lyrics=j.request["lyrics"], tags=j.request["tags"], seed=j.request["seed"]) for j in jobs]
        frames = [frames_for_duration(float(j.request["duration"])) + 1 for j in jobs]  # + the prefill frame
        alive = [True] * len(jobs)
        steps = []
        last_report = 0.0
        lock = self.model_lock
        session = self.generator.start(songs, sampling, max_new_frames=max(frames) - 1)
        try:
            # Frame by frame under the model lock: live streams sharing the model take turns with this batch
            # (every session has its own KV caches) instead of waiting for the whole batch.
            while session.frame_index <= session.max_new_frames:
                with lock:
                    step = session.next_frame()
                self._serve_calls()  # live streams take turns with this batch, frame by frame
                steps.append(step.codes)
                if len(steps) % 8 == 0 and bool(session.ended.all()):
                    break
                if time.time() - last_report > 0.25:
                    last_report = time.time()
                    for i, job in enumerate(jobs):
                        if alive[i]:
                            done = min(1.0, len(steps) / frames[i])
                            alive[i] = self.store.set_progress(job.id, LM_SHARE * done, "generating")
                    if not any(alive):
                        return  # every song of the batch was deleted
            lengths = session.lengths.cpu().tolist()
        finally:
            with lock:
                session.close()
        codes = torch.stack(steps, dim=-1).cpu()  # [songs, K, T]
        lm_seconds = time.time() - started
        for i, job in enumerate(jobs):
            if not alive[i] or not self.store.set_progress(job.id, LM_SHARE, "decoding audio"):
                continue
            song_codes = codes[i, :, : min(lengths[i], frames[i])].numpy()
            audio, rate = self.codec.decode(song_codes, seed=job.request["seed"])
            folder = self.store.job_dir(job.id)
            write_codes(folder / CODES_FILE, song_codes)
            from heartmula.audio import fit_peak, save_audio

            save_audio(folder / AUDIO_FILE, fit_peak(audio), rate)
            result = {
                "seconds": round(audio.shape[-1] / rate, 3), "sample_rate": rate, "channels": int(audio.shape[0]),
                "frames": int(song_codes.shape[-1]), "batch_size": len(jobs),
                "lm_seconds": round(lm_seconds, 3), "total_seconds": round(time.time() - started, 3),
            }
            if not self.store.finish(job.id, result):  # deleted while decoding: leave nothing behind
                shutil.rmtree(folder, ignore_errors=True)
            else:
                self._hook(self.after_finish, job.id)

    def _hook(self, hook, *args) -> None:
        """Extras (search indexing) never fail a song: a problem there is logged and the song stays done."""
        if hook is None:
            return
        try:
            hook(*args)
        except Exception as exc:
            self.log(f"heartmula serve: {getattr(hook, '__name__', 'hook')} failed: {type(exc).__name__}: {exc}")
