"""HeartCLAP library index at scale: build, open and search 100k tracks of synthetic 512-d vectors.

Measures (one run): adding tracks in batches; then, in a fresh process per BLAS thread count (1 and 2), opening the
saved index (SQLite rows + loading the vector matrix), search latency (top 10, exact) over random queries, removing
1% of the tracks and searching again. Writes bench/results/clap_index.json.

    python bench/clap_index.py                     # 100k tracks
    python bench/clap_index.py --tracks 20000      # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _machine import machine

RESULTS = Path(__file__).resolve().parent / "results" / "clap_index.json"


def unit_vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal((n, dim), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def latencies(index, queries: np.ndarray, k: int) -> dict:
    """Wall time per query, and CPU time of this process per query (steadier on a shared machine)."""
    times, cpu = [], []
    for q in queries:
        start, start_cpu = time.perf_counter(), time.process_time()
        index.search(q, k)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    times_ms = np.array(times) * 1000
    return {"median_ms": float(np.median(times_ms)), "p95_ms": float(np.percentile(times_ms, 95)),
            "max_ms": float(times_ms.max()), "cpu_median_ms": float(np.median(cpu) * 1000), "queries": len(times)}


def measure(folder: Path, threads: int, queries: int, k: int, tracks: int, dim: int) -> dict:
    """Runs in a child process whose BLAS thread count was fixed by the environment before numpy loaded."""
    from heartmula.clap.index import ClapIndex

    rng = np.random.default_rng(1)
    start = time.perf_counter()
    index = ClapIndex(folder, create=False)
    index.load()
    open_s = time.perf_counter() - start
    qs = unit_vectors(queries, dim, rng)
    index.search(qs[0], k)  # warm the caches once
    result = {"threads": threads, "open_and_load_seconds": round(open_s, 3), "search": latencies(index, qs, k)}
    # the bfloat16 scan + float32 re-scoring against a plain float32 scan: share of the true top k returned
    matrix = np.load(folder / "vectors.npy", mmap_mode="r")[:tracks]
    found = []
    for q in qs[:50]:
        truth = set(np.argsort(-(matrix @ q))[:k].tolist())
        got = {int(h.track.path.rsplit("track", 1)[1].split(".")[0]) for h in index.search(q, k)}
        found.append(len(truth & got) / k)
    result["recall_vs_exact_float32"] = float(np.mean(found))
    victims = [f"/music/artist{i % 997}/track{i:07d}.flac" for i in range(0, tracks, 100)]
    start = time.perf_counter()
    result["removed"] = index.remove(victims)
    result["remove_seconds"] = round(time.perf_counter() - start, 3)
    result["search_after_remove"] = latencies(index, qs[:50], k)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=5000, help="tracks per add() call")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # child mode: index folder
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.threads, args.queries, args.k, args.tracks, args.dim)))
        return

    from heartmula.clap.index import ClapIndex, Track

    rng = np.random.default_rng(0)
    folder = Path(tempfile.mkdtemp(prefix="clap-index-bench-"))
    try:
        index = ClapIndex(folder, dim=args.dim, model="bench")
        start = time.perf_counter()
        for first in range(0, args.tracks, args.batch):
            n = min(args.batch, args.tracks - first)
            tracks = [Track(f"/music/artist{(first + i) % 997}/track{first + i:07d}.flac", title=f"track {first + i}",
                            tags="pop,piano", duration=180.0) for i in range(n)]
            index.add(tracks, unit_vectors(n, args.dim, rng))
        add_s = time.perf_counter() - start
        index.close()
        sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
        runs = []
        for threads in (1, 2):
            copy = folder.with_name(folder.name + f"-{threads}")
            shutil.copytree(folder, copy)  # each child removes tracks: give it its own copy
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
                   "MKL_NUM_THREADS": str(threads)}
            out = subprocess.run([sys.executable, __file__, "--measure", str(copy), "--threads", str(threads),
                                  "--queries", str(args.queries), "--k", str(args.k), "--tracks", str(args.tracks),
                                  "--dim", str(args.dim)], env=env, capture_output=True, text=True, check=True)
            shutil.rmtree(copy, ignore_errors=True)
            runs.append(json.loads(out.stdout))
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    result = {
        "tracks": args.tracks, "dim": args.dim, "k": args.k,
        "search": "bfloat16 scan of all vectors, top max(4k, k+64) re-scored in float32",
        "add_seconds": round(add_s, 2), "add_tracks_per_second": round(args.tracks / add_s),
        "files_bytes": sizes,
        "runs": runs,
        "machine": {**machine(), "python": platform.python_version(), "numpy": np.__version__,
                    "load_average_at_end": os.getloadavg()[0]},
        "note": "wall-clock latencies; load_average_at_end tells whether other jobs shared the machine",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
