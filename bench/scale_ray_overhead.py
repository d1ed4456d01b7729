"""`heartmula batch` on a local Ray cluster against in-process: the cost Ray adds per song.

A tiny random checkpoint keeps the model's own work small, so the difference is Ray's (task dispatch, moving codes
and audio through the object store) rather than generation speed. Both runs make the same songs (same seeds; the
codes are compared). Per-song time is the steady state: from the first finished song to the last, divided by the
songs in between, so pipeline loading and Ray's start are reported apart.

    python bench/scale_ray_overhead.py               # 24 songs of 4 s
Writes bench/results/scale_ray_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from _machine import machine

from heartmula import batch_ray
from heartmula.batch import BatchOptions, read_manifest, run_batch
from heartmula.codec.pretrained import write_random_codec
from heartmula.lm.pretrained import write_random_root

RESULTS = Path(__file__).resolve().parent / "results" / "scale_ray_overhead.json"


def start_local_ray(ray) -> None:
    """A local Ray with 2 CPUs."""
    # A shared machine: Ray's memory monitor would kill workers for other processes' memory.
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    batch_ray.start_local_ray(ray, num_cpus=2)


def timed_run(requests: Path, out: Path, options: BatchOptions, ray_address: str | None) -> dict:
    finished = []
    started = time.perf_counter()
    run_batch(requests, out, options, ray_address=ray_address, workers=1,
              on_record=lambda entry: finished.append(time.perf_counter()))
    total = time.perf_counter() - started
    steady = (finished[-1] - finished[0]) / max(1, len(finished) - 1)
    return {"songs": len(finished), "total_seconds": round(total, 2), "until_first_song_seconds":
            round(finished[0] - started, 2), "seconds_per_song_steady": round(steady, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--songs", type=int, default=24)
    parser.add_argument("--duration", type=float, default=4.0)
    args = parser.parse_args()
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_random_root(tmp / "ckpt", "tiny", seed=3)
        write_random_codec(tmp / "ckpt" / "HeartCodec-oss", "tiny", seed=0)
        requests = tmp / "requests.jsonl"
        requests.write_text("".join(json.dumps({"id": f"s{i}", "lyrics": f"[verse]\nla {i}", "tags": "pop",
                                                "duration": args.duration, "seed": i}) + "\n"
                                    for i in range(args.songs)))
        # batch size 1: one Ray task per song, the most overhead Ray can add
        options = BatchOptions(model=str(tmp / "ckpt"), device="cpu", batch_size=1)
        here = timed_run(requests, tmp / "here", options, None)
        ray_start = time.perf_counter()
        start_local_ray(ray)
        init_seconds = time.perf_counter() - ray_start
        try:
            on_ray = timed_run(requests, tmp / "ray", options, "local")
        finally:
            ray.shutdown()
        same = all(np.array_equal(np.load(tmp / "here" / r["codes"]), np.load(tmp / "ray" / r["codes"]))
                   for r in read_manifest(tmp / "here").values())
    result = {
        "command": "python bench/scale_ray_overhead.py" + (f" --songs {args.songs}" if args.songs != 24 else ""),
        "machine": machine(),
        "load_average_1min": round(os.getloadavg()[0], 1), "songs": args.songs, "song_seconds": args.duration,
        "batch_size": 1, "ray_workers": 1, "in_process": here, "ray_local": on_ray,
        "ray_init_seconds": round(init_seconds, 2),
        "ray_overhead_ms_per_song": round(1000 * (on_ray["seconds_per_song_steady"]
                                                  - here["seconds_per_song_steady"]), 1),
        "same_codes": same,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
