"""WS /api/stream: live generation over a WebSocket, steerable while it plays (heartmula.stream underneath).

Protocol (JSON text messages; audio as binary messages):
    client -> {"type": "start", "lyrics": "...", "prompts": [["jazz,piano", 0.7], ["electronic", 0.3]],
               "temperature": 1.0, "top_k": 50, "cfg_scale": 1.5, "seed": 7, "max_seconds": 30, "title": "",
               "save": true}
    server -> {"type": "started", "sample_rate": 48000, "channels": 2, "latency_frames": 4}
    server -> binary: float32 little-endian, channel after channel ([channels, samples] flattened), one chunk each
    client -> {"type": "update", "prompts": [...], "temperature": 0.8, ...}   any subset of the controls
    server -> {"type": "updated", "version": 3}  or  {"type": "error", "message": "..."} (the stream goes on)
    client -> {"type": "stop"}
    server -> {"type": "end", "song": "<id of the saved song, or null>", "seconds": 12.3}
The server stays at most LEAD_SECONDS of audio ahead of real time, so a slider change is heard within about that
long (plus the engine's own latency); the page schedules chunks back to back with the Web Audio API.
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from heartmula.errors import HeartMuLaError
from heartmula.serve.auth import origin_allowed
from heartmula.serve.config import Services
from heartmula.serve.jobs import JobStore, SongWorker, write_song_files
from heartmula.serve.storage import StorageError
from heartmula.stream import StreamControls, StreamSession

LEAD_SECONDS = 2.0
MAX_STREAMS = 2  # concurrent live streams; each takes a full share of the model
MAX_MESSAGE_BYTES = 64 << 10
Prompts = list[tuple[str, float]]


class StreamStart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: str
    lyrics: str = Field("", max_length=20_000)
    prompts: Prompts = Field(default_factory=lambda: [("", 1.0)], min_length=1, max_length=8)
    temperature: float = Field(1.0, ge=0, le=10, allow_inf_nan=False)
    top_k: int = Field(50, ge=1, le=100_000)
    cfg_scale: float = Field(1.5, ge=0, le=20, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    max_seconds: float = Field(30.0, gt=0, allow_inf_nan=False)
    title: str = Field("", max_length=200)
    save: bool = True


class StreamUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: str
    prompts: Prompts | None = Field(None, min_length=1, max_length=8)
    temperature: float | None = Field(None, ge=0, le=10, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=1, le=100_000)
    cfg_scale: float | None = Field(None, ge=0, le=20, allow_inf_nan=False)


def _problem(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


router = APIRouter()


class _Client:
    """The socket's JSON side: error reports and validated incoming objects."""

    def __init__(self, ws: WebSocket):
        self.ws = ws

    async def error(self, message: str) -> None:
        await self.ws.send_json({"type": "error", "message": message})

    async def receive(self) -> dict | None:
        """The next JSON object from the client; None after a message that was not one (reported)."""
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        text = message.get("text")
        if text is None or len(text) > MAX_MESSAGE_BYTES:
            await self.error(f"send JSON text messages of at most {MAX_MESSAGE_BYTES} bytes")
            return None
        try:
            data = json.loads(text)
        except ValueError:
            await self.error("a message was not valid JSON")
            return None
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            await self.error('every message is a JSON object with a "type"')
            return None
        return data

    async def start_message(self, max_seconds: float) -> StreamStart:
        while True:
            data = await self.receive()
            if data is None:
                continue
            if data["type"] != "start":
                await self.error('send {"type": "start", ...} first')
                continue
            try:
                start = StreamStart.model_validate_json(json.dumps(data))  # JSON rules: arrays are pairs
            except ValidationError as exc:
                await self.error(_problem(exc))
                continue
            if start.max_seconds > max_seconds:
                await self.error(f"max_seconds is over this server's limit of {max_seconds} s")
                continue
            return start


@router.websocket("/api/stream")
async def stream(ws: WebSocket):
    """The token was checked by the auth middleware; the Origin is checked here (a page elsewhere must not drive
    this server with its listener's cookie)."""
    svc: Services = ws.app.state.services
    worker = svc.worker
    if not origin_allowed(ws.headers.get("origin"), ws.headers.get("host"), svc.config.cors_origins):
        await ws.close(code=1008, reason="origin not allowed")
        return
    await ws.accept()
    client = _Client(ws)
    try:
        if worker.state != "ready":
            await client.error(f"the model is not ready ({worker.state}{': ' + worker.error if worker.error else ''})")
            await ws.close()
            return
        start = await client.start_message(svc.config.max_stream_seconds)
        if svc.live_streams >= MAX_STREAMS:
            await client.error(f"{MAX_STREAMS} live streams are running; try again when one ends")
            await ws.close()
            return
        svc.live_streams += 1
        released = False

        def release_slot() -> None:  # once the model is free: saving the stream does not hold a slot
            nonlocal released
            if not released:
                released = True
                svc.live_streams -= 1

        try:
            await _run(ws, start, svc.store, worker, client.receive, client.error, release_slot)
        finally:
            release_slot()
    except WebSocketDisconnect:
        return


async def _run(ws: WebSocket, start: StreamStart, store: JobStore, worker: SongWorker, receive, error,
               release_slot) -> None:
    import secrets

    seed = start.seed if start.seed is not None else secrets.randbelow(2**31)
    session = await _start_session(ws, start, worker, seed, error)
    if session is None:
        return
    try:
        pieces, disconnected, problem = await _stream_until_done(ws, worker, session, receive, error)
    finally:
        codes = await on_worker(worker, session.codes)
        await on_worker(worker, session.close)
        release_slot()
    song_id = None
    if start.save and pieces:  # what was heard is kept, even when the listener left early
        try:
            song_id = await run_in_threadpool(_save, store, start, seed, np.concatenate(pieces, axis=1),
                                              session.sample_rate, codes)
            await run_in_threadpool(worker._hook, worker.after_finish, song_id)
        except StorageError as exc:
            problem = f"the stream was not saved: {exc}"
    if not disconnected:
        if problem:
            await error(problem)
        seconds = sum(p.shape[1] for p in pieces) / session.sample_rate
        await ws.send_json({"type": "end", "song": song_id, "seconds": round(seconds, 3)})
        await ws.close()


async def _start_session(ws: WebSocket, start: StreamStart, worker: SongWorker, seed: int, error):
    """The stream's session, announced to the client; None (reported, socket closed) where it cannot start."""
    try:
        controls = StreamControls(prompts=[tuple(p) for p in start.prompts], temperature=start.temperature,
                                  top_k=start.top_k, cfg_scale=start.cfg_scale)
        session = await on_worker(worker, StreamSession, worker.generator, worker.codec, lyrics=start.lyrics,
                                  controls=controls, seed=seed, max_seconds=start.max_seconds)
    except HeartMuLaError as exc:
        await error(str(exc))
        await ws.close()
        return None
    await ws.send_json({"type": "started", "sample_rate": session.sample_rate, "channels": session.channels,
                        "latency_frames": session.latency_frames, "seed": seed})
    return session


async def _stream_until_done(ws: WebSocket, worker: SongWorker, session, receive,
                             error) -> tuple[list[np.ndarray], bool, str | None]:
    """Audio out and controls in until the song ends or the client stops or leaves. Returns the audio sent, whether
    the client left, and a problem to report."""
    stop = asyncio.Event()
    pieces: list[np.ndarray] = []
    producer = asyncio.create_task(_produce(ws, worker, session, stop, pieces))
    controller = asyncio.create_task(_control(ws, session, stop, receive, error))
    disconnected, problem = False, None
    try:
        await asyncio.wait({producer, controller}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.set()
        controller.cancel()
        for task in (controller, producer):  # the producer finishes the chunk in hand, then sees `stop`
            try:
                await task
            except asyncio.CancelledError:
                pass
            except HeartMuLaError as exc:
                problem = str(exc)
            except Exception:  # WebSocketDisconnect, or a send on a socket the client has closed
                disconnected = True
    return pieces, disconnected, problem


async def _produce(ws: WebSocket, worker: SongWorker, session, stop: asyncio.Event, pieces: list) -> None:
    """Send the session's chunks (kept in `pieces`) at close to real time until it ends or `stop` is set."""
    began, sent = None, 0.0
    while not stop.is_set():
        chunk = await on_worker(worker, session.next_chunk)
        if chunk is None:
            return
        await ws.send_bytes(np.ascontiguousarray(chunk.audio, dtype="<f4").tobytes())
        pieces.append(chunk.audio)
        began = began or time.monotonic()
        sent += chunk.seconds
        ahead = sent - (time.monotonic() - began)
        if ahead > LEAD_SECONDS:  # stay close to real time so control changes are heard soon
            try:
                await asyncio.wait_for(stop.wait(), ahead - LEAD_SECONDS)
            except asyncio.TimeoutError:
                pass


async def _control(ws: WebSocket, session, stop: asyncio.Event, receive, error) -> None:
    """Apply the client's updates to the session until it sends stop (then set `stop`)."""
    while not stop.is_set():
        data = await receive()
        if data is None:
            continue
        if data["type"] == "stop":
            stop.set()
            return
        if data["type"] != "update":
            await error(f"unknown message type {data['type']!r}; use update or stop")
            continue
        try:
            update = StreamUpdate.model_validate_json(json.dumps(data))
        except ValidationError as exc:
            await error(_problem(exc))
            continue
        changes = update.model_dump(exclude_none=True, exclude={"type"})
        if "prompts" in changes:
            changes["prompts"] = [tuple(p) for p in changes["prompts"]]
        try:
            version = await run_in_threadpool(session.update, **changes)
        except HeartMuLaError as exc:
            await error(str(exc))
            continue
        await ws.send_json({"type": "updated", "version": version})


async def on_worker(worker: SongWorker, fn, *args, **kwargs):
    """fn(*args, **kwargs) in the worker's thread, the one thread that runs the models (see SongWorker)."""
    return await asyncio.wrap_future(worker.call(fn, *args, **kwargs))


def _save(store: JobStore, start: StreamStart, seed: int, audio: np.ndarray, rate: int, codes: np.ndarray) -> str:
    """Keep a finished live stream in the library, written like a job's results (files first, then `done`)."""
    import shutil

    request = start.model_dump(exclude={"type", "save"}) | {"seed": seed, "duration": start.max_seconds}
    title = start.title.strip() or "live: " + (", ".join(t for t, _ in start.prompts if t) or "untitled")[:50]
    job = store.create("stream", request, title[:200], status="running")
    folder = store.job_dir(job.id)
    try:
        write_song_files(folder, codes, audio, rate)
        store.finish(job.id, {"seconds": round(audio.shape[1] / rate, 3), "sample_rate": rate,
                              "channels": int(audio.shape[0]), "frames": int(codes.shape[-1]), "batch_size": 1})
    except StorageError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        try:
            store.fail(job.id, f"cannot store the stream: {exc.cause}")
        except StorageError:  # the next start fails the row (a stream left running)
            pass
        raise
    return job.id
