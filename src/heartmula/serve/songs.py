"""Song jobs: queue, list, read, delete, and download their audio and codes."""

from __future__ import annotations

import math
import re
import secrets
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from heartmula.audio import load_audio, resample, save_audio
from heartmula.constants import FRAME_RATE
from heartmula.errors import HeartMuLaError
from heartmula.lm.generation import frames_for_duration
from heartmula.serve.config import Services, services
from heartmula.serve.jobs import AUDIO_FILE, CODES_FILE, ID_PATTERN, prompt_codes
from heartmula.serve.storage import as_storage_error
from heartmula.text import parse_tag_prompts

MAX_LYRICS_CHARS = 20_000
MAX_TAGS_CHARS = 1_000
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)  # rates an MP3 can carry
AUDIO_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg"}
JobId = Annotated[str, PathParam(pattern=ID_PATTERN, description="32 lowercase hex digits")]
Svc = Annotated[Services, Depends(services)]

router = APIRouter(prefix="/api/songs", tags=["songs"])


class SongCreate(BaseModel):
    """A song job. Empty lyrics make an instrumental; tags may carry weights: "jazz:0.7,electronic:0.3"."""

    model_config = ConfigDict(extra="forbid", strict=True)

    lyrics: str = Field("", max_length=MAX_LYRICS_CHARS, description="lyrics with [verse]/[chorus] section tags")
    tags: str = Field("", max_length=MAX_TAGS_CHARS, description="comma-separated tags, optional TAG:WEIGHT")
    duration: float = Field(30.0, gt=0, allow_inf_nan=False,
                            description="seconds (at least the server's minimum, 1 s by default; at most its limit)")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="null = a random seed (reported back)")
    temperature: float = Field(1.0, ge=0, le=10, allow_inf_nan=False)
    top_k: int = Field(50, ge=1, le=100_000)
    cfg_scale: float = Field(1.5, ge=0, le=20, allow_inf_nan=False)
    title: str = Field("", max_length=200)
    continue_from: str | None = Field(None, pattern=ID_PATTERN, description="a done library song's id: the new song "
                                      "starts with its codes, unchanged, and continues it for `duration` seconds")
    from_seconds: float | None = Field(None, ge=0, allow_inf_nan=False, description="with continue_from: keep only "
                                       "its first seconds and make the rest anew (default: all of it)")


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


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:40]


def check_request(svc: Services, body: SongCreate) -> None:
    """Refuse now what the worker could not do later: lengths out of range, bad tag weights, a song to continue
    that is not there or too short, a prompt plus duration over the model's context (checked once the model is
    loaded)."""
    config = svc.config
    if body.duration < config.min_duration:
        raise HTTPException(422, f"duration {body.duration} s is under this server's minimum of "
                                 f"{config.min_duration} s")
    if body.duration > config.max_duration:
        raise HTTPException(422, f"duration {body.duration} s is over this server's limit of "
                                 f"{config.max_duration} s")
    prompts = parse_tag_prompts(body.tags) if body.tags.strip() else None  # weights checked now, not at run time
    prompt_frames = check_song_to_continue(svc, body)
    generator = svc.worker.generator if svc.worker.state == "ready" else None
    if generator is not None:
        check_fits_context(generator, body.lyrics, [p.tags for p in prompts] if prompts else [""], body.duration,
                           prompt_frames)


def check_song_to_continue(svc: Services, body: SongCreate) -> int:
    """Frames the job keeps of the song it continues (0: a new song)."""
    if body.continue_from is None:
        if body.from_seconds is not None:
            raise HTTPException(422, "from_seconds needs continue_from: the song whose start is kept")
        return 0
    source = svc.store.get(body.continue_from)
    if source is None:
        raise HTTPException(404, f"no song {body.continue_from} to continue")
    if source.status != "done":
        raise HTTPException(409, f"song {body.continue_from} is {source.status}; it can be continued once it is done")
    if not (svc.store.job_dir(source.id) / CODES_FILE).is_file():
        raise HTTPException(409, f"song {source.id} has no codes to continue")
    return prompt_codes(svc.store, body.model_dump()).shape[1]  # from_seconds beyond its end: a HeartMuLaError


def check_fits_context(generator, lyrics: str, tag_prompts: list[str], duration: float, prompt_frames: int = 0):
    max_seq_len = generator.model.config.backbone.max_seq_len
    longest = max(len(generator.build_prompt(tags, lyrics)[0]) for tags in tag_prompts) + prompt_frames
    frames = frames_for_duration(duration)
    if longest + frames > max_seq_len:
        room = math.floor(max(0, max_seq_len - longest) / FRAME_RATE * 10) / 10  # rounded down: it must fit
        what = "the lyrics and tags" if not prompt_frames else \
            f"the kept {prompt_frames / FRAME_RATE:.1f} s of the song, the lyrics and the tags"
        if room < 1.0:
            raise HTTPException(422, f"{what} take {longest} of the model's {max_seq_len} positions, leaving no room "
                                     "for more music: " + ("keep fewer seconds" if prompt_frames else "shorten them"))
        raise HTTPException(422, f"with {what} ({longest} of the model's {max_seq_len} positions) at most "
                                 f"{room:.1f} s of new music fit; ask for less"
                                 + (", or keep fewer seconds" if prompt_frames else " or shorten the lyrics"))


@router.post("", response_model=JobOut, status_code=201)
def create_song(body: SongCreate, svc: Svc):
    check_request(svc, body)
    request = body.model_dump()
    if request["seed"] is None:
        request["seed"] = secrets.randbelow(2**31)
    first_line = next((ln.strip() for ln in body.lyrics.splitlines() if ln.strip() and "[" not in ln), "")
    title = body.title.strip() or first_line[:60] or body.tags.strip()[:60] or "untitled"
    if body.continue_from is not None and not body.title.strip():
        source = svc.store.get(body.continue_from)
        kept = "" if body.from_seconds is None else f" from {body.from_seconds:g} s"
        title = f"{source.title if source else title} (continued{kept})"[:200]
    return svc.store.create("song", request, title).public()


@router.get("", response_model=JobList)
def list_songs(
    svc: Svc,
    q: Annotated[str, Query(max_length=200, description="text in the title, tags or lyrics")] = "",
    status: Annotated[Literal["queued", "running", "done", "failed"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
):
    jobs, total = svc.store.list(q, status, limit, offset)
    return JobList(songs=[j.public() for j in jobs], total=total)


@router.get("/{job_id}", response_model=JobOut)
def get_song(job_id: JobId, svc: Svc):
    return svc.job_or_404(job_id).public()


@router.delete("/{job_id}", status_code=204)
def delete_song(job_id: JobId, svc: Svc):
    if not svc.store.delete(job_id):
        raise HTTPException(404, f"no song {job_id}")
    if svc.search is not None:
        svc.search.remove(job_id)
    return Response(status_code=204)


@router.get("/{job_id}/audio", response_class=FileResponse,
            responses={200: {"content": {t: {} for t in AUDIO_TYPES.values()}}, 409: {"description": "not done"}})
def song_audio(job_id: JobId, svc: Svc, format: Annotated[Literal["wav", "flac", "mp3"], Query()] = "wav"):
    job = svc.job_or_404(job_id)
    if job.status != "done":
        raise HTTPException(409, f"song {job_id} is {job.status}; audio exists once it is done")
    folder = svc.store.job_dir(job_id)
    path = folder / AUDIO_FILE
    if format != "wav":
        path = folder / f"song.{format}"
        with svc.convert_lock:
            if not path.is_file():
                _convert(folder / AUDIO_FILE, path)
    name = f"{_slug(job.title) or 'song'}-{job_id[:8]}.{format}"
    return FileResponse(path, media_type=AUDIO_TYPES[format], filename=name)


@router.get("/{job_id}/codes", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}}, 409: {"description": "not done"}})
def song_codes(job_id: JobId, svc: Svc):
    job = svc.job_or_404(job_id)
    if job.status != "done":
        raise HTTPException(409, f"song {job_id} is {job.status}; codes exist once it is done")
    path = svc.store.job_dir(job_id) / CODES_FILE
    if not path.is_file():
        raise HTTPException(404, f"song {job_id} has no codes (it was recorded from a live stream)")
    name = f"{_slug(job.title) or 'song'}-{job_id[:8]}.npy"
    return FileResponse(path, media_type="application/octet-stream", filename=name)


def _convert(wav: Path, out: Path) -> None:
    audio, rate = load_audio(wav)
    if out.suffix == ".mp3" and rate not in MP3_RATES:
        target = next((r for r in MP3_RATES if r >= rate), MP3_RATES[-1])
        audio, rate = resample(audio, rate, target), target
    try:
        save_audio(out, audio, rate)
    except (OSError, HeartMuLaError, RuntimeError) as exc:
        problem = as_storage_error(exc, f"cannot write the {out.suffix[1:]} copy", out.parent)
        if problem is None:
            raise
        raise problem from exc
