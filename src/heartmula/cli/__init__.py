"""`heartmula <verb>`: a thin layer; every verb is a call into the package.

Each verb lives in its own module with `register(subparsers)`. Building the parser imports every verb's module, so
these modules import at load only what needs nothing beyond the standard library (errors, extras, files, ...), and
each handler imports the implementation it calls (torch and the models): `--help` stays instant
(tests/test_imports.py checks both).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from heartmula import __version__
from heartmula.errors import HeartMuLaError

VERB_MODULES = (
    "heartmula.cli.generate",
    "heartmula.cli.model",
    "heartmula.cli.download",
    "heartmula.cli.codec",
    "heartmula.cli.transcribe",
    "heartmula.cli.align",
    "heartmula.cli.eval",
    "heartmula.cli.train",
    "heartmula.cli.data",
    "heartmula.cli.serve",
    "heartmula.cli.clap",
    "heartmula.cli.stream",
    "heartmula.cli.batch",
    "heartmula.cli.doctor",
)

VERSION_HELP = "which HeartMuLa-oss-<version> of the root to load"


def add_command(actions, name: str, *, help: str, description: str, **options) -> argparse.ArgumentParser:
    """A (sub)command of `actions` whose --help shows each option's default; `help` is its line in the list of
    `actions`. --help folds the white space of `description`, so it is written as a text block."""
    return actions.add_parser(name, help=help, description=description,
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter, **options)


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """`--threads N`; without it (None) torch keeps its own number of CPU threads."""
    parser.add_argument("--threads", type=int, help="torch CPU threads (None: torch's choice)")


def add_int8_option(parser: argparse.ArgumentParser) -> None:
    """`--int8/--no-int8` for the verbs that load an LM (see heartmula.song_models.int8_by_default)."""
    parser.add_argument("--int8", action=argparse.BooleanOptionalAction, help="int8 weight-only linear layers in "
                        "the LM (a CPU speed-up where the native decoding kernels cannot be built; with them float32 "
                        "is faster); default: on for the embedded default LM in float32 on such a CPU, off "
                        "otherwise and for other checkpoints (they run as upstream)%(default).0s")  # .0s: no default
    parser.add_argument("--quant", choices=["int8", "int4"], help="weight-only int8 or int4 LM weights on the CPU's "
                        "native kernels, quantised while the checkpoint loads (docs/quantization.md); a folder "
                        "written by `heartmula model quantize` loads as such without it")


def add_lora_options(parser: argparse.ArgumentParser) -> None:
    """`--lora DIR` and `--lora-scale S` for the verbs that load an LM (see heartmula.lm.lora)."""
    parser.add_argument("--lora", metavar="DIR", help="a LoRA adapter folder (`heartmula train lora`, PEFT layout: "
                        "adapter_config.json + adapter_model.safetensors) merged into the LM's weights at load")
    parser.add_argument("--lora-scale", type=float, default=1.0, metavar="S", help="multiply the adapter's update "
                        "by S (0 = the base model, 1 = as trained)")


def add_continue_options(parser: argparse.ArgumentParser) -> None:
    """`--continue SONG` and `--from-seconds T` for the verbs that make a song (see HeartMuLaPipeline.prompt_codes);
    `check_continue_options` checks them before anything loads."""
    parser.add_argument("--continue", dest="continue_from", type=Path, metavar="SONG", help="continue a song: its "
                        "codes (.npy as --codes-out writes them) or its audio (encoded with the codec, which needs "
                        "an encoder); its frames start the new song unchanged")
    parser.add_argument("--from-seconds", type=float, metavar="T", help="with --continue: keep the first T seconds "
                        "of the song and make the rest anew (default: keep all of it and add to its end)")


def check_continue_options(args: argparse.Namespace) -> None:
    """Refuse `--from-seconds` without `--continue` before anything loads."""
    if args.from_seconds is not None and args.continue_from is None:
        raise HeartMuLaError("--from-seconds needs --continue SONG: the song whose first seconds are kept")


def add_song_model_options(parser: argparse.ArgumentParser, model_help: str) -> None:
    """`--model`, `--version` and `--codec`: the checkpoints of the verbs that make songs."""
    parser.add_argument("--model", help=model_help)
    parser.add_argument("--version", default="3B", help=VERSION_HELP)
    parser.add_argument("--codec", help="HeartCodec root or folder; default: HeartCodec-oss/ beside the LM")


def add_lm_loading_options(parser: argparse.ArgumentParser) -> None:
    """`--device`, `--dtype`, `--int8`, `--quant`, `--lora` and `--lora-scale`: how the verbs that make songs load
    the LM."""
    add_device_options(parser)
    add_int8_option(parser)
    add_lora_options(parser)


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """`--device` and `--dtype` for the verbs that load an LM (see heartmula.pipeline.HeartMuLaPipeline)."""
    parser.add_argument("--device", default="auto", help="torch device: auto (CUDA, else MPS, else CPU), cpu, cuda, "
                        "cuda:1, mps")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="the LM's weights; default: "
                        "bfloat16 on CUDA (as upstream), float32 elsewhere (the codec decodes in float32)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heartmula",
        description="Music foundation models: songs from lyrics and tags, codec, transcription, search, streaming.",
    )
    parser.add_argument("--version", action="version", version=f"heartmula {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", title="verbs")
    for module in VERB_MODULES:
        importlib.import_module(module).register(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except HeartMuLaError as exc:
        print(f"heartmula: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("heartmula: interrupted", file=sys.stderr)
        return 130
