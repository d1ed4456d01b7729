"""Decoding at the official release's size on this CPU: the HeartMuLa-oss-3B geometry (backbone llama-3B, local
decoder llama-300M, 3.9 B parameters) with random weights, seconds per frame on the native kernels and on torch's
own operations (`HEARTMULA_NATIVE=0`'s path), in one run.

The model is built in place (no checkpoint on disk): bfloat16 needs 8 GB of memory, float32 16 GB. A frame reads
the backbone once, the local decoder and projection seven times and the heads, 10.5 GB in bfloat16, so on a CPU
this measures how close decoding comes to the memory bandwidth at the size users run.

    python bench/lm_official_size.py                  # bfloat16
    python bench/lm_official_size.py --dtype float32
    python bench/lm_official_size.py --quant int4     # int4 weights (heartmula.nn.quantized), then bfloat16

With --quant the quantised model is built first, one tensor at a time from random rows (it never exists in float32),
and measured with its peak resident memory; then the bfloat16 model, on the native kernels, for the ratio.

With --build-only it measures memory, not speed: the peak resident memory (VmHWM) of each stage (building the
quantised model, then a guided prefill and --frames frames with the KV caches sized for a --song-seconds song), and
no bfloat16 model. --from ROOT loads a checkpoint as `heartmula generate --quant` does (a float checkpoint quantised
while it loads, or a quantised folder as stored); --quantize-to DIR first runs `heartmula model quantize ROOT --to
DIR` and then loads DIR. --write-random-root ROOT writes the 3B geometry's random weights in bfloat16 as an
official-layout checkpoint (8 GB, one shard at a time) for --from.

    python bench/lm_official_size.py --quant int4 --build-only
    python bench/lm_official_size.py --int4-kernels --threads 1 --frames 20

--int4-kernels compares the two int4 products of an AVX-512 VNNI CPU in whole frames: the int4 model decodes one
guided song whose frames alternate, two at a time in ABBA order, between input rows rounded to bytes (the default)
and to 16-bit integers; on one thread each frame is timed in the thread's CPU time, so that a shared machine's other
processes do not count (on more threads, wall time). No bfloat16 model.
    python bench/lm_official_size.py --write-random-root /tmp/3b
    python bench/lm_official_size.py --quant int4 --build-only --from /tmp/3b --quantize-to /tmp/3b-int4
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine  # noqa: E402
from lm_decode import LYRICS, TAGS, copy_bandwidth, weight_bytes_per_frame  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from heartmula.checkpoint import INDEX_FILE  # noqa: E402
from heartmula.cli.model import run_quantize  # noqa: E402
from heartmula.lm.backends import fuse_projections, pack_weights_in_huge_pages  # noqa: E402
from heartmula.lm.config import GenerationConfig, HeartMuLaConfig  # noqa: E402
from heartmula.lm.generation import FRAME_RATE, HeartMuLaGenerator, SamplingParams, SongRequest  # noqa: E402
from heartmula.lm.model import CONFIG_FILE, HeartMuLa  # noqa: E402
from heartmula.lm.pretrained import GEN_CONFIG_FILE, TOKENIZER_FILE, load_generator  # noqa: E402
from heartmula.lm.quantized import install, is_quantized_folder, quantizing  # noqa: E402
from heartmula.nn import native  # noqa: E402
from heartmula.text import TextTokenizer, byte_level_tokenizer  # noqa: E402


def official_size_generator(dtype: torch.dtype, folder: Path) -> HeartMuLaGenerator:
    """The default (3B) configuration with random weights, prepared as `load_generator` prepares a checkpoint."""
    with torch.device("meta"):
        model = HeartMuLa(HeartMuLaConfig())
    model = model.to_empty(device="cpu")  # float32 storage, filled then converted one parameter at a time
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            values = torch.ones(param.shape) if name.endswith(".scale") else torch.empty(param.shape).normal_(
                0, 0.02, generator=generator)
            param.data = values.to(dtype)
    model.use_row_major_heads()
    model.eval()
    fuse_projections(model)
    pack_weights_in_huge_pages(model)
    tokenizer = byte_level_tokenizer()
    tokenizer.save(str(folder / "tokenizer.json"))
    return HeartMuLaGenerator(model, TextTokenizer.from_file(folder / "tokenizer.json", 256, 257),
                              GenerationConfig(text_bos_id=256, text_eos_id=257))


def random_reader(model: HeartMuLa):
    """read(name, index) of `heartmula.lm.quantized`: N(0, 0.02) values (norm scales 1), drawn for the rows asked
    for only, the same for the same rows."""
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}

    def read(name: str, index: tuple) -> torch.Tensor:
        shape = torch.empty(shapes[name], device="meta")[index].shape
        if name.endswith(".scale"):
            return torch.ones(shape)
        seed = sum(ord(c) * 31 ** i for i, c in enumerate(f"{name}{index}")) % 2**31
        return torch.empty(shape).normal_(0, 0.02, generator=torch.Generator().manual_seed(seed))

    return read, shapes


def official_size_quantized(quant: str, folder: Path) -> HeartMuLaGenerator:
    """The default (3B) configuration with random int8 / int4 weights, quantised one block of rows at a time."""
    with torch.device("meta"):
        model = HeartMuLa(HeartMuLaConfig())
    read, shapes = random_reader(model)
    install(model, quantizing(read, shapes, quant), read, torch.float32)
    pack_weights_in_huge_pages(model)
    tokenizer = byte_level_tokenizer()
    tokenizer.save(str(folder / "tokenizer.json"))
    return HeartMuLaGenerator(model, TextTokenizer.from_file(folder / "tokenizer.json", 256, 257),
                              GenerationConfig(text_bos_id=256, text_eos_id=257))


def quantized_bytes_per_frame(model: HeartMuLa) -> int:
    """Bytes of quantised weights a frame reads: the backbone and codebook 0's head once, the decoder and the
    projection once per codebook 1..K-1, the heads once each."""
    def size(layer) -> int:
        return sum(t.numel() * t.element_size() for t in layer.native_tensors())

    def transformer(t) -> int:
        return sum(size(layer.attn.fused_qkv.quantized) + size(layer.attn.output_proj)
                   + size(layer.mlp.fused_gate_up.quantized) + size(layer.mlp.w2) for layer in t.layers)

    steps = model.num_codebooks - 1
    return (transformer(model.backbone) + size(model.codebook0_head)
            + steps * (transformer(model.decoder) + size(model.projection)) + size(model.audio_head_quantized))


def peak_rss_gb(field: str = "VmHWM") -> float:
    """The process's peak resident memory (VmHWM), or its current one (VmRSS), in GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) * 1024 / 1e9, 3)
    return float("nan")


def reset_peak_rss() -> bool:
    """Restart VmHWM from the current resident memory (Linux's /proc/self/clear_refs); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def random_tensor(read, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """The weight `name` of `random_reader` in `dtype`, drawn a block of rows at a time (never whole in float32)."""
    out = torch.empty(shape, dtype=dtype)
    if len(shape) == 1:
        return out.copy_(read(name, ()))
    step = max(1, 2**24 // out[0].numel())
    for start in range(0, shape[0], step):
        out[start : start + step] = read(name, (slice(start, start + step),))
    return out


def write_official_size_root(root: Path, dtype: torch.dtype = torch.bfloat16, shard_bytes: int = 2**30) -> Path:
    """An official-layout root of the 3B geometry with `random_reader`'s weights (HeartMuLa-oss-3B/ as safetensors
    shards and an index, tokenizer.json, gen_config.json), written one shard at a time. Returns the model folder."""
    with torch.device("meta"):
        model = HeartMuLa(HeartMuLaConfig())
    read, shapes = random_reader(model)
    model_dir = root / "HeartMuLa-oss-3B"
    model_dir.mkdir(parents=True)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    shards, size = [[]], 0
    for name, shape in shapes.items():
        nbytes = math.prod(shape) * itemsize
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    weight_map = {}
    for i, names in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({name: random_tensor(read, name, shapes[name], dtype) for name in names}, str(model_dir / file),
                  metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
    total = sum(math.prod(shape) * itemsize for shape in shapes.values())
    (model_dir / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    model.config.save(model_dir / CONFIG_FILE)
    tokenizer = byte_level_tokenizer()
    tokenizer.save(str(root / TOKENIZER_FILE))
    GenerationConfig(text_bos_id=tokenizer.token_to_id("<|begin_of_text|>"),
                     text_eos_id=tokenizer.token_to_id("<|end_of_text|>")).save(root / GEN_CONFIG_FILE)
    return model_dir


def memory_stage(label: str, run) -> tuple[object, dict]:
    """run()'s result and the stage's peak resident memory (and the resident memory after it), in GB."""
    reset_peak_rss()
    value = run()
    return value, {"stage": label, "peak_rss_gb": peak_rss_gb(), "rss_gb_after": peak_rss_gb("VmRSS")}


def run_frames(generator: HeartMuLaGenerator, frames: int, capacity_frames: int) -> None:
    """A guided prefill and `frames` frames, the KV caches sized for `capacity_frames` frames."""
    song = SongRequest(lyrics=LYRICS, tags=TAGS, seed=0)
    capacity_frames = max(capacity_frames, frames + 1)
    with torch.inference_mode():
        session = generator.start([song], SamplingParams(), capacity_frames, min_new_frames=capacity_frames)
        for _ in range(frames + 1):
            session.next_frame()
        session.close()


def quantize_folder(root: Path, dest: Path, quant: str) -> None:
    """What `heartmula model quantize ROOT --to DEST --quant QUANT` does."""
    run_quantize(argparse.Namespace(root=root, dest=dest, quant=quant, version="3B"))


def memory_rows(args, folder: Path) -> list[dict]:
    """Peak resident memory of each stage: building (or quantising and loading) the model, then decoding."""
    rows = []
    if args.quantize_to:
        _, row = memory_stage(f"heartmula model quantize --quant {args.quant}",
                              lambda: quantize_folder(args.from_root, args.quantize_to, args.quant))
        rows.append(row)
    source = args.quantize_to or args.from_root
    if source is None:
        label, build = f"build {args.quant} from random rows", partial(official_size_quantized, args.quant, folder)
    elif is_quantized_folder(source):
        label, build = f"load the {args.quant} folder", partial(load_generator, source)
    else:
        label, build = f"load the bfloat16 checkpoint as {args.quant}", partial(load_generator, source,
                                                                               weights=args.quant)
    generator, row = memory_stage(label, build)
    rows.append(row)
    capacity = round(args.song_seconds * FRAME_RATE)
    _, row = memory_stage(f"prefill + {args.frames} frames, KV caches for {capacity} frames ({args.song_seconds} s)",
                          lambda: run_frames(generator, args.frames, capacity))
    rows.append(row)
    return rows


def seconds_per_frame(generator: HeartMuLaGenerator, frames: int) -> tuple[float, float]:
    """(prefill seconds, seconds per frame after it) of one guided song."""
    song = SongRequest(lyrics=LYRICS, tags=TAGS, seed=0)
    with torch.inference_mode():
        session = generator.start([song], SamplingParams(), frames + 2, min_new_frames=frames + 2)
        start = time.perf_counter()
        session.next_frame()
        prefill = time.perf_counter() - start
        session.next_frame()
        start = time.perf_counter()
        for _ in range(frames):
            session.next_frame()
        per_frame = (time.perf_counter() - start) / frames
        session.close()
    return prefill, per_frame


def measure(generator: HeartMuLaGenerator, frames: int, bytes_per_frame: float, label: str) -> dict:
    prefill, per_frame = seconds_per_frame(generator, frames)
    row = {"weights": label, "path": "native" if native.kernels() is not None else "torch",
           "prefill_s": round(prefill, 2), "seconds_per_frame": round(per_frame, 3),
           "frames_per_s": round(1 / per_frame, 2), "rtf": round(per_frame * 12.5, 2),
           "weight_gb_per_frame": round(bytes_per_frame / 1e9, 2),
           "weight_gb_per_s": round(bytes_per_frame / per_frame / 1e9, 1)}
    print(json.dumps(row), flush=True)
    return row


def quantized_rows(args, folder: Path, bandwidth: float) -> tuple[list[dict], float]:
    """The quantised model's row (with its peak RSS and roofline) and the bfloat16 model's, measured in turn."""
    start = time.perf_counter()
    generator = official_size_quantized(args.quant, folder)
    built = time.perf_counter() - start
    bytes_per_frame = quantized_bytes_per_frame(generator.model)
    quantized = measure(generator, args.frames, bytes_per_frame, args.quant)
    quantized.update(build_seconds=round(built, 1), peak_rss_gb=round(peak_rss_gb(), 2),
                     roofline_frames_per_s=round(bandwidth / bytes_per_frame, 2))
    quantized["fraction_of_roofline"] = round(quantized["frames_per_s"] / quantized["roofline_frames_per_s"], 2)
    del generator
    gc.collect()
    generator = official_size_generator(torch.bfloat16, folder)
    reference = measure(generator, args.frames, weight_bytes_per_frame(generator.model, 2), "bfloat16")
    quantized["speed_vs_bfloat16"] = round(reference["seconds_per_frame"] / quantized["seconds_per_frame"], 2)
    return [quantized, reference], sum(p.numel() for p in generator.model.parameters())


def float_rows(args, folder: Path, dtype: torch.dtype) -> tuple[list[dict], float]:
    """The float model on the native kernels and on torch's own operations (`HEARTMULA_NATIVE=0`'s path)."""
    generator = official_size_generator(dtype, folder)
    bytes_per_frame = weight_bytes_per_frame(generator.model, torch.finfo(dtype).bits / 8)
    rows = []
    for path in ("native", "torch"):
        if path == "native" and native.kernels() is None:
            continue
        saved = native._loaded
        if path == "torch":
            native._loaded = None  # what HEARTMULA_NATIVE=0 does
        try:
            rows.append(measure(generator, args.frames, bytes_per_frame, args.dtype))
        finally:
            native._loaded = saved
        rows[-1]["path"] = path
    return rows, sum(p.numel() for p in generator.model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--quant", choices=["int8", "int4"], help="measure int8 / int4 weights against bfloat16")
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="default bench/results/lm_official_size[_QUANT][_memory].json")
    parser.add_argument("--build-only", action="store_true",
                        help="with --quant: peak resident memory of building and decoding, no bfloat16, no speed")
    parser.add_argument("--song-seconds", type=float, default=0.0,
                        help="with --build-only: size the KV caches for a song this long")
    parser.add_argument("--from", dest="from_root", type=Path, help="with --build-only: load this checkpoint")
    parser.add_argument("--quantize-to", type=Path, help="with --from: `heartmula model quantize` to this folder first")
    parser.add_argument("--write-random-root", type=Path, help="write the random 3B checkpoint (bfloat16) and exit")
    parser.add_argument("--int4-kernels", action="store_true",
                        help="int4 frames alternating between the byte and the 16-bit int4 products")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.int4_kernels:
        int4_kernels_main(args)
        return
    if args.write_random_root:
        print(write_official_size_root(args.write_random_root))
        return
    if args.build_only:
        memory_main(args)
        return
    bandwidth = copy_bandwidth()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        if args.quant:
            rows, parameters = quantized_rows(args, Path(tmp), bandwidth)
        else:
            rows, parameters = float_rows(args, Path(tmp), getattr(torch, args.dtype))
    result = {"machine": {**machine(), "threads": args.threads, "torch": torch.__version__,
                          "copy_bandwidth_gb_s": round(bandwidth / 1e9, 2),
                          "load_average_1_5_15_at_start": [round(x, 2) for x in load]},
              "model": "HeartMuLa-oss-3B geometry, random weights, CFG 1.5, top-k 50",
              "parameters_billions": round(parameters / 1e9, 2), "results": rows}
    print(json.dumps(result, indent=2))
    out = Path(args.out or f"bench/results/lm_official_size{'_' + args.quant if args.quant else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def alternated_frames(generator: HeartMuLaGenerator, frames: int, threads: int) -> dict[str, list[float]]:
    """Seconds of each pair of frames of one guided song, `frames` per kernel, alternating between the int4
    products (`use_int4_byte_products`) in ABBA order."""
    kernels, clock = native.kernels(), time.thread_time if threads == 1 else time.perf_counter
    song = SongRequest(lyrics=LYRICS, tags=TAGS, seed=0)
    times = {"bytes": [], "16-bit": []}
    with torch.inference_mode():
        session = generator.start([song], SamplingParams(), 2 * frames + 4, min_new_frames=2 * frames + 4)
        session.next_frame()  # the prefill
        session.next_frame()
        for pair in range(frames // 2):
            for name in list(times) if pair % 2 == 0 else list(times)[::-1]:
                kernels.use_int4_byte_products(name == "bytes")
                start = clock()
                session.next_frame()
                session.next_frame()
                times[name].append((clock() - start) / 2)
        session.close()
    kernels.use_int4_byte_products(True)
    return times


def int4_kernels_main(args) -> None:
    if native.kernels() is None:
        raise SystemExit(f"the native kernel is not used here: {native.status()}")
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        generator = official_size_quantized("int4", Path(tmp))
    times = alternated_frames(generator, args.frames, args.threads)
    ratios = [words / byte for byte, words in zip(times["bytes"], times["16-bit"])]
    result = {"machine": {**machine(), "threads": args.threads, "torch": torch.__version__,
                          "load_average_1_5_15_at_start": [round(x, 2) for x in load]},
              "model": "HeartMuLa-oss-3B geometry, int4 from random rows, CFG 1.5, top-k 50",
              "command": "python bench/lm_official_size.py " + " ".join(sys.argv[1:]),
              "clock": "thread CPU time" if args.threads == 1 else "wall time",
              "weight_gb_per_frame": round(quantized_bytes_per_frame(generator.model) / 1e9, 2),
              "seconds_per_frame": {name: [round(t, 3) for t in values] for name, values in times.items()},
              "median_frames_per_s": {name: round(1 / statistics.median(values), 2) for name, values in times.items()},
              "median_speed_of_bytes_vs_16_bit": round(statistics.median(ratios), 3),
              "pairs_where_bytes_is_faster": sum(ratio > 1 for ratio in ratios)}
    print(json.dumps(result, indent=2))
    out = Path(args.out or "bench/results/lm_official_size_int4_kernels.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def memory_main(args) -> None:
    if not args.quant:
        raise SystemExit("--build-only measures a quantised model: give --quant int8 or int4")
    if args.quantize_to and not args.from_root:
        raise SystemExit("--quantize-to needs --from ROOT (the float checkpoint)")
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        rows = memory_rows(args, Path(tmp))
    source = "random rows" if args.from_root is None else "a bfloat16 checkpoint of random weights"
    result = {"machine": {**machine(), "threads": args.threads, "torch": torch.__version__,
                          "load_average_1_5_15_at_start": [round(x, 2) for x in load]},
              "model": f"HeartMuLa-oss-3B geometry, {args.quant} from {source}, CFG 1.5",
              "command": "python bench/lm_official_size.py " + " ".join(sys.argv[1:]),
              "peak_rss_gb": max(row["peak_rss_gb"] for row in rows), "stages": rows}
    print(json.dumps(result, indent=2))
    out = Path(args.out or f"bench/results/lm_official_size_{args.quant}_memory.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
