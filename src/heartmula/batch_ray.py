"""heartmula.batch on a Ray cluster: one actor per worker (heartmula.batch.SongWorker, holding one
HeartMuLaPipeline; one GPU each when the cluster has GPUs); batches go to whichever actor is free. Every wait has a
timeout, so an unreachable cluster, a worker that cannot be placed or a stuck batch ends in a HeartMuLaError
instead of a hang."""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlparse

from heartmula.errors import HeartMuLaError
from heartmula.extras import optional_import


@dataclass
class RayTimeouts:
    connect: float = 30.0  # seconds for the cluster to answer
    start: float = 600.0  # for a worker to load its pipeline (and for the cluster to place it)
    batch: float = 3600.0  # for one batch of songs


def check_reachable(address: str, timeout: float) -> None:
    """A TCP connection to HOST:PORT (or ray://HOST:PORT) within `timeout` seconds, else a HeartMuLaError."""
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    if not parsed.hostname or not parsed.port:
        raise HeartMuLaError(f"--ray {address!r}: give auto, local, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=timeout):
            pass
    except OSError as exc:
        raise HeartMuLaError(f"no Ray cluster answers at {address} within {timeout:g} s ({exc}); start one with "
                             "`ray start --head` or check the address") from None


def start_local_ray(ray, num_cpus: int | None = None) -> None:
    """ray.init on this machine, once more if the raylet missed Ray's fixed 30 s start-up deadline (a busy
    machine)."""
    for attempt in range(2):
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
            return
        except Exception as exc:  # Ray raises a bare Exception for it
            ray.shutdown()
            if attempt or "timed out during startup" not in str(exc):
                raise


def connect(address: str, timeouts: RayTimeouts):
    """The ray module, connected: to an already initialised Ray as is; "local" starts one on this machine; "auto"
    joins the cluster this machine belongs to; otherwise HOST:PORT / ray://HOST:PORT after a reachability check."""
    ray = optional_import("ray", "scale", "heartmula batch --ray")
    if ray.is_initialized():
        return ray
    if address not in ("auto", "local"):
        check_reachable(address, timeouts.connect)
    try:
        if address == "local":
            start_local_ray(ray)
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, TimeoutError) as exc:
        raise HeartMuLaError(f"cannot join the Ray cluster at {address!r}: {exc}") from None
    return ray


def start_workers(ray, worker_class: type, options, count: int | None, timeouts: RayTimeouts) -> list:
    """`count` actors of `worker_class(options)` (default: one per GPU of the cluster, else one), each ready (its
    `device()` answered)."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    count = count or max(1, gpus)
    remote = ray.remote(worker_class).options(num_gpus=1 if gpus else 0, num_cpus=1, max_restarts=0)
    actors = [remote.remote(options) for _ in range(count)]
    try:
        ray.get([actor.device.remote() for actor in actors], timeout=timeouts.start)
    except ray.exceptions.GetTimeoutError:
        raise HeartMuLaError(f"the Ray workers did not start within {timeouts.start:g} s: the cluster may lack the "
                             f"resources for {count} workers ({'1 GPU' if gpus else '1 CPU'} each)") from None
    except ray.exceptions.RayError as exc:
        raise HeartMuLaError(f"a Ray worker could not load the pipeline: {exc}") from None
    return actors


def run_on_ray(batches: list[list], worker_class: type, options, address: str, workers: int | None,
               timeouts: RayTimeouts, record: Callable[[dict], None], failure: Callable[[object, str], dict]) -> None:
    """Run `batches` on actors of `worker_class(options)` (`run(batch) -> results`), passing every result to `record`
    (in this process) as its batch ends; a batch whose actor died gives `failure(request, reason)` per request."""
    ray = connect(address, timeouts)
    actors = start_workers(ray, worker_class, options, workers, timeouts)
    queue, running = deque(batches), {}
    for actor in actors:
        if queue:
            batch = queue.popleft()
            running[actor.run.remote(batch)] = (actor, batch)
    while running:
        ready, _ = ray.wait(list(running), num_returns=1, timeout=timeouts.batch)
        if not ready:
            raise HeartMuLaError(f"no Ray worker finished a batch within {timeouts.batch:g} s; the songs finished so "
                                 "far are in the manifest, and a new run resumes after them")
        actor, batch = running.pop(ready[0])
        try:
            results = ray.get(ready[0], timeout=timeouts.batch)
        except ray.exceptions.RayError as exc:  # the actor died: its batch fails, the others go on
            for request in batch:
                record(failure(request, f"Ray worker failed: {exc}"))
            actors.remove(actor)
            if not actors and queue:
                raise HeartMuLaError("every Ray worker has failed; the manifest lists what finished") from None
            continue
        for result in results:
            record(result)
        if queue:
            batch = queue.popleft()
            running[actor.run.remote(batch)] = (actor, batch)
    for actor in actors:
        ray.kill(actor)
