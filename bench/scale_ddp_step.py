"""Distributed LM training step time on this machine: one process against two (torchrun, gloo) with the same global
batch. Two processes on two CPU cores share the cores one process with two threads would use, so no speed-up is
expected here; the point is what DDP costs (gradient all-reduce over gloo) on top of the split work.

Runs `heartmula train lm` on a token cache made from synthetic songs with a random tiny codec:
    1 process x 1 thread, 1 process x 2 threads, 2 processes x 1 thread (torchrun --standalone).

    python bench/scale_ddp_step.py
Writes bench/results/scale_ddp_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _machine import machine

from heartmula.audio import save_audio
from heartmula.codec.pretrained import write_random_codec
from heartmula.manifest import write_manifest
from heartmula.train.token_cache import tokenize_manifest

RESULTS = Path(__file__).resolve().parent / "results" / "scale_ddp_step.json"


def make_cache(root: Path, songs: int) -> Path:
    rows = []
    for i in range(songs):
        t = np.arange(int(12 * 16000)) / 16000
        tone = (0.3 * np.sin(2 * np.pi * (150 + 20 * i) * t)).astype(np.float32)
        save_audio(root / f"s{i}.flac", np.stack([tone, tone]), 16000)
        rows.append({"id": f"s{i}", "audio": f"s{i}.flac", "vocals": None, "lyrics": "[verse]\nla la la",
                     "timing": [], "language": "en", "tags": "pop", "duration": 12.0, "sample_rate": 16000,
                     "source": {"corpus": "bench"}, "license": "bench", "split": "train"})
    write_manifest(root / "manifest.jsonl", rows)
    codec = write_random_codec(root / "codec", "tiny-direct", seed=0)
    tokenize_manifest(root / "manifest.jsonl", codec, root / "cache", progress=False)
    return root / "cache"


def step_seconds(out: Path, skip: int) -> float:
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return float(np.median([r["seconds"] for r in records[skip:]]))


def run(processes: int, threads: int, args: list[str], out: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
                if processes > 1 else [sys.executable])
    command = [*launcher, "-m", "heartmula", *args, "--out", str(out), "--threads", str(threads)]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=3600)
    return {"processes": processes, "threads_each": threads, "median_step_seconds": round(step_seconds(out, 3), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--context", type=int, default=256)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = make_cache(tmp, 8)
        base = ["train", "lm", str(cache), "--preset", options.preset, "--steps", str(options.steps), "--batch-size",
                str(options.batch_size), "--context", str(options.context), "--min-frames", "8", "--vocab-size",
                "300", "--save-every", "1000", "--eval-every", "1000", "--quiet"]
        runs = [run(1, 1, base, tmp / "p1t1")]
        tokenizer = ["--tokenizer", str(tmp / "p1t1" / "tokenizer.json")]
        runs.append(run(1, 2, base + tokenizer, tmp / "p1t2"))
        runs.append(run(2, 1, base + tokenizer, tmp / "p2t1"))
        losses = [[json.loads(line)["loss"] for line in (tmp / name / "train_log.jsonl").read_text().splitlines()]
                  for name in ("p1t2", "p2t1")]
    result = {"command": "python bench/scale_ddp_step.py", "machine": machine(),
              "load_average_1min": round(os.getloadavg()[0], 1), "preset": options.preset,
              "global_batch": options.batch_size, "context": options.context, "steps": options.steps, "runs": runs,
              "two_processes_over_one_process_two_threads": round(runs[2]["median_step_seconds"]
                                                                  / runs[1]["median_step_seconds"], 2),
              "max_loss_difference_1_vs_2_processes": round(float(np.max(np.abs(np.subtract(*losses)))), 5)}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
