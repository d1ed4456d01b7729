"""The HTTP/WebSocket API and the web page, one FastAPI app.

    app = create_app(ServeConfig(data_dir="data", model="ckpt"))      # then: uvicorn.run(app)

Endpoints (all under /api; JSON unless noted; the OpenAPI spec is at /openapi.json):
    GET    /api/health                      model state, features, whether a token is needed (no auth)
    POST   /api/songs                       queue a song job -> 201 {job}
    GET    /api/songs?q=&status=&limit=     the library, newest first; q searches title, tags and lyrics
    GET    /api/songs/{id}                  one job: status, progress, result
    DELETE /api/songs/{id}                  delete a song (stops it if it is being generated)
    GET    /api/songs/{id}/audio?format=    wav | flac | mp3
    GET    /api/songs/{id}/codes            the codec codes, int64 [8, T] .npy
    POST   /api/transcribe                  multipart upload -> timed lyrics
    GET    /api/tags                        tag suggestions for the page
    WS     /api/stream                      live generation with control messages (when heartmula.stream exists)
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from heartmula import __version__
from heartmula.errors import HeartMuLaError
from heartmula.serve.jobs import AUDIO_FILE, CODES_FILE, ID_PATTERN, STATUSES, JobStore, SongWorker

STATIC_DIR = Path(__file__).with_name("static")
MAX_LYRICS_CHARS = 20_000
MAX_TAGS_CHARS = 1_000
JSON_BODY_LIMIT = 1 << 20  # 1 MiB: far above any valid song request, far below a memory problem
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)  # rates an MP3 can carry
AUDIO_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg"}
TOKEN_ENV = "HEARTMULA_TOKEN"
JobId = Annotated[str, PathParam(pattern=ID_PATTERN, description="32 lowercase hex digits")]


@dataclass
class ServeConfig:
    data_dir: str | Path = "heartmula-data"
    model: str | Path | None = None  # LM root or folder; None = the embedded default
    version: str = "3B"
    codec: str | Path | None = None  # default: HeartCodec-oss/ beside the LM, or the embedded codec
    dtype: str = "float32"
    device: str = "cpu"
    int8: bool | None = None  # int8 LM weights; None: heartmula.song_models.int8_by_default
    token: str | None = None  # bearer token; None = no auth
    cors_origins: list[str] = field(default_factory=list)  # empty = CORS off
    max_upload_bytes: int = 50 << 20
    max_duration: float = 300.0  # seconds per song job
    max_batch: int = 4
    max_stream_seconds: float = 300.0
    transcribe_model: str | None = None  # None = the embedded default (Whisper base)
    clap_model: str | Path | None = None  # library search by text/example; None = the shipped HeartCLAP, if any
    max_transcribe_seconds: float = 20 * 60.0

    def model_path(self) -> Path:
        from heartmula.song_models import resolve_lm

        return resolve_lm(self.model, self.version)

    def codec_path(self) -> Path:
        from heartmula.song_models import resolve_codec

        return resolve_codec(self.codec, self.model_path())

    def check(self) -> None:
        """Fail before the server starts when the model folders are wrong (not minutes later in a log)."""
        self.codec_path()  # resolves the LM too
        if self.clap_model is not None and not (Path(self.clap_model) / "config.json").is_file():
            raise HeartMuLaError(f"--clap-model {self.clap_model} is not a HeartCLAP folder (no config.json)")


def default_model_loader(config: ServeConfig) -> Callable[[], tuple]:
    def load():
        from heartmula.codec.pretrained import load_codec
        from heartmula.song_models import load_lm

        generator = load_lm(config.model_path(), config.version, config.dtype, config.device, config.int8)
        codec = load_codec(config.codec_path(), config.dtype, config.device)
        return generator, codec

    return load


# --- request and response bodies ----------------------------------------------------------------------------------
class SongCreate(BaseModel):
    """A song job. Empty lyrics make an instrumental; tags may carry weights: "jazz:0.7,electronic:0.3"."""

    model_config = ConfigDict(extra="forbid", strict=True)

    lyrics: str = Field("", max_length=MAX_LYRICS_CHARS, description="lyrics with [verse]/[chorus] section tags")
    tags: str = Field("", max_length=MAX_TAGS_CHARS, description="comma-separated tags, optional TAG:WEIGHT")
    duration: float = Field(30.0, gt=0, allow_inf_nan=False, description="seconds (at most the server's limit)")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="null = a random seed (reported back)")
    temperature: float = Field(1.0, ge=0, le=10, allow_inf_nan=False)
    top_k: int = Field(50, ge=1, le=100_000)
    cfg_scale: float = Field(1.5, ge=0, le=20, allow_inf_nan=False)
    title: str = Field("", max_length=200)


class JobOut(BaseModel):
    id: str
    kind: str
    status: Literal["queued", "running", "done", "failed"]
    title: str
    progress: float
    message: str
    attempts: int
    created: float
    started: float | None
    finished: float | None
    request: dict
    result: dict


class JobList(BaseModel):
    songs: list[JobOut]
    total: int


class Health(BaseModel):
    status: str
    version: str
    model: str
    model_error: str
    auth_required: bool
    features: dict[str, bool]
    max_duration: float
    max_upload_bytes: int


class TimedWord(BaseModel):
    start: float
    end: float
    text: str


class TimedLine(BaseModel):
    start: float
    end: float
    text: str
    section: int
    words: list[TimedWord]


class TranscriptOut(BaseModel):
    language: str
    duration: float
    text: str
    lrc: str
    segments: list[TimedLine]


class Tags(BaseModel):
    tags: list[str]


class SearchHit(BaseModel):
    score: float
    song: JobOut


class SearchResult(BaseModel):
    hits: list[SearchHit]


# --- body size limit ----------------------------------------------------------------------------------------------
class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than {limit} bytes")


class BodyLimitMiddleware:
    """Rejects bodies over the limit by Content-Length up front, and by counting when the length is not sent."""

    def __init__(self, app, json_limit: int, upload_limit: int, upload_paths: tuple[str, ...]):
        self.app, self.json_limit, self.upload_limit, self.upload_paths = app, json_limit, upload_limit, upload_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.upload_limit if scope["path"] in self.upload_paths else self.json_limit
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_large = int(length) > limit
            except ValueError:
                too_large = False
            if too_large:
                return await JSONResponse({"detail": BodyTooLarge(limit).detail}, 413)(scope, receive, send)
        received = 0
        started = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as exc:
            if not started:
                await JSONResponse({"detail": exc.detail}, 413)(scope, receive, send)


# --- the app ------------------------------------------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:40]


def stream_available() -> bool:
    try:
        from heartmula.stream import StreamControls, StreamSession  # noqa: F401
    except ImportError:  # the streaming engine is optional: the page then plays finished songs only
        return False
    return True


def create_app(config: ServeConfig, load_models: Callable[[], tuple] | None = None) -> FastAPI:
    token = config.token or os.environ.get(TOKEN_ENV) or None
    store = JobStore(config.data_dir)
    recovery = store.recover()
    model_lock = threading.Lock()
    from heartmula.serve.search import LibrarySearch, default_clap_dir

    clap_dir = config.clap_model or default_clap_dir()

    def on_model_thread(fn, *args):
        """Embeddings run in the worker's thread once it serves (one thread computes: see SongWorker)."""
        return worker.call(fn, *args).result() if worker.state == "ready" else fn(*args)

    search = LibrarySearch(store, clap_dir, on_model_thread) if clap_dir else None

    def index_song(job_id: str) -> None:
        search.enqueue(job_id)

    def index_backlog() -> None:
        from heartmula.serve.search import BACKFILL

        search.enqueue(BACKFILL)

    worker = SongWorker(store, load_models or default_model_loader(config), config.max_batch, model_lock,
                        after_finish=index_song if search else None, on_ready=index_backlog if search else None)
    transcriber_lock = threading.Lock()
    transcribers: dict = {}
    convert_lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        yield
        worker.stop()
        if search is not None:
            search.stop()
        store.close()

    app = FastAPI(
        title="heartmula", version=__version__, lifespan=lifespan,
        description="Song generation jobs, downloads, transcription and live streaming. Send "
        "`Authorization: Bearer TOKEN` (or `?token=TOKEN`) when the server runs with a token.",
        docs_url=None, redoc_url=None,  # the bundled API explorers load scripts from a CDN; the spec is enough
    )
    app.state.store, app.state.worker, app.state.recovery, app.state.model_lock = store, worker, recovery, model_lock
    app.state.config = config
    app.add_middleware(BodyLimitMiddleware, json_limit=JSON_BODY_LIMIT, upload_limit=config.max_upload_bytes,
                       upload_paths=("/api/transcribe", "/api/search/audio"))
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["*"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        # Only where and what: echoing the input back could repeat megabytes of lyrics, or hold a NaN that is
        # not JSON at all (a 500 instead of the 422 the client deserves).
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        return JSONResponse({"detail": errors}, 422)

    @app.exception_handler(HeartMuLaError)
    async def user_error(request: Request, exc: HeartMuLaError):
        return JSONResponse({"detail": str(exc)}, 422)

    def authorized(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else request.query_params.get("token", "")
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong token: send Authorization: Bearer TOKEN",
                                headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(authorized)]

    def job_or_404(job_id: str):
        job = store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no song {job_id}")
        return job

    # --- page --------------------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return Response(status_code=204)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # --- api ---------------------------------------------------------------------------------------------------
    @app.get("/api/health", response_model=Health)
    def health():
        return Health(
            status="ok", version=__version__, model=worker.state, model_error=worker.error,
            auth_required=token is not None,
            features={"stream": stream_available(), "search": search is not None, "transcribe": True},
            max_duration=config.max_duration, max_upload_bytes=config.max_upload_bytes,
        )

    @app.get("/api/tags", response_model=Tags, dependencies=auth)
    def tags():
        try:
            from heartmula.clap.prompts import known_tags

            return Tags(tags=sorted(known_tags()))
        except (ImportError, OSError, KeyError, ValueError):
            return Tags(tags=["pop", "rock", "jazz", "electronic", "folk", "piano", "guitar", "happy", "sad"])

    @app.post("/api/songs", response_model=JobOut, status_code=201, dependencies=auth)
    def create_song(body: SongCreate):
        from heartmula.text import parse_tag_prompts

        if body.duration > config.max_duration:
            raise HTTPException(422, f"duration {body.duration} s is over this server's limit of "
                                     f"{config.max_duration} s")
        if body.tags.strip():
            parse_tag_prompts(body.tags)  # weights are checked now, not when the job runs
        request = body.model_dump()
        if request["seed"] is None:
            request["seed"] = secrets.randbelow(2**31)
        first_line = next((ln.strip() for ln in body.lyrics.splitlines() if ln.strip() and "[" not in ln), "")
        title = body.title.strip() or first_line[:60] or body.tags.strip()[:60] or "untitled"
        return store.create("song", request, title).public()

    @app.get("/api/songs", response_model=JobList, dependencies=auth)
    def list_songs(
        q: Annotated[str, Query(max_length=200, description="text in the title, tags or lyrics")] = "",
        status: Annotated[Literal["queued", "running", "done", "failed"] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    ):
        jobs, total = store.list(q, status, limit, offset)
        return JobList(songs=[j.public() for j in jobs], total=total)

    @app.get("/api/songs/{job_id}", response_model=JobOut, dependencies=auth)
    def get_song(job_id: JobId):
        return job_or_404(job_id).public()

    @app.delete("/api/songs/{job_id}", status_code=204, dependencies=auth)
    def delete_song(job_id: JobId):
        if not store.delete(job_id):
            raise HTTPException(404, f"no song {job_id}")
        if search is not None:
            search.remove(job_id)
        return Response(status_code=204)

    @app.get("/api/songs/{job_id}/audio", dependencies=auth, response_class=FileResponse,
             responses={200: {"content": {t: {} for t in AUDIO_TYPES.values()}}, 409: {"description": "not done"}})
    def song_audio(job_id: JobId, format: Annotated[Literal["wav", "flac", "mp3"], Query()] = "wav"):
        job = job_or_404(job_id)
        if job.status != "done":
            raise HTTPException(409, f"song {job_id} is {job.status}; audio exists once it is done")
        folder = store.job_dir(job_id)
        path = folder / AUDIO_FILE
        if format != "wav":
            path = folder / f"song.{format}"
            with convert_lock:
                if not path.is_file():
                    _convert(folder / AUDIO_FILE, path)
        name = f"{_slug(job.title) or 'song'}-{job_id[:8]}.{format}"
        return FileResponse(path, media_type=AUDIO_TYPES[format], filename=name)

    @app.get("/api/songs/{job_id}/codes", dependencies=auth, response_class=FileResponse,
             responses={200: {"content": {"application/octet-stream": {}}}, 409: {"description": "not done"}})
    def song_codes(job_id: JobId):
        job = job_or_404(job_id)
        if job.status != "done":
            raise HTTPException(409, f"song {job_id} is {job.status}; codes exist once it is done")
        path = store.job_dir(job_id) / CODES_FILE
        if not path.is_file():
            raise HTTPException(404, f"song {job_id} has no codes (it was recorded from a live stream)")
        name = f"{_slug(job.title) or 'song'}-{job_id[:8]}.npy"
        return FileResponse(path, media_type="application/octet-stream", filename=name)

    @app.post("/api/transcribe", response_model=TranscriptOut, dependencies=auth)
    def transcribe(
        file: Annotated[UploadFile, File(description="an audio file (wav, flac, mp3, ogg, m4a, ...)")],
        language: Annotated[str | None, Form(pattern=r"^[a-z]{2,3}$", description="e.g. en; empty = detect")] = None,
    ):
        from heartmula.audio import load_audio
        from heartmula.transcribe import TranscribeConfig, Transcriber
        from heartmula.transcribe.result import to_lrc

        suffix = Path(file.filename or "").suffix.lower()
        suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ".bin"
        with tempfile.TemporaryDirectory(dir=store.data_dir) as tmp:
            path = Path(tmp) / f"upload{suffix}"
            with open(path, "wb") as out:
                while chunk := file.file.read(1 << 20):
                    out.write(chunk)
            try:
                audio, rate = load_audio(path)
            except HeartMuLaError:
                raise HTTPException(422, "the upload is not audio this server can read") from None
            except Exception:
                raise HTTPException(422, "the upload is not audio this server can read") from None
        seconds = audio.shape[-1] / rate
        if seconds > config.max_transcribe_seconds:
            raise HTTPException(413, f"{seconds:.0f} s of audio; this server transcribes at most "
                                     f"{config.max_transcribe_seconds:.0f} s")
        with transcriber_lock:  # one model in memory, one transcription at a time
            key = (config.transcribe_model, language)
            if key not in transcribers:
                transcribers.clear()
                transcribers[key] = Transcriber(TranscribeConfig(model=config.transcribe_model, language=language))
            transcript = transcribers[key].transcribe_array(audio[:2], rate, file.filename or "upload")
        segments = [
            TimedLine(start=s.start, end=s.end, text=s.text.strip(), section=s.section,
                      words=[TimedWord(start=w.start, end=w.end, text=w.text) for w in s.words])
            for s in transcript.segments
        ]
        return TranscriptOut(language=transcript.language, duration=transcript.duration, text=transcript.text,
                             lrc=to_lrc(transcript), segments=segments)

    def need_search() -> LibrarySearch:
        if search is None:
            raise HTTPException(404, "library search needs a HeartCLAP model: start the server with --clap-model DIR")
        return search

    def hits(found: list[tuple[str, float]]) -> SearchResult:
        jobs = {job.id: job for job in store.list(ids=[i for i, _ in found], limit=len(found) or 1)[0]}
        return SearchResult(hits=[SearchHit(score=score, song=jobs[i].public()) for i, score in found if i in jobs])

    @app.get("/api/search", response_model=SearchResult, dependencies=auth)
    def search_text(
        q: Annotated[str, Query(min_length=1, max_length=500, description="a description in any language")],
        k: Annotated[int, Query(ge=1, le=200)] = 20,
    ):
        """Songs whose sound matches a description (HeartCLAP), best first."""
        return hits(need_search().by_text(q, k))

    @app.post("/api/search/audio", response_model=SearchResult, dependencies=auth)
    def search_audio(
        file: Annotated[UploadFile, File(description="an example: songs that sound like it come first")],
        k: Annotated[int, Form(ge=1, le=200)] = 20,
    ):
        engine = need_search()
        with tempfile.TemporaryDirectory(dir=store.data_dir) as tmp:
            path = Path(tmp) / "example.bin"
            with open(path, "wb") as out:
                while chunk := file.file.read(1 << 20):
                    out.write(chunk)
            try:
                found = engine.by_audio_file(path, k)
            except HeartMuLaError:
                raise HTTPException(422, "the upload is not audio this server can read") from None
        return hits(found)

    @app.get("/api/songs/{job_id}/similar", response_model=SearchResult, dependencies=auth)
    def similar_songs(job_id: JobId, k: Annotated[int, Query(ge=1, le=200)] = 10):
        engine = need_search()
        job_or_404(job_id)
        found = engine.similar(job_id, k)
        if found is None:
            raise HTTPException(409, f"song {job_id} is not in the search index yet (it is indexed once done)")
        return hits(found)

    if stream_available():
        from heartmula.serve.live import add_stream_endpoint

        add_stream_endpoint(app, store, worker, config, token)
    return app


def _convert(wav: Path, out: Path) -> None:
    from heartmula.audio import load_audio, resample, save_audio

    audio, rate = load_audio(wav)
    if out.suffix == ".mp3" and rate not in MP3_RATES:
        target = next((r for r in MP3_RATES if r >= rate), MP3_RATES[-1])
        audio, rate = resample(audio, rate, target), target
    save_audio(out, audio, rate)


def openapi_json(app: FastAPI) -> str:
    return json.dumps(app.openapi(), indent=1)


__all__ = ["STATUSES", "ServeConfig", "SongCreate", "create_app", "openapi_json"]
