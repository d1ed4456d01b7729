"""How fast a few-row float32 product reads its weights: the native kernel against torch's products.

For the weight shapes of the ~36M `bench-36m` LM preset (fused q/k/v, attention output, fused gate/up, down
projection, one codebook head) and 1-12 input rows, GB/s of weights read by `heartmula.nn.native`'s kernel, by
`(W @ x.T).T` (the fallback) and by `F.linear`, next to the machine's copy bandwidth (reads + writes counted) and
a plain sum's read bandwidth. Each timing covers ~200 MB of distinct matrices, so the weights come from memory as
in decoding; the methods take turns and each keeps its best of several passes.

    python bench/few_rows_linear.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402

from heartmula.nn import native  # noqa: E402

SHAPES = {"q/k/v fused": (768, 512), "attention output": (512, 512), "gate/up fused": (2816, 512),
          "down projection": (512, 1408), "codebook head": (8197, 512)}
MEGABYTES = 200


def best_seconds(run, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def memory_bandwidths(repeats: int) -> tuple[float, float]:
    """GB/s of a large copy (reads + writes counted) and of a large sum (reads)."""
    source = torch.ones(MEGABYTES * 2**20 // 4)
    target = torch.empty_like(source)
    nbytes = source.numel() * 4
    copy_seconds = best_seconds(lambda: target.copy_(source), repeats)
    return 2 * nbytes / copy_seconds / 1e9, nbytes / best_seconds(source.sum, repeats) / 1e9


def products(kernels, x: torch.Tensor, weights: list[torch.Tensor]) -> dict:
    return {
        "native": lambda: [kernels.few_rows_linear(x, w, None) for w in weights],
        "transposed_mm": lambda: [torch.mm(w, x.t()).t().contiguous() for w in weights],
        "f_linear": lambda: [F.linear(x, w) for w in weights],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 3, 4, 8, 12])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench/results/few_rows_linear.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kernels = native.kernels()
    if kernels is None:
        sys.exit(f"the native kernel is not available here: {native.unavailable_reason() or 'its build failed'}")

    copy_gb_s, sum_gb_s = memory_bandwidths(args.repeats)

    results = []
    for name, shape in SHAPES.items():
        weights = [torch.randn(shape) for _ in range(max(1, MEGABYTES * 2**20 // (shape[0] * shape[1] * 4)))]
        total_bytes = sum(w.numel() * 4 for w in weights)
        for rows in args.rows:
            x = torch.randn(rows, shape[1])
            assert torch.allclose(kernels.few_rows_linear(x, weights[0], None), F.linear(x, weights[0]),
                                  rtol=1e-4, atol=1e-4)
            methods = products(kernels, x, weights)
            best = {key: float("inf") for key in methods}
            for _ in range(args.repeats):  # take turns, so a slow spell of the machine hits all alike
                for key, run in methods.items():
                    best[key] = min(best[key], best_seconds(run, 1))
            row = {"matrix": name, "shape": list(shape), "rows": rows,
                   **{f"{key}_gb_s": round(total_bytes / seconds / 1e9, 1) for key, seconds in best.items()}}
            row["native_vs_transposed_mm"] = round(best["transposed_mm"] / best["native"], 2)
            results.append(row)
            print(json.dumps(row))

    result = {"machine": {**machine(), "threads": args.threads, "torch": torch.__version__,
                          "copy_bandwidth_gb_s": round(copy_gb_s, 1), "sum_read_bandwidth_gb_s": round(sum_gb_s, 1)},
              "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["machine"]))


if __name__ == "__main__":
    main()
