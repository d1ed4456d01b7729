"""`heartmula batch REQUESTS.jsonl --out DIR [--ray auto|local|ADDRESS]`: many songs, resumable."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from heartmula.cli import add_command, add_device_options, add_int8_option, add_song_model_options
from heartmula.extras import require


def register(verbs) -> None:
    p = add_command(verbs, "batch", help="make many songs from a JSONL file of requests, here or on a Ray cluster",
                    description="""Generate one song per line of REQUESTS.jsonl ({"id", "lyrics", "tags", "duration",
                    "seed", "sampling": {"temperature", "top_k", "cfg_scale", "lyrics_scale"}, "min_duration", "lora":
                    adapter folder}) into DIR: <id>.wav, <id>.npy and manifest.jsonl (path, codes, seconds, or the
                    failure's reason). Running again skips finished ids and retries failed ones. Requests with the same
                    duration and sampling share a batch; a song is the same alone or in a batch.""")
    p.add_argument("requests", type=Path, help="JSONL file, one request a line")
    p.add_argument("--out", type=Path, required=True, help="folder for the songs and manifest.jsonl")
    p.add_argument("--ray", metavar="ADDRESS", help="run on Ray: auto (the cluster this machine joined), local "
                   "(start Ray here), HOST:PORT or ray://HOST:PORT; default: in this process")
    p.add_argument("--workers", type=int, help="Ray actors, one pipeline each (default: one per GPU, else one)")
    p.add_argument("--batch-size", type=int, default=4, help="songs one worker generates together")
    add_song_model_options(p, "checkpoint root or model folder (the same path on every Ray node); default: the "
                           "embedded default model")
    p.add_argument("--format", default="wav", choices=["wav", "flac", "mp3", "ogg"], help="audio file format")
    p.add_argument("--connect-timeout", type=float, default=30.0, help="seconds for the Ray cluster to answer")
    p.add_argument("--start-timeout", type=float, default=600.0, help="seconds for the Ray workers to load")
    p.add_argument("--batch-timeout", type=float, default=3600.0, help="seconds for one batch on a Ray worker")
    add_device_options(p)
    add_int8_option(p)
    p.add_argument("--quiet", action="store_true", help="no line per song")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from heartmula.batch import BatchOptions, RayTimeouts, run_batch

    if args.ray:
        require("scale", "ray", feature="heartmula batch --ray")
    options = BatchOptions(model=args.model, version=args.version, codec=args.codec, device=args.device,
                           dtype=args.dtype, int8=args.int8, batch_size=args.batch_size, audio_format=args.format)
    timeouts = RayTimeouts(connect=args.connect_timeout, start=args.start_timeout, batch=args.batch_timeout)

    def report(entry: dict) -> None:
        if not args.quiet:
            outcome = f"{entry['seconds']:.1f} s" if entry["status"] == "done" else f"failed: {entry['error']}"
            print(f"{entry['id']}: {outcome}", file=sys.stderr)

    summary = run_batch(args.requests, args.out, options, args.ray, args.workers, timeouts, report)
    print(f"{summary.done} songs made, {summary.failed} failed, {summary.skipped} already done; manifest "
          f"{args.out / 'manifest.jsonl'}")
    return 1 if summary.failed else 0
