"""Server soak: many short song jobs while faults strike at random. Every job must end done, or failed with a
reason; no temporary file may remain; the server's memory must stay flat between restarts.

Two ways to run it, both on loopback with tiny random-weight models made on the spot:
- a real `heartmula serve` process (default). Faults: SIGKILL and restart; the songs folder on a read-only mount
  for a moment; the data file system full for a moment. The last two need root (a small tmpfs and a read-only bind
  mount); without root only kills are injected.
- `--in-process` (what the test suite runs): the app in this process. Faults: a graceful restart, a batch that
  raises, the job database refusing writes (SQLite query_only) and a full disk (SQLite max_page_count, audio
  writes failing with ENOSPC).

    python bench/server_soak.py --jobs 200                      # writes bench/results/server_soak.json
    python bench/server_soak.py --jobs 600 --fault-rate 0 --jobs-per-round 10 \
        --out bench/results/server_soak_no_faults.json          # memory over a long run without restarts
    python bench/server_soak.py --jobs 20 --in-process --out -

Each round submits a few songs (a fault may strike meanwhile), waits for them to end and samples the server's
resident memory; `rss_growth_second_half_mb` is the growth over the second half of each server process's run.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

SONG = {"lyrics": "[verse]\nhello river\n", "tags": "pop,piano", "duration": 1.0}
RESULTS = Path(__file__).with_name("results") / "server_soak.json"
TERMINAL = ("done", "failed")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def make_models(root: Path) -> Path:
    from heartmula.codec.pretrained import write_random_codec
    from heartmula.lm.pretrained import write_random_root

    write_random_root(root, "tiny", seed=0)
    write_random_codec(root / "HeartCodec-oss", "tiny", seed=0)
    return root


@dataclass
class Tally:
    submitted: list[str] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)  # submit answers other than 201, by status
    faults: dict[str, int] = field(default_factory=dict)
    rss: list[tuple[int, float]] = field(default_factory=list)  # (server pid, MB) after each round

    def count(self, table: dict, key) -> None:
        table[str(key)] = table.get(str(key), 0) + 1


# --- faults on a real server process --------------------------------------------------------------------------------
class ProcessServer:
    """`heartmula serve` on a port; its data on a small tmpfs when root can mount one."""

    def __init__(self, models: Path, folder: Path, tmpfs_mb: int):
        from serve_helpers import free_port  # tests/serve: the same launcher the tests use

        self.models, self.port = models, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mount = folder / "mnt"
        self.mount.mkdir()
        self.root_faults = os.geteuid() == 0 and self._run("mount", "-t", "tmpfs", "-o", f"size={tmpfs_mb}m",
                                                            "tmpfs", str(self.mount))
        self.data = self.mount / "data"
        self.log = folder / "server.log"
        self.proc: subprocess.Popen | None = None
        self._client = httpx.Client(base_url=self.url, timeout=60)

    @staticmethod
    def _run(*command: str) -> bool:
        return subprocess.run(command, capture_output=True).returncode == 0

    def start(self) -> None:
        command = [sys.executable, "-m", "heartmula", "serve", "--model", str(self.models), "--data", str(self.data),
                   "--port", str(self.port), "--threads", "1", "--log-level", "warning"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                if httpx.get(self.url + "/api/health", timeout=2).json()["model"] == "ready":
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the server did not start:\n{self.log.read_text()[-3000:]}")

    def client(self) -> httpx.Client:
        return self._client

    def pid(self) -> int:
        return self.proc.pid

    def kinds(self) -> list[str]:
        return ["kill", "read-only", "disk-full"] if self.root_faults else ["kill"]

    def inject(self, kind: str, hold: float) -> None:
        if kind == "kill":
            self.proc.kill()
            self.proc.wait(10)
            self.start()
        elif kind == "read-only":  # the songs folder on a read-only bind mount: real EROFS for the worker
            songs = str(self.data / "songs")
            self._run("mount", "--bind", songs, songs)
            self._run("mount", "-o", "remount,bind,ro", songs)
            time.sleep(hold)
            self._run("umount", "-l", songs)
        elif kind == "disk-full":  # fill the tmpfs, hold, free it
            filler = self.data / "filler.bin"
            with contextlib.suppress(OSError), open(filler, "wb") as out:
                while True:
                    out.write(b"\0" * (1 << 20))
            time.sleep(hold)
            filler.unlink(missing_ok=True)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def close(self) -> None:
        self.stop()
        self._client.close()
        if self.root_faults:
            self._run("umount", "-l", str(self.mount))


# --- faults in this process -----------------------------------------------------------------------------------------
class InProcessServer:
    """The app under a TestClient; faults reach into its store and worker."""

    def __init__(self, models: Path, folder: Path, tmpfs_mb: int = 0):
        self.models, self.data = models, folder / "data"
        self._client = None
        self.log = None

    def start(self) -> None:
        from fastapi.testclient import TestClient

        from heartmula.serve import ServeConfig, create_app

        config = ServeConfig(data_dir=self.data, model=self.models, store_retry_seconds=0.3)
        self._client = TestClient(create_app(config))
        self._client.__enter__()
        deadline = time.monotonic() + 120
        while self._client.get("/api/health").json()["model"] != "ready" and time.monotonic() < deadline:
            time.sleep(0.05)

    def client(self):
        return self._client

    def pid(self) -> int:
        return os.getpid()

    def kinds(self) -> list[str]:
        return ["restart", "batch-error", "read-only", "disk-full"]

    def inject(self, kind: str, hold: float) -> None:
        app = self._client.app
        store, worker = app.state.store, app.state.worker
        if kind == "restart":
            self.stop()
            self.start()
        elif kind == "batch-error":
            decode = worker.codec.decode

            def crash(*args, **kwargs):
                worker.codec.decode = decode
                raise RuntimeError("a batch crashed")

            worker.codec.decode = crash
        elif kind == "read-only":
            self._pragma(store, "query_only = 1", hold, "query_only = 0")
        elif kind == "disk-full":
            self._disk_full(store, hold)

    @staticmethod
    def _pragma(store, on: str, hold: float, off: str) -> None:
        with store._lock:
            store._db.execute(f"PRAGMA {on}")
        time.sleep(hold)
        with store._lock:
            store._db.execute(f"PRAGMA {off}")

    def _disk_full(self, store, hold: float) -> None:
        import heartmula.audio

        write = heartmula.audio.sf.write

        def no_space(path, *args, **kwargs):
            Path(path).write_bytes(b"RIFF")  # a few bytes land, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")

        with store._lock:
            pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        heartmula.audio.sf.write = no_space
        try:
            self._pragma(store, f"max_page_count = {pages}", hold, "max_page_count = 1073741823")
        finally:
            heartmula.audio.sf.write = write

    def stop(self) -> None:
        if self._client is not None:
            self._client.__exit__(None, None, None)
            self._client = None

    def close(self) -> None:
        self.stop()


# --- the run ----------------------------------------------------------------------------------------------------------
def submit(server, tally: Tally, rng: random.Random) -> None:
    body = dict(SONG, seed=rng.randrange(2**31), duration=round(rng.uniform(1.0, 2.0), 2))
    last = ""
    for _ in range(60):
        try:
            response = server.client().post("/api/songs", json=body)
        except httpx.HTTPError as exc:  # a restart in progress
            tally.count(tally.refused, "no answer")
            last = repr(exc)
            time.sleep(0.5)
            continue
        last = response.text[:300]
        if response.status_code == 201:
            tally.submitted.append(response.json()["id"])
            return
        tally.count(tally.refused, response.status_code)
        if response.status_code != 503 or "cause" not in response.json():
            raise AssertionError(f"a submit got {response.status_code}: {response.text[:300]}")
        time.sleep(0.3)
    raise AssertionError(f"submits kept failing: {last}")


def upload_garbage(server) -> None:
    """An upload that is not audio: it must leave nothing under DATA/uploads."""
    with contextlib.suppress(httpx.HTTPError):
        server.client().post("/api/transcribe", files={"file": ("x.wav", os.urandom(20_000), "audio/wav")})


def statuses(server, ids: list[str]) -> dict[str, dict]:
    jobs = {}
    for start in range(0, len(ids), 200):
        batch = ids[start:start + 200]
        for job_id in batch:
            jobs[job_id] = server.client().get(f"/api/songs/{job_id}").json()
    return jobs


def wait_quiet(server, ids: list[str], timeout: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = statuses(server, ids)
        if all(j.get("status") in TERMINAL for j in jobs.values()) or time.monotonic() > deadline:
            return jobs
        time.sleep(0.5)


def leftovers(data: Path, jobs: dict[str, dict]) -> list[str]:
    """Temp files, uploads, and song folders that no finished job owns."""
    found = [str(p) for p in data.rglob("*") if ".part" in p.name or p.name.startswith("tmp")]
    uploads = data / "uploads"
    found += [str(p) for p in uploads.iterdir()] if uploads.is_dir() else []
    done = {i for i, j in jobs.items() if j.get("status") == "done"}
    found += [str(p) for p in (data / "songs").iterdir() if p.name not in done]
    return found


def one_round(server, tally: Tally, rng: random.Random, jobs: int, fault_rate: float, hold: float) -> None:
    """Submit `jobs` songs and one garbage upload, maybe with a fault meanwhile (a restart before them); wait for
    the songs to end, then sample the server's memory (so each sample follows the same amount of work)."""
    kind = rng.choice(server.kinds()) if rng.random() < fault_rate else None
    fault = None
    if kind in ("kill", "restart"):
        server.inject(kind, hold)
    elif kind is not None:
        fault = threading.Thread(target=server.inject, args=(kind, hold))
        fault.start()
    for _ in range(jobs):
        submit(server, tally, rng)
    upload_garbage(server)
    if fault is not None:
        fault.join()
    if kind is not None:
        tally.count(tally.faults, kind)
    wait_quiet(server, tally.submitted[-jobs:], timeout=300)
    tally.rss.append((server.pid(), round(rss_mb(server.pid()), 1)))


def run_soak(jobs: int, in_process: bool, seed: int = 0, jobs_per_round: int = 5, hold: float = 1.5,
             fault_rate: float = 0.5, tmpfs_mb: int = 48, folder: Path | None = None) -> dict:
    rng = random.Random(seed)
    tally = Tally()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(folder or tmp)
        models = make_models(folder / "models")
        server = (InProcessServer if in_process else ProcessServer)(models, folder, tmpfs_mb)
        started = time.monotonic()
        try:
            server.start()
            while len(tally.submitted) < jobs:
                one_round(server, tally, rng, min(jobs_per_round, jobs - len(tally.submitted)), fault_rate, hold)
            final = wait_quiet(server, tally.submitted, timeout=300)
            server.stop()  # a graceful stop, then a start: the start-up sweep must find nothing to clean
            server.start()
            final = wait_quiet(server, tally.submitted, timeout=300)
            left = leftovers(server.data, final)
        finally:
            server.close()
        return summarize(tally, final, left, time.monotonic() - started, in_process, server)


def summarize(tally: Tally, final: dict, left: list[str], seconds: float, in_process: bool, server) -> dict:
    outcome: dict[str, int] = {}
    for job in final.values():
        tally.count(outcome, job.get("status"))
    unexplained = [i for i, j in final.items() if j.get("status") == "failed" and not j.get("message")]
    stuck = [i for i, j in final.items() if j.get("status") not in TERMINAL]
    reasons: dict[str, int] = {}
    for job in final.values():
        if job.get("status") == "failed":
            tally.count(reasons, job["message"][:100])
    return {
        "mode": "in-process" if in_process else "process",
        "root_faults": getattr(server, "root_faults", None),
        "jobs": len(tally.submitted), "outcome": outcome, "failed_reasons": reasons,
        "stuck": stuck, "failed_without_reason": unexplained, "leftovers": left[:20],
        "faults": tally.faults, "submit_refusals": tally.refused,
        "rss_growth_mb": rss_growth(tally.rss), "rss_growth_second_half_mb": rss_growth(tally.rss, 0.5),
        "rss_samples": tally.rss, "seconds": round(seconds, 1),
    }


def rss_growth(samples: list[tuple[int, float]], start: float = 0.0) -> float:
    """Largest growth within one server process, from the sample at fraction `start` of its run (the second sample
    when 0) to its last."""
    by_pid: dict[int, list[float]] = {}
    for pid, mb in samples:
        by_pid.setdefault(pid, []).append(mb)
    runs = [values for values in by_pid.values() if len(values) >= 3]
    return round(max((v[-1] - v[max(1, int(start * len(v)))] for v in runs), default=0.0), 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--in-process", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hold", type=float, default=1.5, help="seconds a read-only or disk-full fault lasts")
    parser.add_argument("--jobs-per-round", type=int, default=5)
    parser.add_argument("--fault-rate", type=float, default=0.5, help="chance of a fault in each round")
    parser.add_argument("--out", default=str(RESULTS), help="JSON file, or - for stdout only")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serve"))
    from _machine import machine

    result = run_soak(args.jobs, args.in_process, args.seed, args.jobs_per_round, args.hold, args.fault_rate)
    result = {"command": "python bench/server_soak.py " + " ".join(sys.argv[1:]), "machine": machine(), **result}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out != "-":
        Path(args.out).write_text(text + "\n")
    ok = not (result["stuck"] or result["failed_without_reason"] or result["leftovers"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
