"""Finding and loading HeartMuLa checkpoints: the official root layout or a bare model folder.

Official root:  ROOT/HeartMuLa-oss-<version>/ (config.json + safetensors), ROOT/tokenizer.json, ROOT/gen_config.json
Bare folder:    DIR/config.json + safetensors; tokenizer.json and gen_config.json in DIR or its parent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from heartmula.checkpoint import parse_dtype
from heartmula.errors import HeartMuLaError
from heartmula.lm.backends import QUANTIZED_FORMATS, load_weights, prepare_for_decoding, weight_format_of
from heartmula.lm.config import GEOMETRIES, GenerationConfig, HeartMuLaConfig
from heartmula.lm.generation import HeartMuLaGenerator
from heartmula.lm.lora import merge_lora, read_adapter
from heartmula.lm.model import CONFIG_FILE, HeartMuLa
from heartmula.text import TextTokenizer, byte_level_tokenizer

DEFAULT_VERSION = "3B"
TOKENIZER_FILE = "tokenizer.json"
GEN_CONFIG_FILE = "gen_config.json"


@dataclass(frozen=True)
class LMFiles:
    model_dir: Path
    tokenizer: Path
    gen_config: Path | None  # None: the official defaults


def locate_lm(path: str | os.PathLike, version: str = DEFAULT_VERSION) -> LMFiles:
    path = Path(path)
    if not path.is_dir():
        raise HeartMuLaError(f"model path {path} is not a folder")
    official = path / f"HeartMuLa-oss-{version}"
    if official.is_dir():
        model_dir, search = official, [path]
    elif (path / CONFIG_FILE).is_file():
        model_dir, search = path, [path, path.parent]
    else:
        found = sorted(p.name for p in path.glob("HeartMuLa-oss-*") if p.is_dir())
        versions = ", ".join(n.removeprefix("HeartMuLa-oss-") for n in found)
        hint = f"; this root holds versions {versions}" if found else ""
        raise HeartMuLaError(
            f"{path} holds neither HeartMuLa-oss-{version}/ nor a {CONFIG_FILE}: pass the checkpoint root "
            f"(with HeartMuLa-oss-<version>/, tokenizer.json, gen_config.json) or a model folder{hint}"
        )
    tokenizer = next((d / TOKENIZER_FILE for d in search if (d / TOKENIZER_FILE).is_file()), None)
    if tokenizer is None:
        raise HeartMuLaError(f"no {TOKENIZER_FILE} next to {model_dir} (looked in {', '.join(map(str, search))})")
    gen_config = next((d / GEN_CONFIG_FILE for d in search if (d / GEN_CONFIG_FILE).is_file()), None)
    return LMFiles(model_dir, tokenizer, gen_config)


def _gen_config_for(files: LMFiles) -> GenerationConfig:
    return GenerationConfig.from_file(files.gen_config) if files.gen_config else GenerationConfig()


def _check_vocab(files: LMFiles, tokenizer: TextTokenizer, text_vocab_size: int) -> None:
    if tokenizer.vocab_size > text_vocab_size:
        raise HeartMuLaError(
            f"tokenizer {files.tokenizer} has {tokenizer.vocab_size} tokens but the model only "
            f"{text_vocab_size} text embeddings: wrong tokenizer for this model"
        )


def _read_tokenizer(files: LMFiles, gen_config: GenerationConfig) -> TextTokenizer:
    return TextTokenizer.from_file(files.tokenizer, gen_config.text_bos_id, gen_config.text_eos_id)


def check_lm(path: str | os.PathLike, version: str = DEFAULT_VERSION) -> LMFiles:
    """What `load_generator` checks, without reading any weights (folder layout, config, every tensor's name,
    shape and dtype from the file headers, tokenizer and gen_config): seconds for a 3B checkpoint."""
    files = locate_lm(path, version)
    gen_config = _gen_config_for(files)
    tokenizer = _read_tokenizer(files, gen_config)
    model = HeartMuLa.check_folder(files.model_dir)
    _check_vocab(files, tokenizer, model.config.text_vocab_size)
    return files


def load_generator(
    path: str | os.PathLike,
    version: str = DEFAULT_VERSION,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    lora: str | os.PathLike | None = None,
    lora_scale: float = 1.0,
    weights: str | None = None,
) -> HeartMuLaGenerator:
    """A generator for the checkpoint at `path`. `lora`: a LoRA adapter folder (PEFT layout) merged into the weights,
    times `lora_scale`, before anything else reads them (`heartmula.lm.lora`); then the model is transformed for
    decoding with weight format `weights` (`heartmula.lm.backends.WEIGHT_FORMATS`; None: "float", or the format of
    a quantised folder). "int8" and "int4" quantise a float folder while it loads, one weight at a time."""
    files = locate_lm(path, version)
    gen_config = _gen_config_for(files)
    tokenizer = _read_tokenizer(files, gen_config)
    adapter = read_adapter(lora) if lora is not None else None  # a bad adapter fails before the weights load
    weights = weight_format_of(files.model_dir, weights)
    if adapter is not None and weights in QUANTIZED_FORMATS:
        raise HeartMuLaError("a LoRA adapter merges into float weights: load without --quant, or quantise "
                             "the merged model")
    model = load_weights(files.model_dir, weights, parse_dtype(dtype), device)
    _check_vocab(files, tokenizer, model.config.text_vocab_size)
    if adapter is not None:
        merge_lora(model, adapter, lora_scale)
    prepare_for_decoding(model, weights)
    return HeartMuLaGenerator(model, tokenizer, gen_config)


# --- fresh checkpoints ------------------------------------------------------------------------------------------
# Random-weight presets in the official format: tests, benchmarks, and a starting point for training. The audio
# vocabulary is the codebook plus 5 special ids, EOS the first of them, as in the release (8192 codes, EOS 8193).
PRESETS: dict[str, dict] = {
    "tiny": dict(**GEOMETRIES["tiny"], audio_vocab_size=37, audio_eos_id=33),  # 32 codes
    "bench-36m": dict(**GEOMETRIES["bench-36m"], audio_vocab_size=8197, audio_eos_id=8193),
}


def write_random_root(
    root: str | os.PathLike,
    preset: str = "tiny",
    seed: int = 0,
    version: str = DEFAULT_VERSION,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write an official-layout root with random weights and a byte-level tokenizer; returns the model folder."""
    if preset not in PRESETS:
        raise HeartMuLaError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    spec = PRESETS[preset]
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = byte_level_tokenizer()
    gen_config = GenerationConfig(
        text_bos_id=tokenizer.token_to_id("<|begin_of_text|>"),
        text_eos_id=tokenizer.token_to_id("<|end_of_text|>"),
        audio_eos_id=spec["audio_eos_id"],
        empty_id=0,
    )
    config = HeartMuLaConfig(
        backbone_flavor=f"{preset}-backbone",
        decoder_flavor=f"{preset}-decoder",
        text_vocab_size=tokenizer.get_vocab_size(),
        audio_vocab_size=spec["audio_vocab_size"],
        backbone_config=spec["backbone"],
        decoder_config=spec["decoder"],
    )
    model = HeartMuLa(config).init_weights(seed)
    model_dir = root / f"HeartMuLa-oss-{version}"
    model.save_pretrained(model_dir, max_shard_bytes=max_shard_bytes)
    tokenizer.save(str(root / TOKENIZER_FILE))
    gen_config.save(root / GEN_CONFIG_FILE)
    return model_dir


def write_merged_root(
    path: str | os.PathLike,
    lora: str | os.PathLike,
    out: str | os.PathLike,
    version: str = DEFAULT_VERSION,
    lora_scale: float = 1.0,
    dtype: str | torch.dtype = "float32",
) -> Path:
    """Merge a LoRA adapter into a checkpoint and write the result as an official-layout root (OUT/HeartMuLa-oss-
    <version>/, tokenizer.json, gen_config.json) that loads like any other; returns the model folder. `out` must not
    exist; it appears only when complete."""
    import shutil
    import tempfile

    out = Path(out)
    if out.exists():
        raise HeartMuLaError(f"{out} already exists: choose a new folder")
    files = locate_lm(path, version)
    adapter = read_adapter(lora)
    model = HeartMuLa.from_pretrained(files.model_dir, dtype=parse_dtype(dtype))
    merge_lora(model, adapter, lora_scale)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        staging.chmod(0o755)
        model.save_pretrained(staging / f"HeartMuLa-oss-{version}")
        shutil.copy(files.tokenizer, staging / TOKENIZER_FILE)
        if files.gen_config is not None:
            shutil.copy(files.gen_config, staging / GEN_CONFIG_FILE)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out / f"HeartMuLa-oss-{version}"
