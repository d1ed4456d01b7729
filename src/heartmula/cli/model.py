"""`heartmula model`: inspect checkpoints, write fresh random-weight ones."""

from __future__ import annotations

import sys
from pathlib import Path

from heartmula.cards import CODE_LICENSE, default_license_lines, license_line
from heartmula.cli import add_command
from heartmula.errors import HeartMuLaError

# heartmula.lm.pretrained.PRESETS, named here so that building the parser does not import torch
LM_PRESETS = ("bench-36m", "tiny")


def register(verbs) -> None:
    p = verbs.add_parser("model", help="inspect or create model checkpoints",
                         description="Inspect a HeartMuLa checkpoint or write a fresh one with random weights.")
    sub = p.add_subparsers(dest="model_verb", metavar="ACTION")

    init = add_command(sub, "init", help="write a random-weight HeartMuLa root in the official layout",
                       description="""Write ROOT/HeartMuLa-oss-<version>/, ROOT/tokenizer.json and ROOT/gen_config.json
                       with random weights: for trying the pipeline, tests, benchmarks and as a start for training. It
                       makes noise, not music.""")
    init.add_argument("root", type=Path)
    init.add_argument("--preset", default="tiny", choices=LM_PRESETS)
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--version", default="3B")
    init.add_argument("--shard-mb", type=int, help="split the weights into shards of at most this many MB")
    init.set_defaults(handler=run_init)

    info = sub.add_parser("info", help="print a checkpoint's configuration, size and licence",
                          description="Print a checkpoint's configuration, size and the licence its model card "
                          "declares, as JSON. Without a path: the embedded default model, with the licences of all "
                          "embedded defaults (their weights are for research and non-commercial use; the heartmula "
                          "code is Apache-2.0).")
    info.add_argument("path", type=Path, nargs="?", help="checkpoint root or model folder (default: the embedded "
                      "default model)")
    info.add_argument("--version", default="3B")
    info.set_defaults(handler=run_info)
    convert = add_command(sub, "convert", help="copy an LM or codec checkpoint into one folder in another dtype",
                          description="""LM: write DST/config.json + model.safetensors (in --dtype) + tokenizer.json +
                          gen_config.json, a self-contained model folder that `--model DST` loads. Codec (a folder whose
                          config.json is a HeartCodec's): DST/config.json + model.safetensors. 16-bit dtypes halve the
                          disk size of a float32 checkpoint (loading upcasts to the dtype asked for). Optimizer state,
                          cached audio and logs of a training folder stay behind.""")
    convert.add_argument("source", type=Path, help="LM checkpoint root or model folder, or a codec folder")
    convert.add_argument("dest", type=Path, help="new folder (must not exist)")
    convert.add_argument("--version", default="3B")
    convert.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    convert.set_defaults(handler=run_convert)
    quantize = add_command(sub, "quantize", help="write an LM checkpoint with int8 or int4 weights",
                           description="""Write DIR/config.json + quantization.json + model.safetensors (int8 or int4
                           weights with float16 scales per group of 128 columns; docs/quantization.md) + tokenizer.json
                           + gen_config.json, a folder that `--model DIR` loads as such. The checkpoint is read one
                           tensor at a time: a 3B model never exists in float32.""")
    quantize.add_argument("root", type=Path, help="LM checkpoint root or model folder (float weights)")
    quantize.add_argument("--to", type=Path, required=True, dest="dest", help="new folder (must not exist)")
    quantize.add_argument("--quant", choices=["int8", "int4"], default="int4")
    quantize.add_argument("--version", default="3B")
    quantize.set_defaults(handler=run_quantize)
    merge = add_command(sub, "merge-lora", help="merge a LoRA adapter into an LM and write the merged checkpoint",
                        description="""Add a LoRA adapter's update (`heartmula train lora`, PEFT layout) into the LM's
                        weights and write OUT/HeartMuLa-oss-<version>/, OUT/tokenizer.json and OUT/gen_config.json: a
                        checkpoint root that generates as `--model ROOT --lora DIR` does, without the adapter. Pass
                        --codec when generating from it (the codec is not copied).""")
    merge.add_argument("root", help="LM checkpoint root or model folder, or `default` for the embedded default LM")
    merge.add_argument("--lora", type=Path, required=True, help="adapter folder")
    merge.add_argument("--lora-scale", type=float, default=1.0, help="multiply the adapter's update by this")
    merge.add_argument("--out", type=Path, required=True, help="new folder (must not exist)")
    merge.add_argument("--version", default="3B")
    merge.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    merge.set_defaults(handler=run_merge_lora)
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
    from heartmula.song_models import DEFAULT_LM_DIR, resolve_lm

    files = locate_lm(resolve_lm(args.path, args.version), args.version)
    config = HeartMuLaConfig.from_file(files.model_dir / "config.json")
    shapes = tensor_shapes(files.model_dir)
    params = sum(math.prod(s) for s in shapes.values())
    info = {
        "model_dir": str(files.model_dir),
        "tokenizer": str(files.tokenizer),
        "gen_config": str(files.gen_config) if files.gen_config else None,
        "parameters": params,
        "tensors": len(shapes),
        "backbone": config.backbone.to_dict(),
        "decoder": config.decoder.to_dict(),
        "audio_vocab_size": config.audio_vocab_size,
        "audio_num_codebooks": config.audio_num_codebooks,
        "license": license_line(files.model_dir) or license_line(files.model_dir.parent),
    }
    if files.model_dir.resolve() == DEFAULT_LM_DIR:
        info["default_model_licenses"] = default_license_lines()
        info["code_license"] = CODE_LICENSE
        print(f"licence: the embedded default models' weights are for research and non-commercial use only "
              f"(terms: LICENSE.md in each folder of {DEFAULT_LM_DIR.parent}); the heartmula code is {CODE_LICENSE}",
              file=sys.stderr)
    print(json.dumps(info, indent=2))
    return 0


def run_convert(args) -> int:
    import os
    import shutil
    import tempfile

    from heartmula.checkpoint import parse_dtype
    from heartmula.codec.model import HeartCodec
    from heartmula.lm.model import HeartMuLa
    from heartmula.lm.pretrained import GEN_CONFIG_FILE, TOKENIZER_FILE, locate_lm

    if args.dest.exists():
        raise HeartMuLaError(f"{args.dest} already exists: choose a new folder")
    dtype = parse_dtype(args.dtype)
    files = None if _is_codec_folder(args.source) else locate_lm(args.source, args.version)
    if files is None:
        model = HeartCodec.from_pretrained(args.source).to(dtype)
    else:
        model = HeartMuLa.from_pretrained(files.model_dir, dtype=dtype)
    args.dest.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the destination, then renamed: an interrupted run leaves no half folder under the real name.
    staging = Path(tempfile.mkdtemp(prefix=f".{args.dest.name}.", dir=args.dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the folder should look like any other the user makes
    try:
        model.save_pretrained(staging)
        if files is not None:
            shutil.copy(files.tokenizer, staging / TOKENIZER_FILE)
            if files.gen_config is not None:
                shutil.copy(files.gen_config, staging / GEN_CONFIG_FILE)
        os.replace(staging, args.dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = sum(f.stat().st_size for f in args.dest.iterdir()) / 1e6
    print(f"wrote {args.dest} ({args.dtype}, {size:.1f} MB)")
    return 0


def _is_codec_folder(path: Path) -> bool:
    import json

    config = path / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == "heartcodec"


def run_quantize(args) -> int:
    import shutil
    import tempfile

    from heartmula.lm.pretrained import GEN_CONFIG_FILE, TOKENIZER_FILE, locate_lm
    from heartmula.lm.quantized import load_quantized, save_quantized

    if args.dest.exists():
        raise HeartMuLaError(f"{args.dest} already exists: choose a new folder")
    files = locate_lm(args.root, args.version)
    model = load_quantized(files.model_dir, args.quant)
    args.dest.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the destination, then renamed: an interrupted run leaves no half folder under the real name.
    staging = Path(tempfile.mkdtemp(prefix=f".{args.dest.name}.", dir=args.dest.parent))
    try:
        save_quantized(model, staging, args.quant)
        shutil.copy(files.tokenizer, staging / TOKENIZER_FILE)
        if files.gen_config is not None:
            shutil.copy(files.gen_config, staging / GEN_CONFIG_FILE)
        staging.chmod(0o755)
        staging.rename(args.dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = sum(f.stat().st_size for f in args.dest.iterdir()) / 1e6
    print(f"wrote {args.dest} ({args.quant}, {size:.1f} MB)")
    return 0


def run_merge_lora(args) -> int:
    from heartmula.lm.pretrained import write_merged_root
    from heartmula.song_models import resolve_lm

    root = resolve_lm(None if args.root == "default" else args.root, args.version)
    folder = write_merged_root(root, args.lora, args.out, args.version, args.lora_scale, args.dtype)
    print(f"wrote {folder}")
    return 0
