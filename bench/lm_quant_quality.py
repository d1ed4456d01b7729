"""Int8 and int4 weights (heartmula.lm.quantized): how far do the next-code distributions move from float32?

For each LM, the float32 model generates `--frames` frames per prompt (seeded, CFG 1.5, top-k 50); then the float32
and the quantised models are teacher-forced over those same codes, and for every codebook of every frame the guided
distribution (temperature 1, undecodable codes masked) is compared with float32's (`bench/lm_int8.py`'s measures):
`kl` (mean KL(float32 || quantised), nats per code), `top1_agree`, `top50_overlap` (the shared fraction of the 50
best codes, what top-k 50 samples among) and `nll` of float32's own codes. `float32 (F.linear)` is the noise floor:
the same float32 weights with upstream's products (another summation order).

LMs: `default` (the embedded default LM, the quality report's quick prompts), `bench-36m` (the decoding benchmarks'
geometry with random weights) and, with `--lms 3b`, the HeartMuLa-oss-3B geometry with random weights, written
as a bfloat16 checkpoint one shard at a time (8 GB of disk; bfloat16 is the reference there: 16 GB of float32 would
not fit beside the rest), over --official-size-frames frames of one prompt, without the noise floor.
`targets` holds the bounds the embedded LM is held to at int4 (KL <= 0.02 nats per code, top-50 overlap >= 0.9),
`meets_targets` whether each format stays within them.

    python bench/lm_quant_quality.py                  # default and bench-36m: bench/results/lm_quant_quality.json
    python bench/lm_quant_quality.py --lms 3b --scratch /tmp          # adds the 3B geometry to that file
    python bench/lm_quant_quality.py --lms 3b --official-size-root /tmp/3b   # on a written 3B checkpoint

An LM measured replaces its entry in --out; the others' entries stay. --formats limits the formats measured;
--official-size-quantized DIR loads a folder `heartmula model quantize` wrote from the 3B checkpoint as it is, in
place of quantising while loading (the same weights), and adds `products_against_dequantized` to the 3B entry: the
native products at the 3B shapes against `F.linear` with the dequantised weights, and with --official-size-root
`stored_against_checkpoint`: the dequantised weights against the checkpoint's (`--lms` with no LM: those alone).
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from _machine import machine
from lm_int8 import compare, forced_log_probs, generate_codes
from lm_official_size import write_official_size_root
from safetensors.torch import load_file

from heartmula.checkpoint import open_safetensors, safetensors_files
from heartmula.eval.report import select_prompts
from heartmula.lm.generation import SongRequest
from heartmula.lm.pretrained import load_generator, locate_lm, write_random_root
from heartmula.lm.quantized import QUANT_FILE, WEIGHTS_FILE
from heartmula.nn import native
from heartmula.nn.memory import release_free_memory
from heartmula.nn.quantized import QuantizedLinear, dequantize
from heartmula.song_models import resolve_lm

ROOT = Path(__file__).resolve().parents[1]
FORMATS = ("int8", "int4")
TARGETS = {"kl_max": 0.02, "top50_overlap_min": 0.9}


def mean(values: list[float]) -> float:
    return float(f"{sum(values) / len(values):.4g}")


def release_memory() -> None:
    """Hand the memory of a model just dropped back to the system before the next one loads."""
    gc.collect()
    release_free_memory()


def measure(path, songs: list[SongRequest], frames: int, dtype: str = "float32", noise_floor: bool = True,
            formats: dict[str, Path | None] | None = None) -> dict:
    """Each format against `dtype` weights of the checkpoint at `path`, over the songs (one model in memory at a
    time). `formats` maps a format to a quantised folder of that checkpoint to load, or None to quantise while
    loading (the default: every format, quantised while loading)."""
    formats = formats or dict.fromkeys(FORMATS)
    generator = load_generator(path, dtype=dtype)
    control = f"{dtype} (F.linear)"
    forced, rows = [], {**({control: []} if noise_floor else {}), **{name: [] for name in formats}}
    for song in songs:
        codes = generate_codes(generator, song, frames)
        reference = forced_log_probs(generator, song, codes).float()
        if noise_floor:
            rows[control].append(compare(reference, forced_log_probs(generator, song, codes, True).float(), codes))
        forced.append((song, codes, reference))
    del generator
    release_memory()
    for name, folder in formats.items():
        generator = load_generator(folder) if folder else load_generator(path, weights=name)
        for song, codes, reference in forced:
            rows[name].append(compare(reference, forced_log_probs(generator, song, codes), codes))
        del generator
        release_memory()
    print(json.dumps({name: {k: round(v, 4) for k, v in rs[-1].items()} for name, rs in rows.items()}), flush=True)
    against = {name: {key: mean([r[key] for r in rs]) for key in rs[0]} for name, rs in rows.items()}
    return {"reference": dtype, "songs": len(songs), "frames_per_song": frames, "against_reference": against,
            "meets_targets": {name: against[name]["kl"] <= TARGETS["kl_max"]
                              and against[name]["top50_overlap"] >= TARGETS["top50_overlap_min"]
                              for name in formats}}


def official_size(songs: list[SongRequest], frames: int, scratch: Path, root: Path | None,
                  formats: dict[str, Path | None]) -> dict:
    """The 3B geometry with random weights: the bfloat16 checkpoint at `root`, or one written to `scratch` and
    removed afterwards."""
    if root is not None:
        return measure(root, songs, frames, "bfloat16", noise_floor=False, formats=formats)
    root = Path(tempfile.mkdtemp(prefix="heartmula-3b-", dir=scratch))
    try:
        write_official_size_root(root)
        return measure(root, songs, frames, "bfloat16", noise_floor=False, formats=formats)
    finally:
        shutil.rmtree(root, ignore_errors=True)


CHECKED = ("backbone.layers.0.attn.q_proj.weight", "backbone.layers.0.mlp.w1.weight", "backbone.layers.0.mlp.w2.weight",
           "decoder.layers.0.attn.k_proj.weight", "projection.weight", "codebook0_head.weight", "audio_head")


def products_against_dequantized(folder: Path, rows: int = 2) -> dict:
    """Per matrix of a quantised folder, the relative error (norm of the difference over the reference's) of the
    native few-row product against `F.linear` with the dequantised weight: the products alone, without the
    quantisation's own error."""
    kernels = native.kernels()
    if kernels is None:
        return {"skipped": "no native kernels on this machine"}
    generator, errors = torch.Generator().manual_seed(0), {}
    stored = load_file(folder / WEIGHTS_FILE)
    for name in CHECKED:
        offsets = stored.get(name + ".qoffsets", torch.empty(0))
        layer = QuantizedLinear(stored[name + ".qdata"], stored[name + ".qscales"], offsets)
        x = torch.randn(rows, layer.in_features, generator=generator)
        reference = F.linear(x, layer.dequantized())
        got = kernels.few_rows_quantized_linear(x, *layer.native_tensors())
        errors[name] = float(f"{((got - reference).norm() / reference.norm()).item():.3g}")
    return errors


def stored_against_checkpoint(folder: Path, root: Path, rows: int = 2048) -> dict:
    """Per matrix, the relative error (norm) of the quantised folder's dequantised weights against the float
    checkpoint's, over its first `rows` rows (codebook 1's head for `audio_head`)."""
    stored, files, errors = load_file(folder / WEIGHTS_FILE), safetensors_files(locate_lm(root).model_dir), {}
    for name in (*CHECKED, "text_embeddings.weight", "audio_embeddings.weight"):
        with open_safetensors(files[name]) as handle:
            weight = handle.get_slice(name)[0].t() if name == "audio_head" else handle.get_slice(name)[:rows]
        offsets = stored.get(name + ".qoffsets", torch.empty(0))
        count = weight.shape[0]
        restored = dequantize(stored[name + ".qdata"][:count], stored[name + ".qscales"][:count], offsets[:count])
        errors[name] = float(f"{((restored - weight.float()).norm() / weight.float().norm()).item():.3g}")
    return errors


NAMES = {"default": "default", "bench-36m": "bench-36m (random weights)", "3b": "3B geometry (random weights)"}


def measure_lm(lm: str, songs: list[SongRequest], args) -> dict:
    if lm == "default":
        return measure(resolve_lm(None, "3B"), songs, args.frames, formats=dict.fromkeys(args.formats))
    if lm == "bench-36m":
        with tempfile.TemporaryDirectory() as tmp:
            write_random_root(Path(tmp) / "bench-36m", "bench-36m")
            return measure(Path(tmp) / "bench-36m", songs[:3], args.frames, formats=dict.fromkeys(args.formats))
    formats = {name: None for name in args.formats}
    for folder in args.official_size_quantized:
        formats[json.loads((folder / QUANT_FILE).read_text())["format"]] = folder
    return official_size(songs[:1], args.official_size_frames, args.scratch, args.official_size_root, formats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lms", nargs="*", choices=list(NAMES), default=["default", "bench-36m"],
                        help="which LMs to measure (3b: the 3B geometry with random weights)")
    parser.add_argument("--frames", type=int, default=100, help="frames per prompt (12.5 per second)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--official-size-frames", type=int, default=4)
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the 3B checkpoint is written (8 GB) and removed")
    parser.add_argument("--official-size-root", type=Path,
                        help="a 3B checkpoint written by `bench/lm_official_size.py --write-random-root` to use")
    parser.add_argument("--official-size-quantized", type=Path, nargs="+", default=[],
                        help="quantised folders of that checkpoint (`heartmula model quantize`) to load as they are")
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "lm_quant_quality.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prompts = select_prompts(quick=True)
    songs = [SongRequest(lyrics=p.lyrics, tags=p.tags, seed=0) for p in prompts]
    kept = json.loads(args.out.read_text())["lms"] if args.out.is_file() else {}  # LMs not measured this time
    result = {"machine": machine(), "threads": args.threads, "torch": torch.__version__, "targets": TARGETS,
              "prompts": [p.id for p in prompts], "lms": kept}

    def save() -> None:  # after every LM: a long run keeps its results
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    for folder in args.official_size_quantized:  # cheap: the kernels at the 3B shapes, apart from the quantisation
        entry = result["lms"].setdefault(NAMES["3b"], {})
        entry["products_against_dequantized"] = products_against_dequantized(folder)
        if args.official_size_root:
            entry["stored_against_checkpoint"] = stored_against_checkpoint(folder, args.official_size_root)
        save()
    for lm in args.lms:
        result["lms"][NAMES[lm]] = {**result["lms"].get(NAMES[lm], {}),
                                    "command": " ".join(["python bench/lm_quant_quality.py", *sys.argv[1:]]),
                                    **measure_lm(lm, songs, args)}
        save()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
