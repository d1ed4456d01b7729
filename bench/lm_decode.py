"""LM decoding speed: frames/s per configuration and dtype, the ratio to upstream heartlib measured in the same
run, and the ratio to the machine's weight-bandwidth roofline.

Roofline: decoding one frame must read the backbone once, the local decoder and the projection once per codebook
step (K-1 times), and the heads; frames/s can not exceed (memory copy bandwidth) / (those bytes). The local
decoder's weights (23 MB here) can stay in the CPU's caches between its steps, so the JSON also gives a stricter
roofline that counts every weight once per frame (`unique_*`: what must come from memory). The checkpoint has the
`bench-36m` preset's ~36M geometry (backbone 8 x 512, 8 heads / 2 KV heads, FFN 1408; decoder 2 layers of the same
width) with the official vocabularies, written by upstream's own code when `--heartlib-src` is given. The
implementations take turns, one song each per round, so the slow spells of a shared machine hit all alike.

    python bench/lm_decode.py                                   # heartmula only
    /path/to/upstream-venv/bin/python bench/lm_decode.py --heartlib-src /path/to/heartlib   # side by side
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine  # noqa: E402

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


def weight_bytes_per_frame(model, bytes_per_weight: float, decoder_steps: int | None = None) -> float:
    """Bytes of weights one frame reads (embedding lookups are a few rows: ignored), the local decoder and the
    projection counted `decoder_steps` times (default: once per codebook step). Counts a float model."""
    def count(module):
        return sum(p.numel() for p in module.parameters())

    codebooks = model.num_codebooks
    steps = codebooks - 1 if decoder_steps is None else decoder_steps
    backbone = count(model.backbone)
    decoder = (count(model.decoder) + count(model.projection)) * steps
    heads = count(model.codebook0_head) + model.config.audio_vocab_size * model.config.decoder.embed_dim * (
        codebooks - 1)
    return (backbone + decoder + heads) * bytes_per_weight


def interleaved_best_rates(runs: dict, frames: int, repeats: int) -> dict[str, tuple[float, int]]:
    """Best frames/s of each run (prefill included, as a user waits for it) over `repeats` rounds; every round runs
    each implementation once, one after the other, so a slow spell of the machine hits them all alike.

    A run is `seed -> frames produced`. Random weights sometimes end a song early on an end code; such a short
    song would weigh the prefill more, so it is replaced by the next seed (songs under 80% of `frames`)."""
    best = {name: (0.0, 0) for name in runs}
    seeds = {name: 0 for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            for _attempt in range(4):
                seeds[name] += 1
                t0 = time.perf_counter()
                length = run(seeds[name])
                elapsed = time.perf_counter() - t0
                if length >= 0.8 * frames:
                    break
            else:
                raise SystemExit(f"{name}: every song stopped before 80% of {frames} frames; ask for fewer --frames")
            if length / elapsed > best[name][0]:
                best[name] = (length / elapsed, length)
    return best


def ours(generator, frames: int, cfg_scale: float):
    sampling = SamplingParams(temperature=1.0, top_k=50, cfg_scale=cfg_scale)
    generator.generate([SongRequest(lyrics=LYRICS, tags=TAGS, seed=0)], sampling, 5)  # warm-up

    def run(seed: int) -> int:
        song = SongRequest(lyrics=LYRICS, tags=TAGS, seed=seed)
        return generator.generate([song], sampling, frames - 1)[0].shape[1]

    return run


def theirs(upstream, pipe, frames: int, cfg_scale: float):
    upstream.upstream_generate(pipe, TAGS, LYRICS, 5 * 80, 50, 1.0, cfg_scale)  # warm-up

    def run(seed: int) -> int:
        torch.manual_seed(seed)
        return upstream.upstream_generate(pipe, TAGS, LYRICS, (frames - 1) * 80, 50, 1.0, cfg_scale).shape[1]

    return run


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
        runs, bytes_per_frame, unique_bytes_per_frame, dtypes = {}, {}, {}, {}
        for name, dtype, int8 in [("heartmula eager", "float32", False), ("heartmula eager", "bfloat16", False),
                                  ("heartmula int8", "float32", True)]:
            generator = load_generator(root, dtype=dtype)
            bytes_per_weight = 1.0 if int8 else torch.finfo(generator.model.dtype).bits / 8
            key = f"{name} {dtype}"
            bytes_per_frame[key] = weight_bytes_per_frame(generator.model, bytes_per_weight)
            unique_bytes_per_frame[key] = weight_bytes_per_frame(generator.model, bytes_per_weight, decoder_steps=1)
            if int8:
                quantize_int8(generator.model)
            runs[key], dtypes[key] = ours(generator, args.frames, args.cfg_scale), dtype
        if pipe is not None:
            key = "upstream heartlib float32"
            runs[key], dtypes[key] = theirs(upstream, pipe, args.frames, args.cfg_scale), "float32"
            bytes_per_frame[key] = bytes_per_frame["heartmula eager float32"]
            unique_bytes_per_frame[key] = unique_bytes_per_frame["heartmula eager float32"]
        best = interleaved_best_rates(runs, args.frames, args.repeats)
        bandwidth = max(bandwidth, copy_bandwidth())  # the better of before and after: a fair roofline
        rows = []
        for key, (rate, produced) in best.items():
            per_frame = bytes_per_frame[key]
            rows.append({"impl": key.rsplit(" ", 1)[0], "dtype": dtypes[key], "frames_per_s": round(rate, 2),
                         "frames": produced, "rtf": round(12.5 / rate, 3),
                         "weight_mb_per_frame": round(per_frame / 1e6, 1),
                         "roofline_frames_per_s": round(bandwidth / per_frame, 2),
                         "fraction_of_roofline": round(rate / (bandwidth / per_frame), 3),
                         "unique_weight_mb_per_frame": round(unique_bytes_per_frame[key] / 1e6, 1),
                         "fraction_of_unique_roofline": round(rate * unique_bytes_per_frame[key] / bandwidth, 3)})
        if pipe is not None:
            base = best["upstream heartlib float32"][0]
            for row in rows:
                row["speedup_vs_upstream_fp32"] = round(row["frames_per_s"] / base, 2)

    result = {
        "machine": {**machine(), "threads": args.threads,
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
