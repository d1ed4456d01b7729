"""Many songs from a file of requests, in this process or on a Ray cluster; resumable.

`heartmula batch REQUESTS.jsonl --out DIR [--ray auto|local|ADDRESS]`. One request a line:

    {"id": "song-1", "lyrics": "[verse]\\n...", "tags": "pop,piano", "duration": 30, "seed": 7,
     "sampling": {"temperature": 1.0, "top_k": 50, "cfg_scale": 1.5}, "min_duration": 0}

Only `id`-less lines get an id (their line number); a missing seed is derived from the id, so a re-run makes the
same song. `lora` names a LoRA adapter folder (`heartmula train lora`) that the worker merges into its LM, as
`heartmula generate --lora` does; requests with different adapters never share a batch.

A worker holds one HeartMuLaPipeline and generates batches of compatible requests (same duration, sampling and
adapter), so songs are the same alone or in a batch. Workers return codes and audio; this process writes
DIR/<id>.wav, DIR/<id>.npy and one DIR/manifest.jsonl record per request (status done or failed, path, codes,
seconds, error). Running again skips the ids whose last record is done and whose files exist; failed ones are tried
again and recorded again. With Ray each actor is one worker (one GPU each where the cluster has GPUs); the Ray
nodes need the model at the same path (or the embedded default) but no shared folder.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from heartmula.audio import save_audio
from heartmula.batch_ray import RayTimeouts, run_on_ray
from heartmula.errors import HeartMuLaError
from heartmula.files import atomic_output
from heartmula.lm.generation import FRAME_RATE, SamplingParams, SongRequest
from heartmula.pipeline import HeartMuLaPipeline

MANIFEST = "manifest.jsonl"
REQUEST_KEYS = {"id", "lyrics", "tags", "duration", "min_duration", "seed", "sampling", "lora"}
SAMPLING_KEYS = {"temperature", "top_k", "cfg_scale", "lyrics_scale"}


@dataclass(frozen=True)
class BatchRequest:
    id: str
    lyrics: str = ""
    tags: str = ""
    duration: float = 30.0  # the most seconds
    min_duration: float = 0.0  # the song does not end before this
    seed: int = 0
    sampling: SamplingParams = field(default_factory=SamplingParams)
    lora: str | None = None  # a LoRA adapter folder merged into the LM for this song

    def batch_key(self) -> tuple:
        """Requests with equal keys can share a batch."""
        return self.duration, self.min_duration, tuple(asdict(self.sampling).values()), self.lora


@dataclass
class BatchOptions:
    model: str | None = None  # checkpoint root or model folder; None: the embedded default models
    version: str = "3B"
    codec: str | None = None
    device: str = "auto"
    dtype: str | None = None
    int8: bool | None = None
    batch_size: int = 4  # songs generated together by one worker
    audio_format: str = "wav"


def seed_for(request_id: str) -> int:
    return zlib.crc32(request_id.encode("utf-8"))


def _request_from(record: dict, line: int) -> BatchRequest:
    if not isinstance(record, dict):
        raise HeartMuLaError(f"line {line}: a request is a JSON object, got {type(record).__name__}")
    unknown = set(record) - REQUEST_KEYS
    if unknown:
        raise HeartMuLaError(f"line {line}: unknown request fields {sorted(unknown)}; known: {sorted(REQUEST_KEYS)}")
    sampling = record.get("sampling") or {}
    if not isinstance(sampling, dict) or set(sampling) - SAMPLING_KEYS:
        raise HeartMuLaError(f"line {line}: sampling takes an object with {sorted(SAMPLING_KEYS)}")
    request_id = str(record.get("id", f"line-{line}"))
    if not request_id or "/" in request_id or request_id.startswith("."):
        raise HeartMuLaError(f"line {line}: id {request_id!r} cannot name a file")
    try:
        return BatchRequest(
            id=request_id, lyrics=str(record.get("lyrics", "")), tags=str(record.get("tags", "")),
            duration=float(record.get("duration", 30.0)), min_duration=float(record.get("min_duration", 0.0)),
            seed=int(record["seed"]) if record.get("seed") is not None else seed_for(request_id),
            sampling=SamplingParams(**sampling).validate(), lora=record.get("lora"))
    except (TypeError, ValueError) as exc:
        raise HeartMuLaError(f"line {line}: {exc}") from None


def read_requests(path: str | os.PathLike) -> list[BatchRequest]:
    """The requests of a JSONL file, checked: fields, sampling, unique ids, durations."""
    path = Path(path)
    if not path.is_file():
        raise HeartMuLaError(f"requests file {path} does not exist")
    requests = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if text.strip():
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise HeartMuLaError(f"{path} line {number} is not JSON: {exc}") from None
            requests.append(_request_from(record, number))
    seen: set[str] = set()
    for request in requests:
        if request.id in seen:
            raise HeartMuLaError(f"{path}: id {request.id!r} appears twice")
        seen.add(request.id)
        if request.duration <= 0 or request.min_duration > request.duration:
            raise HeartMuLaError(f"{request.id}: duration must be > 0 and at least min_duration")
    return requests


def read_manifest(out: str | os.PathLike) -> dict[str, dict]:
    """The last record of each id in DIR/manifest.jsonl (a line cut short by a killed run is ignored)."""
    path = Path(out) / MANIFEST
    records: dict[str, dict] = {}
    if path.is_file():
        for text in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                continue
            records[record["id"]] = record
    return records


def finished_ids(out: str | os.PathLike) -> set[str]:
    """Ids whose last record is done and whose files are in DIR."""
    out = Path(out)
    return {i for i, r in read_manifest(out).items() if r["status"] == "done"
            and (out / r["codes"]).is_file() and (r["path"] is None or (out / r["path"]).is_file())}


def plan_batches(requests: Iterable[BatchRequest], batch_size: int) -> list[list[BatchRequest]]:
    """Compatible requests grouped (in order of first appearance) and cut into batches of at most `batch_size`."""
    groups: dict[tuple, list[BatchRequest]] = {}
    for request in requests:
        groups.setdefault(request.batch_key(), []).append(request)
    return [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


class SongWorker:
    """One pipeline; turns a batch of requests into results (codes, audio) or failures. A Ray actor when on Ray.
    A batch with a LoRA adapter runs on a second pipeline with the adapter merged in (kept for the next batch of
    the same adapter)."""

    def __init__(self, options: BatchOptions):
        self.options = options
        self.pipe = self._load(None)
        self.adapted: tuple[str, object] | None = None  # (adapter path, its pipeline)

    def _load(self, lora: str | None):
        o = self.options
        return HeartMuLaPipeline.from_pretrained(o.model, version=o.version, codec=o.codec, device=o.device,
                                                 dtype=o.dtype, int8=o.int8, lora=lora)

    def _pipeline_for(self, lora: str | None):
        if lora is None:
            return self.pipe
        if self.adapted is None or self.adapted[0] != lora:
            self.adapted = None  # the previous adapter's LM goes before the next one loads
            self.adapted = (lora, self._load(lora))
        return self.adapted[1]

    def device(self) -> str:
        return str(self.pipe.device)

    def run(self, batch: list[BatchRequest]) -> list[dict]:
        first = batch[0]
        began = time.perf_counter()
        try:
            pipe = self._pipeline_for(first.lora)
            codes = pipe.generate_codes([SongRequest(lyrics=r.lyrics, tags=r.tags, seed=r.seed) for r in batch],
                                             first.sampling, first.duration, first.min_duration)
        except (HeartMuLaError, OSError, RuntimeError, ValueError) as exc:  # a bad adapter, too long a song, ...
            return [failure_record(r, f"generation failed: {exc}") for r in batch]
        share = (time.perf_counter() - began) / len(batch)
        results = []
        for request, song_codes in zip(batch, codes):
            try:
                started = time.perf_counter()
                audio, rate = pipe.decode(song_codes, request.seed)
                results.append({"id": request.id, "status": "done", "codes": song_codes, "audio": audio,
                                "sample_rate": rate, "seed": request.seed,
                                "compute_seconds": round(share + time.perf_counter() - started, 3)})
            except (HeartMuLaError, RuntimeError, ValueError) as exc:
                results.append(failure_record(request, f"decoding failed: {exc}"))
        return results


def failure_record(request: BatchRequest, reason: str) -> dict:
    return {"id": request.id, "status": "failed", "error": reason, "seed": request.seed}


def write_result(out: Path, result: dict, audio_format: str = "wav") -> dict:
    """Files of a worker's result in `out` and its manifest record (appended; one line, flushed)."""
    record = {"id": result["id"], "status": result["status"], "path": None, "codes": None, "seconds": None,
              "seed": result.get("seed"), "error": result.get("error"),
              "compute_seconds": result.get("compute_seconds")}
    if result["status"] == "done":
        codes_name, audio_name = f"{result['id']}.npy", f"{result['id']}.{audio_format}"
        with atomic_output(out / codes_name) as tmp:
            np.save(tmp, result["codes"])
        save_audio(out / audio_name, result["audio"], result["sample_rate"])  # atomic
        record.update(path=audio_name, codes=codes_name,
                      seconds=round(result["codes"].shape[1] / FRAME_RATE, 3))
    with open(out / MANIFEST, "a", encoding="utf-8") as manifest:
        manifest.write(json.dumps(record, ensure_ascii=False) + "\n")
        manifest.flush()
        os.fsync(manifest.fileno())
    return record


@dataclass
class BatchSummary:
    done: int = 0
    failed: int = 0
    skipped: int = 0  # finished by an earlier run
    failures: list[tuple[str, str]] = field(default_factory=list)


def run_batch(requests_path: str | os.PathLike, out: str | os.PathLike, options: BatchOptions | None = None,
              ray_address: str | None = None, workers: int | None = None, timeouts: RayTimeouts | None = None,
              on_record: Callable[[dict], None] | None = None) -> BatchSummary:
    """Generate every request of `requests_path` not yet done in `out`: in this process, or on Ray with
    `ray_address` ("auto", "local", "HOST:PORT" or "ray://HOST:PORT"; an already initialised Ray is used as is)."""
    options = options or BatchOptions()
    if options.batch_size < 1:
        raise HeartMuLaError("--batch-size must be at least 1")
    requests = read_requests(requests_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = finished_ids(out)
    batches = plan_batches([r for r in requests if r.id not in done], options.batch_size)
    summary = BatchSummary(skipped=sum(r.id in done for r in requests))

    def record(result: dict) -> None:
        entry = write_result(out, result, options.audio_format)
        if entry["status"] == "done":
            summary.done += 1
        else:
            summary.failed += 1
            summary.failures.append((entry["id"], entry["error"]))
        if on_record is not None:
            on_record(entry)

    if not batches:
        return summary
    if ray_address is None:
        worker = SongWorker(options)
        for batch in batches:
            for result in worker.run(batch):
                record(result)
    else:
        run_on_ray(batches, SongWorker, options, ray_address, workers, timeouts or RayTimeouts(), record,
                   failure_record)
    return summary


__all__ = ["BatchOptions", "BatchRequest", "BatchSummary", "MANIFEST", "RayTimeouts", "SongWorker", "failure_record",
           "finished_ids", "plan_batches", "read_manifest", "read_requests", "run_batch", "seed_for",
           "write_result"]
