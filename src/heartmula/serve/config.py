"""The server's settings and the services its routers share (one `Services` per app, in app.state.services)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import HTTPException, Request

from heartmula.errors import HeartMuLaError
from heartmula.lm.lora import read_adapter
from heartmula.serve.auth import Auth
from heartmula.serve.jobs import Job, JobStore, SongWorker
from heartmula.serve.search import LibrarySearch
from heartmula.song_models import resolve_codec, resolve_lm


@dataclass
class ServeConfig:
    data_dir: str | Path = "heartmula-data"
    model: str | Path | None = None  # LM root or folder; None = the embedded default
    version: str = "3B"
    codec: str | Path | None = None  # default: HeartCodec-oss/ beside the LM, or the embedded codec
    dtype: str | None = None  # the LM's weights; None: bfloat16 on CUDA, float32 elsewhere (heartmula.pipeline)
    device: str = "auto"  # auto: CUDA, else MPS, else the CPU
    int8: bool | None = None  # int8 LM weights; None: heartmula.song_models.int8_by_default
    quant: str | None = None  # "int8" / "int4": weight-only quantised LM on the native kernels (heartmula.lm.quantized)
    lora: str | Path | None = None  # a LoRA adapter folder merged into the LM at load (heartmula.lm.lora)
    lora_scale: float = 1.0  # the adapter's update is multiplied by this
    token: str | None = None  # bearer token; None = no auth
    cors_origins: list[str] = field(default_factory=list)  # empty = CORS off
    allowed_hosts: list[str] = field(default_factory=list)  # Host header values served; empty = any
    max_upload_bytes: int = 50 << 20
    min_duration: float = 1.0  # seconds per song job
    max_duration: float = 300.0  # seconds per song job
    max_batch: int = 4
    max_stream_seconds: float = 300.0
    transcribe_model: str | None = None  # None = the embedded default (Whisper base)
    clap_model: str | Path | None = None  # library search by text/example; None = the shipped HeartCLAP, if any
    search_index: str | None = None  # None = DATA/clap-index/; or qdrant://... or postgresql://... (open_index)
    max_transcribe_seconds: float = 20 * 60.0
    session_seconds: float = 3600.0  # lifetime of the page's session cookie (media and WebSocket without a token)
    store_retry_seconds: float = 2.0  # how long a job-database write is retried before answering 503
    stall_seconds: float = 600.0  # health answers 503 when the worker shows no progress on a batch this long

    def model_path(self) -> Path:
        return resolve_lm(self.model, self.version)

    def codec_path(self) -> Path:
        return resolve_codec(self.codec, self.model_path())

    def check(self) -> None:
        """Fail before the server starts when the model folders are wrong (not minutes later in a log)."""
        self.codec_path()  # resolves the LM too
        if self.clap_model is not None and not (Path(self.clap_model) / "config.json").is_file():
            raise HeartMuLaError(f"--clap-model {self.clap_model} is not a HeartCLAP folder (no config.json)")
        if self.lora is not None:
            read_adapter(self.lora)


@dataclass
class Services:
    """What the routers work with."""

    config: ServeConfig
    store: JobStore
    worker: SongWorker
    auth: Auth
    search: LibrarySearch | None
    recovery: dict
    convert_lock: threading.Lock = field(default_factory=threading.Lock)
    transcriber_lock: threading.Lock = field(default_factory=threading.Lock)  # one transcription at a time
    transcribers: dict = field(default_factory=dict)
    live_streams: int = 0  # WebSocket streams running now

    def job_or_404(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no song {job_id}")
        return job


def services(request: Request) -> Services:
    """FastAPI dependency: the app's services."""
    return request.app.state.services
