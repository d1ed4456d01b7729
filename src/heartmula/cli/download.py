"""`heartmula download`: the official HeartMuLa weights from the Hugging Face Hub, in the layout `--model` reads."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from heartmula.cli import add_command
from heartmula.download import (
    CODEC_RELEASES,
    DEFAULT_CODEC,
    DEFAULT_LM,
    LM_RELEASES,
    DownloadRequest,
    download,
    parse_revisions,
)


def register(verbs) -> None:
    p = add_command(verbs, "download", help="fetch the official HeartMuLa weights (about 22 GB) into a checkpoint root",
                    description="""Fetch the official HeartMuLa releases from the Hugging Face Hub into ROOT:
                    tokenizer.json and gen_config.json (HeartMuLa/HeartMuLaGen), HeartMuLa-oss-3B/ (the LM release
                    chosen), HeartCodec-oss/ (the codec release chosen), and optionally HeartTranscriptor-oss/ and
                    HeartCLAP-oss/. Interrupted downloads resume when run again. HF_ENDPOINT (a mirror), HF_TOKEN and
                    HF_HOME are respected. The result is checked with the loaders' own validation (names, shapes,
                    dtypes; no weights read).""")
    p.add_argument("root", nargs="?", type=Path, default=Path("ckpt"), help="checkpoint root to fill")
    p.add_argument("--lm", default=DEFAULT_LM, choices=list(LM_RELEASES),
                   help="LM release: " + ", ".join(f"{k} = {v}" for k, v in LM_RELEASES.items()))
    p.add_argument("--codec", default=DEFAULT_CODEC, choices=list(CODEC_RELEASES),
                   help="codec release: " + ", ".join(f"{k} = {v}" for k, v in CODEC_RELEASES.items()))
    p.add_argument("--with-transcriber", action="store_true", help="also HeartMuLa/HeartTranscriptor-oss "
                   "(lyrics transcription, a Whisper model) into ROOT/HeartTranscriptor-oss")
    p.add_argument("--with-clap", action="store_true", help="also HeartMuLa/HeartCLAP-oss into ROOT/HeartCLAP-oss, "
                   "if the hub holds it")
    p.add_argument("--revision", action="append", default=[], metavar="[REPO=]REV",
                   help="branch, tag or commit to fetch: REV for every repository, REPO=REV for one (REPO: its id "
                   "or name, e.g. HeartMuLa-oss-3B-happy-new-year=<commit>); repeatable; default: main")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    request = DownloadRequest(root=args.root, lm=args.lm, codec=args.codec, with_transcriber=args.with_transcriber,
                              with_clap=args.with_clap)
    request.revisions = parse_revisions(args.revision, [part.repo_id for part in request.parts()])
    result = download(request, log=lambda line: print(line, file=sys.stderr, flush=True))
    for line in result.checked:
        print(f"checked {line}")
    pins = " ".join(f"--revision {s.part.repo_id.split('/')[-1]}={s.commit}" for s in result.snapshots)
    print(f"\nThe same files again, pinned: heartmula download {args.root} --lm {args.lm} --codec {args.codec} {pins}")
    print(f"Next: heartmula generate --model {args.root} --tags 'pop,piano' --lyrics lyrics.txt --out song.wav"
          " (add --device cuda --dtype bfloat16 on a GPU)")
    if args.with_transcriber:
        print(f"      heartmula transcribe song.wav --model {args.root}/HeartTranscriptor-oss")
    return 0
