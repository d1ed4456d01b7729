"""Decoding speed of the `heartmula train lm` presets (random weights: speed does not depend on the values).

Frames/s and the real-time factor (RTF = seconds of compute per second of song, 12.5 frames per second) of the
LM alone, with CFG (two rows), for the codebook sizes a trained codec may have. The machine's load average is
recorded: on a shared machine the figures are pessimistic.

    python bench/lm_train_presets_decode.py --preset small --codebook-size 1024 8192
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from heartmula.lm.config import GenerationConfig
from heartmula.lm.generation import SamplingParams, SongRequest
from heartmula.lm.pretrained import GEN_CONFIG_FILE, TOKENIZER_FILE, load_generator
from heartmula.train.lm import count_parameters, new_model
from heartmula.train.text_tokenizer import BOS, EOS, train_bpe_tokenizer

TAGS = "pop,piano,happy"
LYRICS = "[verse]\nthe morning light is on the hill\ni hear the river running still\n[chorus]\nsing it loud\n"


def measure(preset: str, codebook_size: int, frames: int, repeats: int, cfg: float) -> dict:
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        tokenizer = train_bpe_tokenizer([LYRICS, TAGS] * 4, vocab_size=4096)
        tokenizer.save(str(root / TOKENIZER_FILE))
        model = new_model(preset, 4096 + 16, codebook_size, 8, seed=0)
        model.save_pretrained(root / "HeartMuLa-oss-3B")
        GenerationConfig(tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS), codebook_size + 1, 0).save(
            root / GEN_CONFIG_FILE)
        generator = load_generator(root)
        song = SongRequest(LYRICS, TAGS, seed=1)
        sampling = SamplingParams(cfg_scale=cfg)
        generator.generate([song], sampling, max_new_frames=8)  # warm-up
        rates = []
        for _ in range(repeats):
            began = time.perf_counter()
            codes = generator.generate([song], sampling, max_new_frames=frames)
            rates.append(codes[0].shape[1] / (time.perf_counter() - began))
        best = max(rates)
        return {"preset": preset, "codebook_size": codebook_size, "parameters": count_parameters(model),
                "frames_per_second": [round(r, 1) for r in rates], "rtf_best": round(12.5 / best, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", nargs="+", default=["small"], help="presets of heartmula.train.lm.LM_PRESETS")
    parser.add_argument("--codebook-size", type=int, nargs="+", default=[1024, 8192], help="codec codebook sizes")
    parser.add_argument("--frames", type=int, default=150, help="frames per measured song")
    parser.add_argument("--repeats", type=int, default=2, help="measurements per case (the best counts)")
    parser.add_argument("--cfg-scale", type=float, default=1.5, help="1.5 = two rows (CFG), 1 = one row")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default="bench/results/lm_train_presets_decode.json", help="JSON to write")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = [measure(p, k, args.frames, args.repeats, args.cfg_scale) for p in args.preset
               for k in args.codebook_size]
    report = {"threads": args.threads, "cfg_scale": args.cfg_scale, "frames": args.frames,
              "load_average_at_end": os.getloadavg(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
              "torch": torch.__version__, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    json.dump(report, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
