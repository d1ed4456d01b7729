"""The library index in Qdrant's embedded local mode against the built-in folder index: top-10 query latency at
100k tracks of synthetic 512-d unit vectors, the same queries on both, and whether the top 10 agree.

Local mode is qdrant-client's in-process engine (a full numpy scan per query, no server); a Qdrant server with an
HNSW index is what a large library would use, and is not measured here.

    python bench/scale_qdrant.py                  # 100k tracks
    python bench/scale_qdrant.py --tracks 20000   # quicker
Writes bench/results/scale_qdrant.json.
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

from heartmula.clap.index import ClapIndex, Track, open_index

RESULTS = Path(__file__).resolve().parent / "results" / "scale_qdrant.json"


def unit_vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal((n, dim), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def timed_searches(index, queries: np.ndarray, k: int) -> tuple[dict, list[list[str]]]:
    index.search(queries[0], k)  # warm up
    times, tops = [], []
    for query in queries:
        start = time.perf_counter()
        hits = index.search(query, k)
        times.append((time.perf_counter() - start) * 1000)
        tops.append([h.track.path for h in hits])
    return {"median_ms": round(float(np.median(times)), 2), "p95_ms": round(float(np.percentile(times, 95)), 2),
            "queries": len(times)}, tops


def fill(index, tracks: list[Track], vectors: np.ndarray, batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(tracks), batch):
        index.add(tracks[i : i + batch], vectors[i : i + batch])
    return round(time.perf_counter() - start, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    vectors = unit_vectors(args.tracks, args.dim, rng)
    tracks = [Track(f"/music/artist{i % 997}/track{i:07d}.flac", title=f"track {i}", tags="pop") for i in
              range(args.tracks)]
    queries = unit_vectors(args.queries, args.dim, rng)
    with tempfile.TemporaryDirectory() as tmp:
        folder = ClapIndex(Path(tmp) / "folder", dim=args.dim, model="bench")
        folder_fill = fill(folder, tracks, vectors, 5000)
        folder.load()
        folder_latency, folder_tops = timed_searches(folder, queries, 10)
        qdrant = open_index("qdrant-local::memory:", dim=args.dim, model="bench")
        qdrant_fill = fill(qdrant, tracks, vectors, 5000)
        qdrant_latency, qdrant_tops = timed_searches(qdrant, queries, 10)
    agree = float(np.mean([a == b for a, b in zip(folder_tops, qdrant_tops)]))
    result = {
        "command": "python bench/scale_qdrant.py" + (f" --tracks {args.tracks}" if args.tracks != 100_000 else ""),
        "machine": machine(), "load_average_1min": round(os.getloadavg()[0], 1), "tracks": args.tracks,
        "dim": args.dim,
        "folder_index": {"fill_seconds": folder_fill, "search_top10": folder_latency},
        "qdrant_local_memory": {"fill_seconds": qdrant_fill, "search_top10": qdrant_latency},
        "qdrant_over_folder_latency": round(qdrant_latency["median_ms"] / folder_latency["median_ms"], 1),
        "same_top10_share": agree,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
