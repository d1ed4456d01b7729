"""The persistent job queue (SQLite) and the worker that turns queued song jobs into audio.

Crash safety, in order of events for one job:
1. `create` inserts a row `queued` (committed before the HTTP answer, so an accepted job survives a crash);
2. `claim_batch` marks the oldest queued job and compatible ones `running` and counts an attempt;
3. the worker writes codes.npy and song.wav under songs/<id>/ to temp names, then renames both (write_song_files);
4. `finish` marks the row `done` only after both files are in place.
A `kill -9` anywhere leaves either a `done` row whose files are complete, or a `running` row that `recover` puts
back in the queue (or fails with a reason once a job has been interrupted MAX_ATTEMPTS times: a job that keeps
killing the server must not do so forever). A graceful stop re-queues the batch in hand without counting an
attempt. Leftover temp files, folders of deleted jobs and uploads are swept at start.

Storage failures: a statement that fails for lack of storage is retried briefly, then raised as StorageError naming
the cause. A job whose files or row cannot be written is failed with that cause; if even the failure cannot be
recorded, the worker keeps it owed and records it once the store works again (see SongWorker).
"""

from __future__ import annotations

import json
import os
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
from typing import TypeVar

import numpy as np

from heartmula.audio import fit_peak, save_audio
from heartmula.errors import HeartMuLaError
from heartmula.files import atomic_output
from heartmula.lm.generation import SamplingParams, SongRequest, frames_for_duration
from heartmula.pipeline import keep_seconds
from heartmula.serve.storage import StorageError, as_storage_error, storage_cause
from heartmula.stream import model_lock

STATUSES = ("queued", "running", "done", "failed")
MAX_ATTEMPTS = 2
ID_PATTERN = r"^[0-9a-f]{32}$"
_ID = re.compile(ID_PATTERN)
AUDIO_FILE = "song.wav"
CODES_FILE = "codes.npy"
STAGED_AUDIO, STAGED_CODES = ".song.part.wav", ".codes.part.npy"  # swept by recover like any ".*.part*"
T = TypeVar("T")

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
    """Jobs in DATA/jobs.sqlite3, results in DATA/songs/<id>/, uploads in DATA/uploads/. Safe to use from several
    threads. A statement that fails for lack of storage (read-only, disk full) is retried for `retry_seconds`,
    then raised as a StorageError naming the cause."""

    def __init__(self, data_dir: str | Path, retry_seconds: float = 2.0):
        self.data_dir = Path(data_dir)
        self.songs_dir = self.data_dir / "songs"
        self.uploads_dir = self.data_dir / "uploads"
        self.songs_dir.mkdir(parents=True, exist_ok=True)
        self.uploads_dir.mkdir(exist_ok=True)
        self.retry_seconds = retry_seconds
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

    def _sql(self, work: Callable[[sqlite3.Connection], T], retry: bool = True) -> T:
        """work(db) under the lock; storage failures retried with backoff, then raised as StorageError."""
        deadline = time.monotonic() + (self.retry_seconds if retry else 0.0)
        delay = 0.02
        while True:
            try:
                with self._lock:
                    return work(self._db)
            except sqlite3.Error as exc:
                problem = as_storage_error(exc, "the job database cannot be written")
                if problem is None:
                    raise
                if time.monotonic() >= deadline:
                    raise problem from exc
            time.sleep(delay)
            delay = min(2 * delay, 0.25)

    def _execute(self, sql: str, params: tuple = (), retry: bool = True) -> sqlite3.Cursor:
        return self._sql(lambda db: db.execute(sql, params), retry)

    # --- paths -------------------------------------------------------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        if not valid_id(job_id):  # the only place ids become paths: never let '../' or '/' through
            raise HeartMuLaError(f"invalid job id {job_id!r}")
        return self.songs_dir / job_id

    # --- writes --------------------------------------------------------------------------------------------------
    def create(self, kind: str, request: dict, title: str = "", status: str = "queued") -> Job:
        job = Job(id=uuid.uuid4().hex, kind=kind, status=status, title=title, request=request, created=time.time())
        self._execute(
            "INSERT INTO jobs (id, kind, status, title, request, created) VALUES (?, ?, ?, ?, ?, ?)",
            (job.id, kind, status, title, json.dumps(request), job.created),
        )
        if status == "queued":
            self.wakeup.set()
        return job

    def claim_batch(self, max_batch: int, compatible: Callable[[Job, Job], bool]) -> list[Job]:
        """Mark the oldest queued job and up to max_batch-1 compatible queued ones running; return them."""

        def claim(db: sqlite3.Connection) -> list[Job]:
            rows = db.execute(
                "SELECT * FROM jobs WHERE status = 'queued' AND kind = 'song' ORDER BY created, id LIMIT 200"
            ).fetchall()
            if not rows:
                return []
            queued = [_row_to_job(r) for r in rows]
            lead = queued[0]
            batch = [lead] + [j for j in queued[1:] if j.kind == lead.kind and compatible(lead, j)]
            batch = batch[:max_batch]
            now = time.time()
            for job in batch:
                job.status, job.attempts, job.started, job.progress = "running", job.attempts + 1, now, 0.0
                db.execute("UPDATE jobs SET status = 'running', attempts = ?, started = ?, progress = 0 WHERE id = ?",
                           (job.attempts, now, job.id))
            return batch

        return self._sql(lambda db: _transaction(db, claim))

    def set_progress(self, job_id: str, progress: float, message: str = "") -> bool:
        """False when the job is gone (deleted by a client): the worker then stops working on it. A progress bar
        is not worth a song: when the store cannot take it, it is skipped (no retry) and the job goes on."""
        try:
            cursor = self._execute("UPDATE jobs SET progress = ?, message = ? WHERE id = ? AND status = 'running'",
                                   (float(progress), message, job_id), retry=False)
        except StorageError:
            return True
        return cursor.rowcount == 1

    def finish(self, job_id: str, result: dict) -> bool:
        cursor = self._execute(
            "UPDATE jobs SET status = 'done', progress = 1, message = '', finished = ?, result = ? "
            "WHERE id = ? AND status = 'running'",
            (time.time(), json.dumps(result), job_id),
        )
        return cursor.rowcount == 1

    def fail(self, job_id: str, reason: str) -> bool:
        cursor = self._execute(
            "UPDATE jobs SET status = 'failed', message = ?, finished = ? WHERE id = ? AND status = 'running'",
            (reason, time.time(), job_id),
        )
        return cursor.rowcount == 1

    def requeue(self, job_id: str, message: str, count_attempt: bool = True) -> bool:
        """Back to the queue. count_attempt=False (a graceful stop) takes back the attempt the claim counted:
        only crashes count towards MAX_ATTEMPTS."""
        refund = 0 if count_attempt else 1
        cursor = self._execute(
            "UPDATE jobs SET status = 'queued', progress = 0, message = ?, attempts = MAX(0, attempts - ?) "
            "WHERE id = ? AND status = 'running'",
            (message, refund, job_id),
        )
        self.wakeup.set()
        return cursor.rowcount == 1

    def delete(self, job_id: str) -> bool:
        """Remove the row and the files; a running job notices at its next progress update and is dropped."""
        folder = self.job_dir(job_id)
        cursor = self._execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        shutil.rmtree(folder, ignore_errors=True)
        return cursor.rowcount == 1

    def recover(self) -> dict:
        """After a start: re-queue (or fail) jobs a crash left running; sweep temp files, orphaned folders and
        uploads."""
        requeued, failed = self._sql(lambda db: _transaction(db, _recover_rows))
        known = {r["id"]: r["status"] for r in self._sql(lambda db: db.execute("SELECT id, status FROM jobs"))}
        removed = self._sweep_songs(known) + self._sweep_uploads()
        if requeued:
            self.wakeup.set()
        return {"requeued": requeued, "failed": failed, "removed": removed}

    def _sweep_songs(self, known: dict[str, str]) -> int:
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
        return removed

    def _sweep_uploads(self) -> int:
        """Empty DATA/uploads/ (and the DATA/tmp* folders older versions put uploads in)."""
        leftovers = list(self.uploads_dir.iterdir()) + [p for p in self.data_dir.glob("tmp*") if p.is_dir()]
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        return len(leftovers)

    # --- reads ---------------------------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        if not valid_id(job_id):
            return None
        row = self._execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _row_to_job(row) if row else None

    def list(self, query: str = "", status: str | None = None, limit: int = 50, offset: int = 0,
             ids: list[str] | None = None) -> tuple[list[Job], int]:
        where, params = [], []
        if status:
            where.append("status = ?")
            params.append(status)
        if "\x00" in query:  # SQLite's LIKE stops at a NUL: the pattern would shrink to '%' and match every song
            where.append("0")
        elif query:
            # Text search over the title, tags and lyrics (the request JSON holds both); LIKE wildcards escaped.
            pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append("(title LIKE ? ESCAPE '\\' OR request LIKE ? ESCAPE '\\')")
            params += [pattern, pattern]
        if ids is not None:
            where.append(f"id IN ({','.join('?' * len(ids))})" if ids else "0")
            params += ids
        clause = f"WHERE {' AND '.join(where)}" if where else ""

        def read(db: sqlite3.Connection) -> tuple[list, int]:
            total = db.execute(f"SELECT COUNT(*) FROM jobs {clause}", params).fetchone()[0]
            rows = db.execute(f"SELECT * FROM jobs {clause} ORDER BY created DESC, id LIMIT ? OFFSET ?",
                              [*params, limit, offset]).fetchall()
            return rows, total

        rows, total = self._sql(read)
        return [_row_to_job(r) for r in rows], total

    def counts(self) -> dict[str, int]:
        rows = self._execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        return {status: 0 for status in STATUSES} | {r["status"]: r["n"] for r in rows}


def _transaction(db: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    db.execute("BEGIN IMMEDIATE")
    try:
        result = work(db)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:  # the connection rolls back on its own when it cannot
                pass
        raise
    return result


def _recover_rows(db: sqlite3.Connection) -> tuple[list[str], list[str]]:
    running = db.execute("SELECT id, kind, attempts FROM jobs WHERE status = 'running'").fetchall()
    requeued, failed = [], []
    now = time.time()
    for row in running:
        if row["kind"] != "song":  # a live stream cannot be redone: its listener and controls are gone
            reason = "the server stopped while this live stream was being saved"
        elif row["attempts"] >= MAX_ATTEMPTS:
            reason = (f"the server stopped while generating this song {row['attempts']} times; giving up "
                      "(it may need more memory than the server has)")
        else:
            db.execute("UPDATE jobs SET status = 'queued', progress = 0, message = ? WHERE id = ?",
                       ("re-queued: the server stopped while this song was being generated", row["id"]))
            requeued.append(row["id"])
            continue
        db.execute("UPDATE jobs SET status = 'failed', message = ?, finished = ? WHERE id = ?",
                   (reason, now, row["id"]))
        failed.append(row["id"])
    return requeued, failed


def write_codes(path: Path, codes: np.ndarray) -> None:
    with atomic_output(path) as tmp:
        np.save(tmp, np.asarray(codes, dtype=np.int64))


def write_song_files(folder: Path, codes: np.ndarray | None, audio: np.ndarray, rate: int) -> None:
    """codes.npy and song.wav land together or not at all: both are written under temp names in the job folder,
    then renamed. On failure nothing of this call is left behind; the error names the cause when it is storage
    (StorageError: disk full, read-only)."""
    staged = {folder / STAGED_AUDIO: folder / AUDIO_FILE}
    if codes is not None:
        staged[folder / STAGED_CODES] = folder / CODES_FILE
    try:
        if codes is not None:
            write_codes(folder / STAGED_CODES, codes)
        save_audio(folder / STAGED_AUDIO, audio, rate)
        for temp, final in staged.items():
            os.replace(temp, final)
    except Exception as exc:
        for temp in staged:
            temp.unlink(missing_ok=True)
        problem = as_storage_error(exc, "cannot write the song's files", folder)
        if problem is not None:
            raise problem from exc
        raise


def prompt_codes(store: JobStore, request: dict) -> np.ndarray | None:
    """The frames [8, T] a job continues (the kept start of the library song `continue_from`), or None."""
    source = request.get("continue_from")
    if source is None:
        return None
    try:
        codes = np.load(store.job_dir(source) / CODES_FILE, allow_pickle=False)
    except FileNotFoundError:
        raise HeartMuLaError(f"the song to continue ({source}) is gone: it was deleted") from None
    return keep_seconds(codes.astype(np.int64), request.get("from_seconds"))


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


class WorkerStopping(Exception):
    """Raised between frames when the server stops: the batch goes back to the queue, no attempt counted."""


@dataclass
class WorkerHealth:
    alive: bool  # the thread runs
    state: str  # loading | ready | error (the models could not be loaded)
    busy: bool  # a batch is in hand
    heartbeat_age: float  # seconds since the worker last showed it was working (a loop turn or a frame)
    queued: int
    running: int
    problem: str  # why the worker cannot work now ("" when it can)


class SongWorker:
    """One thread: loads the models, then claims batches of queued song jobs and generates them.

    It is also the thread of every other use of the models (`call`: live streams): torch's CPU kernels run on GNU
    OpenMP, which nearly stops spin-waiting once more of its threads exist than cores, so a second thread doing
    multi-threaded model work makes both about twice as slow per frame (see heartmula.stream.pacer).

    Supervised: an exception anywhere in a loop turn, the error path included (a store that cannot be written),
    is contained. Jobs whose failure could not be recorded are kept in `owed_failures` and failed with their reason
    once the store works again; `health()` reports the problem meanwhile. A stop between frames puts the batch
    back in the queue without counting an attempt.
    """

    def __init__(self, store: JobStore, load_models: Callable[[], tuple], max_batch: int = 4,
                 model_lock: threading.Lock | None = None, log: Callable[[str], None] = print,
                 after_finish: Callable[[str], None] | None = None, on_ready: Callable[[], None] | None = None,
                 stall_seconds: float = 600.0):
        self.store = store
        self.load_models = load_models
        self.max_batch = max(1, max_batch)
        self.model_lock = model_lock or threading.Lock()  # sessions on one model take turns frame by frame
        self.log = log
        self.after_finish, self.on_ready = after_finish, on_ready  # e.g. the library search index
        self.stall_seconds = stall_seconds  # health turns 503 when a batch shows no progress for this long
        self.state, self.error = "loading", ""
        self.generator = self.codec = None
        self.ready = threading.Event()
        self.problem = ""
        self.owed_failures: dict[str, str] = {}  # job id -> reason, for failures the store could not record yet
        self.heartbeat = time.monotonic()
        self._in_hand: set[str] = set()  # ids of the batch being generated, not finished or failed yet
        self._stop = threading.Event()
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="heartmula-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the frame in hand; its batch goes back to the queue (no attempt counted). A frame or a
        decode still running after `timeout` is left to die with the process; its jobs are re-queued here."""
        self._stop.set()
        self.store.wakeup.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            self._requeue(list(self._in_hand))
        self._fail_calls("the server is stopping")

    def alive(self) -> bool:
        return self._thread.is_alive()

    def health(self) -> WorkerHealth:
        try:
            counts, problem = self.store.counts(), self.problem
        except StorageError as exc:
            counts, problem = {}, self.problem or str(exc)
        age = time.monotonic() - self.heartbeat
        busy = bool(self._in_hand)
        if self.state == "error":
            problem = f"the models could not be loaded: {self.error}"
        elif not self.alive() and not problem:
            problem = "the worker thread is not running" + (f" ({self.error})" if self.error else "")
        elif busy and age > self.stall_seconds and not problem:
            problem = f"the worker shows no progress for {age:.0f} s"
        return WorkerHealth(alive=self.alive(), state=self.state, busy=busy, heartbeat_age=round(age, 3),
                            queued=counts.get("queued", -1), running=counts.get("running", -1), problem=problem)

    def call(self, fn: Callable, *args, **kwargs) -> Future:
        """Run fn(*args, **kwargs) in the worker thread, between two frames of the batch in hand (if any)."""
        future: Future = Future()
        if self.state != "ready" or self._stop.is_set() or not self._thread.is_alive():
            reason = self.state if self.state != "ready" else "stopped"
            future.set_exception(HeartMuLaError(f"the model is not ready ({reason})"))
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

    # --- the loop ------------------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            if self._load():
                self._hook(self.on_ready)
                self._supervised_loop()
        except BaseException as exc:  # not an Exception (e.g. SystemExit): health shows the thread has ended
            self.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self._fail_calls("the server is stopping")

    def _load(self) -> bool:
        try:
            self.generator, self.codec = self.load_models()
            try:  # the streaming engine's lock for this model, so live streams and jobs take turns on its cores

                self.model_lock = model_lock(self.generator.model)
            except ImportError:
                pass
            self.state = "ready"
            return True
        except Exception as exc:  # a bad checkpoint: keep serving (list, download, transcribe), say why in health
            self.state, self.error = "error", f"{type(exc).__name__}: {exc}"
            self.log(f"heartmula serve: cannot load the models: {self.error}")
            return False
        finally:
            self.ready.set()

    def _supervised_loop(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            try:
                self._turn()
                backoff = 0.1
            except Exception as exc:  # contained: log it, say it in health, wait a little, go on
                self.problem = str(exc) if isinstance(exc, StorageError) else f"{type(exc).__name__}: {exc}"
                self.log(f"heartmula serve: worker: {self.problem}")
                self._stop.wait(backoff)
                backoff = min(2 * backoff, 5.0)

    def _turn(self) -> None:
        """One loop turn: serve calls, record owed failures, then generate one batch or wait for work."""
        import torch

        self._serve_calls()
        self._settle_failures()
        batch = self.store.claim_batch(self.max_batch, batch_compatible)
        self.problem = ""
        if not batch:
            self.store.wakeup.wait(1.0)
            self.store.wakeup.clear()
            return
        self._in_hand = {job.id for job in batch}
        try:
            with torch.inference_mode():
                self._run_batch(batch)
        finally:
            self._in_hand = set()
        self._settle_failures()

    def _run_batch(self, jobs: list[Job]) -> None:
        try:
            self._generate(jobs)
        except WorkerStopping:
            self._requeue([job.id for job in jobs if job.id in self._in_hand])
        except HeartMuLaError as exc:
            if len(jobs) > 1:  # one bad song (e.g. too long for the context) must not fail its batch mates
                for job in [j for j in jobs if j.id in self._in_hand]:
                    self._run_batch([job])
            else:
                self._owe_failure(jobs[0].id, str(exc))
        except Exception as exc:
            cause = storage_cause(exc, self.store.songs_dir)
            if cause is None:
                import traceback

                self.log(traceback.format_exc())
            for job in [j for j in jobs if j.id in self._in_hand]:  # songs of the batch already done stay done
                reason = f"cannot store the song: {cause}" if cause else f"internal error: {type(exc).__name__}: {exc}"
                self._owe_failure(job.id, reason)

    def _requeue(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            try:
                self.store.requeue(job_id, "re-queued: the server was stopped while generating", count_attempt=False)
            except StorageError as exc:  # the next start re-queues it (counting an attempt): nothing else to do
                self.log(f"heartmula serve: cannot re-queue {job_id}: {exc}")
            shutil.rmtree(self.store.job_dir(job_id), ignore_errors=True)

    def _owe_failure(self, job_id: str, reason: str) -> None:
        """Remove what the job wrote, then record the failure now or, if the store cannot, on a later turn."""
        shutil.rmtree(self.store.job_dir(job_id), ignore_errors=True)
        self._in_hand.discard(job_id)
        self.owed_failures[job_id] = reason

    def _settle_failures(self) -> None:
        for job_id, reason in list(self.owed_failures.items()):
            shutil.rmtree(self.store.job_dir(job_id), ignore_errors=True)  # again: the folder may have been read-only
            self.store.fail(job_id, reason)  # a StorageError leaves it owed; the loop reports and retries
            del self.owed_failures[job_id]

    def _generate(self, jobs: list[Job]) -> None:
        import torch

        started = time.time()
        temperature, top_k, cfg_scale = sampling_key(jobs[0].request)
        sampling = SamplingParams(temperature=temperature, top_k=top_k, cfg_scale=cfg_scale)
        prompts = [prompt_codes(self.store, j.request) for j in jobs]
        songs = [SongRequest(lyrics=j.request["lyrics"], tags=j.request["tags"], seed=j.request["seed"],
                             audio_codes=None if prompt is None else torch.from_numpy(prompt))
                 for j, prompt in zip(jobs, prompts)]
        frames = [frames_for_duration(float(j.request["duration"])) + 1 for j in jobs]  # + the prefill frame
        session = self.generator.start(songs, sampling, max_new_frames=max(frames) - 1)
        try:
            codes, alive = self._frame_loop(session, jobs, frames)
            lengths = session.lengths.cpu().tolist()
        finally:
            with self.model_lock:
                session.close()
        if not any(alive):
            return  # every song of the batch was deleted
        lm_seconds = time.time() - started
        for i, job in enumerate(jobs):
            if self._stop.is_set():
                raise WorkerStopping
            if alive[i] and self.store.set_progress(job.id, LM_SHARE, "decoding audio"):
                song_codes = codes[i, :, : min(lengths[i], frames[i])].numpy()
                kept = 0 if prompts[i] is None else prompts[i].shape[1]
                if kept:  # the kept frames first, unchanged; one decode of all (the codec decodes across the join)
                    song_codes = np.concatenate([prompts[i], song_codes], axis=1)
                self._decode_and_store(job, song_codes, started, {"batch_size": len(jobs), "prompt_frames": kept,
                                                                  "lm_seconds": round(lm_seconds, 3)})

    def _frame_loop(self, session, jobs: list[Job], frames: list[int]):
        """Frames until every song ended or reached its length -> (codes [songs, K, T], which jobs still exist)."""
        import torch

        alive = [True] * len(jobs)
        steps = []
        last_report = 0.0
        # Frame by frame under the model lock: live streams sharing the model take turns with this batch
        # (every session has its own KV caches) instead of waiting for the whole batch.
        while session.frame_index <= session.max_new_frames:
            if self._stop.is_set():
                raise WorkerStopping
            with self.model_lock:
                step = session.next_frame()
            self.heartbeat = time.monotonic()
            self._serve_calls()  # live streams take turns with this batch, frame by frame
            steps.append(step.codes)
            if len(steps) % 8 == 0 and bool(session.ended.all()):
                break
            if time.time() - last_report > 0.25:
                last_report = time.time()
                for i, job in enumerate(jobs):
                    if alive[i]:
                        alive[i] = self.store.set_progress(job.id, LM_SHARE * min(1.0, len(steps) / frames[i]),
                                                           "generating")
                if not any(alive):
                    break
        return torch.stack(steps, dim=-1).cpu(), alive  # [songs, K, T]

    def _decode_and_store(self, job: Job, song_codes: np.ndarray, started: float, extra: dict) -> None:
        audio, rate = self.codec.decode(song_codes, seed=job.request["seed"])
        self.heartbeat = time.monotonic()
        folder = self.store.job_dir(job.id)
        write_song_files(folder, song_codes, fit_peak(audio), rate)
        result = {
            "seconds": round(audio.shape[-1] / rate, 3), "sample_rate": rate, "channels": int(audio.shape[0]),
            "frames": int(song_codes.shape[-1]), **extra, "total_seconds": round(time.time() - started, 3),
        }
        finished = self.store.finish(job.id, result)
        self._in_hand.discard(job.id)
        if not finished:  # deleted while decoding: leave nothing behind
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
