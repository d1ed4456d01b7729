"""LM decoding speed: frames/s per configuration and dtype, the ratio to upstream heartlib measured in the same
run, and the ratio to the machine's weight-bandwidth roofline.

Roofline: decoding one frame must read the backbone once, the local decoder and the projection once per codebook
step (K-1 times), and the heads; frames/s can not exceed (memory copy bandwidth) / (those bytes). The checkpoint
is the issue's ~36M geometry (backbone 8 x 512, 8 heads / 2 KV heads, FFN 1408; decoder 2 layers of the same
width) with the official vocabularies, written by upstream's own code when `--heartlib-src` is given.

    python bench/lm_decode.py                                   # heartmula only
    /path/to/upstream-venv/bin/python bench/lm_decode.py --heartlib-src /path/to/heartlib   # side by side
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from heartmula.lm.config import GenerationConfig  # noqa: E402
from heartmula.lm.generation import SamplingParams, SongRequest  # noqa: E402
from heartmula.lm.pretrained import PRESETS, load_generator, write_random_root  # noqa: E402
from heartmula.nn.quant import quantize_int8  # noqa: E402
from heartmula.text import byte_level_tokenizer  # noqa: E402

TAGS = "pop,piano,happy"
LYRICS = "[verse]\nthe morning light is on the hill\ni hear the river running still\n[chorus]\nsing it loud\n"


def copy_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes per second of a large tensor copy (read + write counted), best of `repeats`."""
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best


def weight_bytes_per_frame(model, bytes_per_weight: float) -> float:
    """Bytes of weights one frame reads (embedding lookups are a few rows: ignored). Counts a float model."""
    def count(module):
        return sum(p.numel() for p in module.parameters())

    codebooks = model.num_codebooks
    backbone = count(model.backbone)
    decoder_steps = (count(model.decoder) + count(model.projection)) * (codebooks - 1)
    heads = count(model.codebook0_head) + model.config.audio_vocab_size * model.config.decoder.embed_dim * (
        codebooks - 1)
    return (backbone + decoder_steps + heads) * bytes_per_weight


def time_ours(generator, frames: int, cfg_scale: float, repeats: int) -> tuple[float, int]:
    """Best frames/s over `repeats` songs (prefill included, as a user waits for it)."""
    sampling = SamplingParams(temperature=1.0, top_k=50, cfg_scale=cfg_scale)
    best_rate, produced = 0.0, 0
    for r in range(repeats):
        song = SongRequest(lyrics=LYRICS, tags=TAGS, seed=r)
        t0 = time.perf_counter()
        codes = generator.generate([song], sampling, frames - 1)[0]
        elapsed = time.perf_counter() - t0
        if codes.shape[1] / elapsed > best_rate:
            best_rate, produced = codes.shape[1] / elapsed, codes.shape[1]
    return best_rate, produced


def time_upstream(upstream, pipe, frames: int, cfg_scale: float, repeats: int) -> tuple[float, int]:
    best_rate, produced = 0.0, 0
    for r in range(repeats):
        torch.manual_seed(r)
        t0 = time.perf_counter()
        codes = upstream.upstream_generate(pipe, TAGS, LYRICS, (frames - 1) * 80, 50, 1.0, cfg_scale)
        elapsed = time.perf_counter() - t0
        if codes.shape[1] / elapsed > best_rate:
            best_rate, produced = codes.shape[1] / elapsed, codes.shape[1]
    return best_rate, produced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heartlib-src", help="upstream heartlib checkout: measure it side by side")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cfg-scale", type=float, default=1.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench/results/lm_decode.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        upstream = pipe = None
        spec = PRESETS["bench-36m"]
        if args.heartlib_src:
            import _upstream as upstream

            modeling, configuration, pipeline = upstream.import_upstream(args.heartlib_src)
            tokenizer = byte_level_tokenizer()
            tokenizer.save(str(root / "tokenizer.json"))
            GenerationConfig(text_bos_id=256, text_eos_id=257).save(root / "gen_config.json")
            model_dir = upstream.build_upstream_checkpoint(
                modeling, configuration, root, spec["backbone"], spec["decoder"], tokenizer.get_vocab_size(), 0)
            pipe = upstream.upstream_pipeline(pipeline, model_dir, tokenizer, root / "gen_config.json")
        else:
            write_random_root(root, "bench-36m", seed=0)

        bandwidth = copy_bandwidth()
        rows = []
        configs = [("heartmula eager", "float32", False), ("heartmula eager", "bfloat16", False),
                   ("heartmula int8", "float32", True)]
        for name, dtype, int8 in configs:
            generator = load_generator(root, dtype=dtype)
            bytes_per_weight = 1.0 if int8 else torch.finfo(generator.model.dtype).bits / 8
            per_frame = weight_bytes_per_frame(generator.model, bytes_per_weight)
            if int8:
                quantize_int8(generator.model)
            generator.generate([SongRequest(lyrics=LYRICS, tags=TAGS, seed=0)],
                               SamplingParams(cfg_scale=args.cfg_scale), 5)  # warm-up
            rate, produced = time_ours(generator, args.frames, args.cfg_scale, args.repeats)
            rows.append({"impl": name, "dtype": dtype, "frames_per_s": round(rate, 2), "frames": produced,
                         "rtf": round(12.5 / rate, 3), "weight_mb_per_frame": round(per_frame / 1e6, 1),
                         "roofline_frames_per_s": round(bandwidth / per_frame, 2),
                         "fraction_of_roofline": round(rate / (bandwidth / per_frame), 3)})
            print(json.dumps(rows[-1]), flush=True)
            if dtype == "float32" and not int8:
                fp32_bytes = per_frame
            del generator
        if pipe is not None:
            upstream.upstream_generate(pipe, TAGS, LYRICS, 5 * 80, 50, 1.0, args.cfg_scale)  # warm-up
            rate, produced = time_upstream(upstream, pipe, args.frames, args.cfg_scale, args.repeats)
            rows.append({"impl": "upstream heartlib", "dtype": "float32", "frames_per_s": round(rate, 2),
                         "frames": produced, "rtf": round(12.5 / rate, 3),
                         "roofline_frames_per_s": round(bandwidth / fp32_bytes, 2),
                         "fraction_of_roofline": round(rate / (bandwidth / fp32_bytes), 3)})
            print(json.dumps(rows[-1]), flush=True)
            base = rows[-1]["frames_per_s"]
            for row in rows:
                row["speedup_vs_upstream_fp32"] = round(row["frames_per_s"] / base, 2)

    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                    "copy_bandwidth_gb_s": round(bandwidth / 1e9, 2), "torch": torch.__version__},
        "checkpoint": f"bench-36m (random weights), CFG {args.cfg_scale:.2f}, top-k 50",
        "results": rows,
    }
    print(json.dumps(result, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
