"""The native few-row products at the HeartMuLa-oss-3B layer shapes: bfloat16, int8 and int4 weights side by side.

Each format multiplies `--rows` input rows (2: a song with guidance) by a backbone layer's four matrices (q|k|v
5120 x 3072, output 3072 x 3072, gate|up 16384 x 3072, down 3072 x 8192), cycling through enough copies that the
weights come from memory, not the 48 MB cache. Time is the thread's CPU time on one thread (`time.thread_time`),
so on a shared machine a process that waits for a core does not count; reported per format: weights per second,
bytes read per second, and the ratio to bfloat16. `bench/lm_official_size.py --quant` measures whole frames.

`--int4-kernels` compares the two int4 products of an AVX-512 VNNI CPU instead: input rows rounded to bytes
(`vpdpbusd`, the default) and to 16-bit integers (`vpdpwssd`, the AVX2 products' rounding), alternated round by round
in one process (ABBA order), so that a shared machine's load falls on both alike; reported: each round's time per
layer, the medians, and the median of the rounds' ratios.

    python bench/quant_products.py          # writes bench/results/quant_products.json
    python bench/quant_products.py --int4-kernels --rounds 30   # bench/results/quant_products_int4_kernels.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from _machine import machine

from heartmula.nn import native
from heartmula.nn.quantized import quantize

SHAPES = [(5120, 3072), (3072, 3072), (16384, 3072), (3072, 8192)]
ROOT = Path(__file__).resolve().parents[1]


def layer_copies(copies: int) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [[(torch.randn(shape, generator=generator) * 0.02).bfloat16() for shape in SHAPES] for _ in range(copies)]


def seconds_per_layer(products, repeats: int) -> float:
    for product in products:  # warm-up
        product()
    start = time.thread_time()
    for _ in range(repeats):
        for product in products:
            product()
    return (time.thread_time() - start) / (repeats * len(products) / len(SHAPES))


def compare_int4_kernels(kernels, layers: list[list[torch.Tensor]], x: torch.Tensor, rounds: int) -> dict:
    """Per-layer seconds of the byte and the 16-bit int4 products, alternated round by round."""
    quantized = [quantize(w, 4) for layer in layers for w in layer]
    products = [lambda q=q: kernels.few_rows_quantized_linear(x[:, : q[1].shape[1] * 128].contiguous(), *q)
                for q in quantized]
    times = {"bytes": [], "16-bit": []}
    for name in times:  # warm-up
        kernels.use_int4_byte_products(name == "bytes")
        seconds_per_layer(products, 1)
    for round_index in range(rounds):
        order = list(times) if round_index % 2 == 0 else list(times)[::-1]
        for name in order:
            kernels.use_int4_byte_products(name == "bytes")
            times[name].append(seconds_per_layer(products, 1))
    kernels.use_int4_byte_products(True)
    ratios = [words / byte for byte, words in zip(times["bytes"], times["16-bit"])]
    return {"ms_per_layer": {name: [round(t * 1e3, 3) for t in values] for name, values in times.items()},
            "median_ms_per_layer": {name: round(statistics.median(values) * 1e3, 3) for name, values in times.items()},
            "median_speed_of_bytes_vs_16_bit": round(statistics.median(ratios), 3),
            "rounds_where_bytes_is_faster": sum(ratio > 1 for ratio in ratios)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--copies", type=int, default=6, help="layers cycled through (6: 600 MB of bfloat16)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--int4-kernels", action="store_true", help="compare the byte and 16-bit int4 products")
    parser.add_argument("--rounds", type=int, default=30, help="alternated rounds of --int4-kernels")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    kernels = native.kernels()
    if kernels is None:
        raise SystemExit(f"the native kernel is not used here: {native.status()}")
    layers = layer_copies(args.copies)
    if args.int4_kernels:
        x = torch.randn(args.rows, max(cols for _, cols in SHAPES))
        result = {"machine": machine(), "torch": torch.__version__, "threads": 1, "rows": args.rows,
                  "copies": args.copies, "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
                  "layer": "HeartMuLa-oss-3B backbone layer (q|k|v, output, gate|up, down), int4",
                  **compare_int4_kernels(kernels, layers, x, args.rounds)}
        write(result, args.out or ROOT / "bench" / "results" / "quant_products_int4_kernels.json")
        return
    weights = sum(rows * cols for rows, cols in SHAPES)
    x = torch.randn(args.rows, max(cols for _, cols in SHAPES))
    rows = {}
    products = [lambda w=w: kernels.few_rows_linear(x[:, : w.shape[1]].bfloat16().contiguous(), w, None)
                for layer in layers for w in layer]
    rows["bfloat16"] = (seconds_per_layer(products, args.repeats), 2 * weights)
    for name, bits in (("int8", 8), ("int4", 4)):
        quantized = [quantize(w, bits) for layer in layers for w in layer]
        nbytes = sum(t.numel() * t.element_size() for t in quantized[0] + quantized[1] + quantized[2] + quantized[3])
        products = [lambda q=q: kernels.few_rows_quantized_linear(x[:, : q[1].shape[1] * 128].contiguous(), *q)
                    for q in quantized]
        rows[name] = (seconds_per_layer(products, args.repeats), nbytes)
        del quantized
    reference = rows["bfloat16"][0]
    result = {"machine": machine(), "torch": torch.__version__, "threads": 1, "rows": args.rows,
              "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
              "layer": "HeartMuLa-oss-3B backbone layer (q|k|v, output, gate|up, down)",
              "results": {name: {"ms_per_layer": round(seconds * 1e3, 2),
                                 "weights_per_s_billions": round(weights / seconds / 1e9, 2),
                                 "gb_per_s": round(nbytes / seconds / 1e9, 2),
                                 "speed_vs_bfloat16": round(reference / seconds, 2)}
                          for name, (seconds, nbytes) in rows.items()}}
    write(result, args.out or ROOT / "bench" / "results" / "quant_products.json")


def write(result: dict, out: Path) -> None:
    print(json.dumps(result, indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
