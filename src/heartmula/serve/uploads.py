"""Routes that take an uploaded file: transcription, library search by example (and search by text), and audio
imported into the library (to continue it).

Every upload is written under DATA/uploads/ (one temporary folder per request, removed when it is answered);
the store empties that folder at start, so a crash mid-upload leaves nothing behind for long.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, UploadFile
from pydantic import BaseModel

from heartmula.audio import load_audio
from heartmula.errors import HeartMuLaError
from heartmula.pipeline import encode_prompt
from heartmula.serve.config import Services, services
from heartmula.serve.jobs import write_song_files
from heartmula.serve.search import LibrarySearch
from heartmula.serve.songs import JobId, JobOut
from heartmula.serve.storage import StorageError, as_storage_error
from heartmula.transcribe import TranscribeConfig, Transcriber
from heartmula.transcribe.result import to_lrc

Svc = Annotated[Services, Depends(services)]
UPLOAD_PATHS = ("/api/transcribe", "/api/search/audio", "/api/songs/import")
NOT_AUDIO = "the upload is not audio this server can read"

router = APIRouter(prefix="/api")


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


class SearchHit(BaseModel):
    score: float
    song: JobOut


class SearchResult(BaseModel):
    hits: list[SearchHit]


@contextmanager
def saved_upload(svc: Services, file: UploadFile, name: str) -> Iterator[Path]:
    """The upload written to DATA/uploads/<temp>/<name>; the folder is removed afterwards, whatever happens."""
    with tempfile.TemporaryDirectory(dir=svc.store.uploads_dir) as tmp:
        path = Path(tmp) / name
        try:
            with open(path, "wb") as out:
                while chunk := file.file.read(1 << 20):
                    out.write(chunk)
        except OSError as exc:
            problem = as_storage_error(exc, "cannot keep the upload", svc.store.uploads_dir)
            if problem is None:
                raise
            raise problem from exc
        yield path


@router.post("/transcribe", response_model=TranscriptOut, tags=["transcribe"])
def transcribe(
    svc: Svc,
    file: Annotated[UploadFile, File(description="an audio file (wav, flac, mp3, ogg, m4a, ...)")],
    language: Annotated[str | None, Form(pattern=r"^[a-z]{2,3}$", description="e.g. en; empty = detect")] = None,
):
    audio, rate = uploaded_audio(svc, file)
    seconds = audio.shape[-1] / rate
    limit = svc.config.max_transcribe_seconds
    if seconds > limit:
        raise HTTPException(413, f"{seconds:.0f} s of audio; this server transcribes at most {limit:.0f} s")
    return _transcript(svc, audio, rate, language, file.filename or "upload")


def _transcript(svc: Services, audio, rate: int, language: str | None, name: str) -> TranscriptOut:
    with svc.transcriber_lock:  # one model in memory, one transcription at a time
        key = (svc.config.transcribe_model, language)
        if key not in svc.transcribers:
            svc.transcribers.clear()
            svc.transcribers[key] = Transcriber(TranscribeConfig(model=svc.config.transcribe_model, language=language))
        transcript = svc.transcribers[key].transcribe_array(audio[:2], rate, name)
    segments = [
        TimedLine(start=s.start, end=s.end, text=s.text.strip(), section=s.section,
                  words=[TimedWord(start=w.start, end=w.end, text=w.text) for w in s.words])
        for s in transcript.segments
    ]
    return TranscriptOut(language=transcript.language, duration=transcript.duration, text=transcript.text,
                         lrc=to_lrc(transcript), segments=segments)


def uploaded_audio(svc: Services, file: UploadFile):
    """(audio [channels, samples], rate) of an uploaded file, saved under its own suffix for the decoder; 422 when
    it is not audio."""
    with saved_upload(svc, file, f"upload{_upload_suffix(file)}") as path:
        try:
            return load_audio(path)
        except Exception:  # HeartMuLaError or whatever the decoder raises on garbage
            raise HTTPException(422, NOT_AUDIO) from None


def _upload_suffix(file: UploadFile) -> str:
    suffix = Path(file.filename or "").suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ".bin"


# --- audio imported into the library ------------------------------------------------------------------------------
@router.post("/songs/import", response_model=JobOut, status_code=201, tags=["songs"])
def import_song(
    svc: Svc,
    file: Annotated[UploadFile, File(description="a recording to continue (wav, flac, mp3, ...)")],
    title: Annotated[str, Form(max_length=200)] = "",
):
    """A recording as a done library song: its audio as uploaded, its codes from the codec's encoder (a codec
    without one answers 422). Continue it with POST /api/songs {"continue_from": id}."""
    audio, rate = uploaded_audio(svc, file)
    seconds = audio.shape[-1] / rate
    if seconds > svc.config.max_duration:
        raise HTTPException(413, f"{seconds:.0f} s of audio; this server imports at most "
                                 f"{svc.config.max_duration:.0f} s")
    worker = svc.worker
    if worker.state != "ready":
        raise HTTPException(503, f"the model is not ready ({worker.state}): try again shortly")
    codes = worker.call(encode_prompt, worker.codec, worker.generator, audio, rate).result()  # no encoder: 422
    name = title.strip() or Path(file.filename or "").stem[:60] or "imported"
    job_id = store_import(svc.store, name, audio[:2], rate, codes)
    if svc.search is not None:
        svc.search.enqueue(job_id)
    return svc.job_or_404(job_id).public()


def store_import(store, title: str, audio, rate: int, codes) -> str:
    """Written like a job's results: files first, then `done`; on a storage failure nothing is left."""
    import shutil

    request = {"lyrics": "", "tags": "", "duration": round(audio.shape[-1] / rate, 3), "seed": None}
    job = store.create("import", request, title[:200], status="running")
    folder = store.job_dir(job.id)
    try:
        write_song_files(folder, codes, audio, rate)
        store.finish(job.id, {"seconds": round(audio.shape[-1] / rate, 3), "sample_rate": rate,
                              "channels": int(audio.shape[0]), "frames": int(codes.shape[-1])})
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        try:
            store.delete(job.id)
        except StorageError:  # the next start fails the row it left running
            pass
        raise
    return job.id


# --- library search -----------------------------------------------------------------------------------------------
def need_search(svc: Services) -> LibrarySearch:
    if svc.search is None:
        raise HTTPException(404, "library search needs a HeartCLAP model: start the server with --clap-model DIR")
    return svc.search


def hits(svc: Services, found: list[tuple[str, float]]) -> SearchResult:
    jobs = {job.id: job for job in svc.store.list(ids=[i for i, _ in found], limit=len(found) or 1)[0]}
    return SearchResult(hits=[SearchHit(score=score, song=jobs[i].public()) for i, score in found if i in jobs])


@router.get("/search", response_model=SearchResult, tags=["search"])
def search_text(
    svc: Svc,
    q: Annotated[str, Query(min_length=1, max_length=500, description="a description in any language")],
    k: Annotated[int, Query(ge=1, le=200)] = 20,
):
    """Songs whose sound matches a description (HeartCLAP), best first."""
    return hits(svc, need_search(svc).by_text(q, k))


@router.post("/search/audio", response_model=SearchResult, tags=["search"])
def search_audio(
    svc: Svc,
    file: Annotated[UploadFile, File(description="an example: songs that sound like it come first")],
    k: Annotated[int, Form(ge=1, le=200)] = 20,
):
    engine = need_search(svc)
    with saved_upload(svc, file, "example.bin") as path:
        try:
            found = engine.by_audio_file(path, k)
        except HeartMuLaError:
            raise HTTPException(422, NOT_AUDIO) from None
    return hits(svc, found)


@router.get("/songs/{job_id}/similar", response_model=SearchResult, tags=["search"])
def similar_songs(job_id: JobId, svc: Svc, k: Annotated[int, Query(ge=1, le=200)] = 10):
    engine = need_search(svc)
    svc.job_or_404(job_id)
    found = engine.similar(job_id, k)
    if found is None:
        raise HTTPException(409, f"song {job_id} is not in the search index yet (it is indexed once done)")
    return hits(svc, found)
