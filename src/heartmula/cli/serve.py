"""`heartmula serve`: the HTTP/WebSocket API and the web page (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import os
import sys

from heartmula.cli import add_command, add_lm_loading_options, add_song_model_options
from heartmula.errors import HeartMuLaError
from heartmula.extras import require


def register(verbs) -> None:
    p = add_command(verbs, "serve", help="run the API server and the web page",
                    description="""Serve the web page (compose, live player, library, transcription) and the
                    REST/WebSocket API on one port. Song jobs are kept in a SQLite queue under --data and survive
                    restarts. The API spec is at /openapi.json.""")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 exposes the server to the "
                   "network (use --token then)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--data", default="heartmula-data", help="folder for the job database and the finished songs")
    add_song_model_options(p, "HeartMuLa checkpoint root (HeartMuLa-oss-<version>/, tokenizer.json, gen_config.json) "
                           "or a model folder")
    add_lm_loading_options(p)
    p.add_argument("--token", help="require `Authorization: Bearer TOKEN` on the API (default: the "
                   "HEARTMULA_TOKEN environment variable; unset = no auth)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser pages from ORIGIN (e.g. http://localhost:3000) to call the API; "
                   "repeatable; default: CORS off")
    p.add_argument("--allowed-hosts", default="", metavar="HOSTS",
                   help="comma-separated Host header values to answer (e.g. music.example.org,localhost; "
                   "*.example.org matches subdomains); default: any")
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="largest accepted upload (transcription)")
    p.add_argument("--max-duration", type=float, default=300.0, help="longest song a job may ask for, seconds")
    p.add_argument("--max-batch", type=int, default=4, help="most queued songs generated together in one LM "
                   "batch (songs with equal sampling settings and similar durations)")
    p.add_argument("--transcribe-model", help="Whisper for /api/transcribe: base, tiny.en or a folder; "
                   "default: the embedded base")
    p.add_argument("--clap-model", help="HeartCLAP folder for searching the library by text or example; "
                   "default: the shipped HeartCLAP when installed, else search by text in titles/tags/lyrics only")
    p.add_argument("--search-index", metavar="LOCATION", help="where the library search index lives: default "
                   "DATA/clap-index/; or a Qdrant collection, qdrant://HOST:PORT/COLLECTION, or a PostgreSQL table, "
                   "postgresql://USER:PASSWORD@HOST:PORT/DATABASE?table=NAME (the 'scale' extra)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's choice)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    require("serve", "fastapi", "uvicorn", feature="heartmula serve")
    import uvicorn

    from heartmula.serve.app import TOKEN_ENV, ServeConfig, create_app

    if not 0 < args.port < 65536:
        raise HeartMuLaError(f"--port must be 1-65535, got {args.port}")
    if args.max_upload_mb <= 0 or args.max_duration <= 0 or args.max_batch < 1:
        raise HeartMuLaError("--max-upload-mb and --max-duration must be > 0, --max-batch >= 1")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    config = ServeConfig(
        data_dir=args.data, model=args.model, version=args.version, codec=args.codec, dtype=args.dtype,
        device=args.device, int8=args.int8, quant=args.quant, lora=args.lora, lora_scale=args.lora_scale,
        token=args.token or os.environ.get(TOKEN_ENV) or None,
        cors_origins=args.cors_origin, allowed_hosts=[h.strip() for h in args.allowed_hosts.split(",") if h.strip()],
        max_upload_bytes=int(args.max_upload_mb * (1 << 20)), max_duration=args.max_duration,
        max_batch=args.max_batch, transcribe_model=args.transcribe_model, clap_model=args.clap_model,
        search_index=args.search_index,
    )
    config.check()
    if config.token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"heartmula serve: warning: listening on {args.host} without --token; anyone who can reach the "
              "port can use the server", file=sys.stderr)
    app = create_app(config)
    recovery = app.state.recovery
    if recovery["requeued"] or recovery["failed"]:
        print(f"heartmula serve: after the last stop, re-queued {len(recovery['requeued'])} job(s), failed "
              f"{len(recovery['failed'])}", file=sys.stderr)
    print(f"heartmula serve: http://{args.host}:{args.port}/  (data in {args.data})", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
