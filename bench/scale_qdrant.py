"""The library index in a vector database against the built-in folder index: top-10 query latency at 100k tracks of
synthetic 512-d unit vectors, the same queries on each, and how far their top 10 agree with the folder's exact scan.

Backends: Qdrant's embedded local mode (qdrant-client's in-process engine: a full numpy scan per query, no server;
a Qdrant server with an HNSW index is what a large library would use, and is not measured here), and PostgreSQL with
pgvector (`--postgres URL` for a server, `--postgres local` for a throwaway cluster on 127.0.0.1 started with the
installed server, as the tests do): filled through `add` inside `bulk_load()` as `index export` does (the HNSW
index is built once at the end), searched with HNSW (ef_search 100 and 400), 2000 rows written again into the indexed
table (the rate of writes that update the graph), then searched by an exact scan after dropping the index.

    python bench/scale_qdrant.py                                     # 100k tracks, Qdrant local mode
    python bench/scale_qdrant.py --tracks 20000                      # quicker
    python bench/scale_qdrant.py --backends postgres --postgres local
Writes bench/results/scale_qdrant.json, or scale_pgvector.json when PostgreSQL is the only backend measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from _machine import machine

from heartmula.clap.index import ClapIndex, Track, open_index
from heartmula.clap.pgvector_index import HNSW_EF_SEARCH

RESULTS = Path(__file__).resolve().parent / "results"


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


def agreement(tops: list[list[str]], exact: list[list[str]]) -> dict:
    """The share of queries with the very same top 10, and the mean share of the exact top 10 found (recall@10)."""
    same = float(np.mean([a == b for a, b in zip(tops, exact)]))
    recall = float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(tops, exact)]))
    return {"same_top10_share": round(same, 3), "recall_at_10": round(recall, 4)}


@contextmanager
def postgres_server(url: str):
    """`url` itself, or a throwaway cluster (tests/postgres_server.py) for "local"."""
    if url != "local":
        yield url
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from postgres_server import Cluster, find_bindir

    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("no PostgreSQL server with pgvector installed (scripts/setup_pgvector.sh)")
    cluster = Cluster(bindir).start()
    try:
        yield cluster.url
    finally:
        cluster.stop()


def bench_qdrant(tracks, vectors, queries, dim: int, folder_tops) -> dict:
    qdrant = open_index("qdrant-local::memory:", dim=dim, model="bench")
    fill_seconds = fill(qdrant, tracks, vectors, 5000)
    latency, tops = timed_searches(qdrant, queries, 10)
    return {"fill_seconds": fill_seconds, "search_top10": latency, **agreement(tops, folder_tops)}


def bench_postgres(url: str, tracks, vectors, queries, dim: int, folder_tops) -> dict:
    from heartmula.clap import pgvector_index

    index = open_index(f"{url}{'&' if '?' in url else '?'}table=heartmula_bench", dim=dim, model="bench")
    index.conn.execute(f"TRUNCATE {index.table}")
    index.conn.execute(f"DROP INDEX IF EXISTS {index.table}_embedding_hnsw")
    index.hnsw = False
    start = time.perf_counter()
    with index.bulk_load():  # as `index export` fills it
        insert_seconds = fill(index, tracks, vectors, 1024)
    index.ensure_hnsw()  # already built unless --tracks is below HNSW_MIN_TRACKS
    build_seconds = round(time.perf_counter() - start - insert_seconds, 1)
    hnsw = {}
    for ef_search in (pgvector_index.HNSW_EF_SEARCH, 400):
        index.ef_search = ef_search
        latency, tops = timed_searches(index, queries, 10)
        hnsw[f"ef_search_{ef_search}"] = {"search_top10": latency, **agreement(tops, folder_tops)}
    index.ef_search = pgvector_index.HNSW_EF_SEARCH
    rewritten = min(2000, len(tracks))  # rows written again: each one goes into the HNSW graph as a new entry
    start = time.perf_counter()
    fill(index, tracks[:rewritten], vectors[:rewritten], 100)
    writes_per_second = round(rewritten / (time.perf_counter() - start))
    index.conn.execute(f"DROP INDEX {index.table}_embedding_hnsw")
    exact_latency, exact_tops = timed_searches(index, queries, 10)
    index.conn.execute(f"DROP TABLE {index.table}, {index.meta_table}")
    index.close()
    return {"insert_seconds": insert_seconds, "hnsw_build_seconds": build_seconds,
            "hnsw_min_tracks": pgvector_index.HNSW_MIN_TRACKS, "hnsw": hnsw,
            "writes_per_second_with_hnsw": writes_per_second,
            "search_top10_exact_scan": exact_latency, "exact_scan": agreement(exact_tops, folder_tops)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--backends", default="qdrant", help="comma-separated: qdrant, postgres")
    parser.add_argument("--postgres", default="local", help="postgresql://... URL, or local (a throwaway cluster)")
    args = parser.parse_args()
    backends = args.backends.split(",")
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
        folder.close()
    command = "python bench/scale_qdrant.py" + (f" --tracks {args.tracks}" if args.tracks != 100_000 else "")
    if args.backends != "qdrant":
        command += f" --backends {args.backends}" + (" --postgres local" if "postgres" in backends else "")
    result = {"command": command, "machine": machine(), "load_average_1min": round(os.getloadavg()[0], 1),
              "tracks": args.tracks, "dim": args.dim,
              "folder_index": {"fill_seconds": folder_fill, "search_top10": folder_latency}}
    if "qdrant" in backends:
        result["qdrant_local_memory"] = bench_qdrant(tracks, vectors, queries, args.dim, folder_tops)
        result["qdrant_over_folder_latency"] = round(
            result["qdrant_local_memory"]["search_top10"]["median_ms"] / folder_latency["median_ms"], 1)
    if "postgres" in backends:
        with postgres_server(args.postgres) as url:
            result["postgres_pgvector"] = bench_postgres(url, tracks, vectors, queries, args.dim, folder_tops)
        result["postgres_hnsw_over_folder_latency"] = round(
            result["postgres_pgvector"]["hnsw"][f"ef_search_{HNSW_EF_SEARCH}"]["search_top10"]["median_ms"]
            / folder_latency["median_ms"], 2)
    result["load_average_1min_after"] = round(os.getloadavg()[0], 1)
    out = RESULTS / ("scale_pgvector.json" if backends == ["postgres"] else "scale_qdrant.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
