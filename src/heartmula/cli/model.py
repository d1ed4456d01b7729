"""`heartmula model`: inspect checkpoints, write fresh random-weight ones."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(verbs) -> None:
    p = verbs.add_parser("model", help="inspect or create model checkpoints",
                         description="Inspect a HeartMuLa checkpoint or write a fresh one with random weights.")
    sub = p.add_subparsers(dest="model_verb", metavar="ACTION")

    init = sub.add_parser("init", help="write a random-weight HeartMuLa root in the official layout",
                          description="Write ROOT/HeartMuLa-oss-<version>/, ROOT/tokenizer.json and "
                          "ROOT/gen_config.json with random weights: for trying the pipeline, tests, benchmarks "
                          "and as a start for training. It makes noise, not music.",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    init.add_argument("root", type=Path)
    from heartmula.lm.pretrained import PRESETS

    init.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--version", default="3B")
    init.add_argument("--shard-mb", type=int, help="split the weights into shards of at most this many MB")
    init.set_defaults(handler=run_init)

    info = sub.add_parser("info", help="print a checkpoint's configuration and size")
    info.add_argument("path", type=Path, help="checkpoint root or model folder")
    info.add_argument("--version", default="3B")
    info.set_defaults(handler=run_info)
    p.set_defaults(handler=lambda args: p.print_help() or 2)


def run_init(args) -> int:
    from heartmula.lm.pretrained import write_random_root

    shard = None if args.shard_mb is None else args.shard_mb * 1_000_000
    folder = write_random_root(args.root, args.preset, args.seed, args.version, shard)
    print(f"wrote {folder}")
    return 0


def run_info(args) -> int:
    import json
    import math

    from heartmula.checkpoint import tensor_shapes
    from heartmula.lm.config import HeartMuLaConfig
    from heartmula.lm.pretrained import locate_lm

    files = locate_lm(args.path, args.version)
    config = HeartMuLaConfig.from_file(files.model_dir / "config.json")
    shapes = tensor_shapes(files.model_dir)
    params = sum(math.prod(s) for s in shapes.values())
    print(json.dumps({
        "model_dir": str(files.model_dir),
        "tokenizer": str(files.tokenizer),
        "gen_config": str(files.gen_config) if files.gen_config else None,
        "parameters": params,
        "tensors": len(shapes),
        "backbone": config.backbone.to_dict(),
        "decoder": config.decoder.to_dict(),
        "audio_vocab_size": config.audio_vocab_size,
        "audio_num_codebooks": config.audio_num_codebooks,
    }, indent=2))
    return 0
