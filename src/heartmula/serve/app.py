"""The HTTP/WebSocket API and the web page, one FastAPI app assembled from the routers of this package.

    app = create_app(ServeConfig(data_dir="data", model="ckpt"))      # then: uvicorn.run(app)

Endpoints (all under /api; JSON unless noted; the OpenAPI spec is at /openapi.json):
    GET    /api/health                      worker and model state, features, whether a token is needed (no auth);
                                            503 with a reason when the worker cannot work
    POST   /api/session                     trade the bearer token for a session cookie (media, WebSocket)
    POST   /api/songs                       queue a song job -> 201 {job}; continue_from: continue a song (songs.py)
    POST   /api/songs/import                a recording into the library, to continue it             (uploads.py)
    GET    /api/songs?q=&status=&limit=     the library, newest first; q searches title, tags and lyrics
    GET    /api/songs/{id}                  one job: status, progress, result
    DELETE /api/songs/{id}                  delete a song (stops it if it is being generated)
    GET    /api/songs/{id}/audio?format=    wav | flac | mp3
    GET    /api/songs/{id}/codes            the codec codes, int64 [8, T] .npy
    POST   /api/transcribe                  multipart upload -> timed lyrics                      (uploads.py)
    GET    /api/search, POST /api/search/audio, GET /api/songs/{id}/similar: library search (HeartCLAP)
    GET    /api/tags                        tag suggestions for the page
    WS     /api/stream                      live generation with control messages (live.py)
Storage failures (read-only, disk full) answer 503 {"detail": "...: disk full", "cause": "disk full"}.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from heartmula import __version__
from heartmula.clap.prompts import known_tags
from heartmula.errors import HeartMuLaError
from heartmula.pipeline import HeartMuLaPipeline
from heartmula.serve import songs, uploads
from heartmula.serve.auth import SESSION_COOKIE, Auth, AuthMiddleware, PageHeadersMiddleware, redact_tokens_in_logs
from heartmula.serve.config import ServeConfig, Services, services
from heartmula.serve.jobs import STATUSES, JobStore, SongWorker
from heartmula.serve.live import router as live_router
from heartmula.serve.search import BACKFILL, LibrarySearch, default_clap_dir
from heartmula.serve.songs import SongCreate
from heartmula.serve.storage import StorageError, storage_cause

STATIC_DIR = Path(__file__).with_name("static")
JSON_BODY_LIMIT = 1 << 20  # 1 MiB: far above any valid song request, far below a memory problem
TOKEN_ENV = "HEARTMULA_TOKEN"
Svc = Annotated[Services, Depends(services)]


def default_model_loader(config: ServeConfig) -> Callable[[], tuple]:
    def load():
        pipe = HeartMuLaPipeline.from_pretrained(config.model, version=config.version, codec=config.codec,
                                                 device=config.device, dtype=config.dtype, int8=config.int8,
                                                 lora=config.lora, lora_scale=config.lora_scale,
                                                 quant=config.quant)
        return pipe.generator, pipe.codec

    return load


class WorkerOut(BaseModel):
    alive: bool
    busy: bool
    heartbeat_age: float
    queued: int
    running: int
    problem: str


class Health(BaseModel):
    status: str  # ok | unavailable (then the answer is a 503 and `problem` says why)
    problem: str
    version: str
    model: str
    model_error: str
    worker: WorkerOut
    auth_required: bool
    features: dict[str, bool]
    min_duration: float
    max_duration: float
    max_upload_bytes: int


class Tags(BaseModel):
    tags: list[str]


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
def build_services(config: ServeConfig, load_models: Callable[[], tuple] | None = None) -> Services:
    store = JobStore(config.data_dir, retry_seconds=config.store_retry_seconds)
    recovery = store.recover()
    clap_dir = config.clap_model or default_clap_dir()
    worker: SongWorker | None = None

    def on_model_thread(fn, *args):
        """Embeddings run in the worker's thread once it serves (one thread computes: see SongWorker)."""
        return worker.call(fn, *args).result() if worker.state == "ready" else fn(*args)

    search = LibrarySearch(store, clap_dir, on_model_thread, config.search_index) if clap_dir else None
    worker = SongWorker(store, load_models or default_model_loader(config), config.max_batch,
                        after_finish=search.enqueue if search else None,
                        on_ready=(lambda: search.enqueue(BACKFILL)) if search else None,
                        stall_seconds=config.stall_seconds)
    token = config.token or os.environ.get(TOKEN_ENV) or None
    return Services(config=config, store=store, worker=worker, auth=Auth(token, config.session_seconds),
                    search=search, recovery=recovery)


def create_app(config: ServeConfig, load_models: Callable[[], tuple] | None = None) -> FastAPI:
    svc = build_services(config, load_models)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc.worker.start()
        yield
        svc.worker.stop()
        if svc.search is not None:
            svc.search.stop()
        svc.store.close()

    app = FastAPI(
        title="heartmula", version=__version__, lifespan=lifespan,
        description="Song generation jobs, downloads, transcription and live streaming. Send "
        "`Authorization: Bearer TOKEN` when the server runs with a token (`?token=TOKEN` works too but puts the "
        "token in URLs; a browser page trades it for a session cookie at POST /api/session).",
        docs_url=None, redoc_url=None,  # the bundled API explorers load scripts from a CDN; the spec is enough
    )
    app.state.services = svc
    app.state.store, app.state.worker, app.state.recovery = svc.store, svc.worker, svc.recovery
    app.state.config = config
    add_middleware(app, config, svc.auth)
    add_error_handlers(app)
    add_page(app)
    app.include_router(router)
    app.include_router(songs.router)
    app.include_router(uploads.router)
    app.include_router(live_router)
    redact_tokens_in_logs()
    return app


def add_middleware(app: FastAPI, config: ServeConfig, auth: Auth) -> None:
    """Outermost last: host check, then auth (before any body is read), then the body limit, then CORS."""
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["*"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(BodyLimitMiddleware, json_limit=JSON_BODY_LIMIT, upload_limit=config.max_upload_bytes,
                       upload_paths=uploads.UPLOAD_PATHS)
    app.add_middleware(AuthMiddleware, auth=auth)
    app.add_middleware(PageHeadersMiddleware)
    if config.allowed_hosts:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=config.allowed_hosts)


def add_error_handlers(app: FastAPI) -> None:
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

    @app.exception_handler(StorageError)
    async def storage_error(request: Request, exc: StorageError):
        return storage_response(exc.cause, str(exc))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        cause = storage_cause(exc)
        if cause is not None:
            return storage_response(cause, f"the server cannot write its data: {cause}")
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, 500)


def storage_response(cause: str, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail, "cause": cause}, 503, headers={"Retry-After": "5"})


def add_page(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return Response(status_code=204)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


# --- health, session, tags ----------------------------------------------------------------------------------------
router = APIRouter(prefix="/api")


@router.get("/health", response_model=Health, responses={503: {"model": Health, "description": "cannot work"}})
def health(svc: Svc):
    worker = svc.worker.health()
    config = svc.config
    body = Health(
        status="unavailable" if worker.problem else "ok", problem=worker.problem, version=__version__,
        model=svc.worker.state, model_error=svc.worker.error,
        worker=WorkerOut(alive=worker.alive, busy=worker.busy, heartbeat_age=worker.heartbeat_age,
                         queued=worker.queued, running=worker.running, problem=worker.problem),
        auth_required=svc.auth.required,
        features={"stream": True, "search": svc.search is not None, "transcribe": True},
        min_duration=config.min_duration, max_duration=config.max_duration, max_upload_bytes=config.max_upload_bytes,
    )
    return JSONResponse(body.model_dump(), 503 if worker.problem else 200)


@router.post("/session", status_code=204)
def session(request: Request, svc: Svc):
    """A session cookie for the page: audio, downloads and the WebSocket then need no token in their URLs."""
    response = Response(status_code=204)
    if svc.auth.required:
        value, max_age = svc.auth.new_session()
        response.set_cookie(SESSION_COOKIE, value, max_age=max_age, path="/api", httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
    return response


@router.get("/tags", response_model=Tags)
def tags():
    try:
        return Tags(tags=sorted(known_tags()))
    except (OSError, KeyError, ValueError):
        return Tags(tags=["pop", "rock", "jazz", "electronic", "folk", "piano", "guitar", "happy", "sad"])


def openapi_json(app: FastAPI) -> str:
    return json.dumps(app.openapi(), indent=1)


__all__ = ["STATUSES", "ServeConfig", "SongCreate", "create_app", "openapi_json"]
