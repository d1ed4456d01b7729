"""Int8 and int4 weights (heartmula.lm.quantized): how far do the next-code distributions move from float32?

For each LM, the float32 model generates `--frames` frames per prompt (seeded, CFG 1.5, top-k 50); then the float32
and the quantised models are teacher-forced over those same codes, and for every codebook of every frame the guided
distribution (temperature 1, undecodable codes masked) is compared with float32's (`bench/lm_int8.py`'s measures):
`kl` (mean KL(float32 || quantised), nats per code), `top1_agree`, `top50_overlap` (the shared fraction of the 50
best codes, what top-k 50 samples among) and `nll` of float32's own codes. `float32 (F.linear)` is the noise floor:
the same float32 weights with upstream's products (another summation order).

LMs: `default` (the embedded default LM, the quality report's quick prompts), `bench-36m` (the decoding benchmarks'
geometry with random weights) and, with --official-size, the HeartMuLa-oss-3B geometry with random weights
(bfloat16 as the reference there: 16 GB of float32 would not fit beside the rest).

    python bench/lm_quant_quality.py                     # writes bench/results/lm_quant_quality.json
    python bench/lm_quant_quality.py --official-size     # adds the 3B geometry (8 GB of memory)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from _machine import machine
from lm_int8 import compare, forced_log_probs, generate_codes

from heartmula.eval.report import select_prompts
from heartmula.lm.generation import SongRequest
from heartmula.lm.pretrained import load_generator, write_random_root
from heartmula.song_models import resolve_lm

ROOT = Path(__file__).resolve().parents[1]
FORMATS = ("int8", "int4")


def mean(values: list[float]) -> float:
    return float(f"{sum(values) / len(values):.4g}")


def measure(path, songs: list[SongRequest], frames: int, dtype: str = "float32") -> dict:
    """Every format against `dtype` weights of the checkpoint at `path`, over the songs (one model in memory at a
    time)."""
    generator = load_generator(path, dtype=dtype)
    control = f"{dtype} (F.linear)"
    forced, rows = [], {control: [], **{name: [] for name in FORMATS}}
    for song in songs:
        codes = generate_codes(generator, song, frames)
        reference = forced_log_probs(generator, song, codes).float()
        rows[control].append(compare(reference, forced_log_probs(generator, song, codes, True).float(), codes))
        forced.append((song, codes, reference))
    del generator
    for name in FORMATS:
        generator = load_generator(path, weights=name)
        for song, codes, reference in forced:
            rows[name].append(compare(reference, forced_log_probs(generator, song, codes), codes))
        del generator
    print(json.dumps({name: {k: round(v, 4) for k, v in rs[-1].items()} for name, rs in rows.items()}), flush=True)
    return {"reference": dtype, "songs": len(songs), "frames_per_song": frames,
            "against_reference": {name: {key: mean([r[key] for r in rs]) for key in rs[0]}
                                  for name, rs in rows.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100, help="frames per prompt (12.5 per second)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--official-size", action="store_true", help="also the 3B geometry with random weights")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "lm_quant_quality.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prompts = select_prompts(quick=True)
    songs = [SongRequest(lyrics=p.lyrics, tags=p.tags, seed=0) for p in prompts]
    result = {"machine": machine(), "threads": args.threads, "torch": torch.__version__,
              "prompts": [p.id for p in prompts], "lms": {}}
    result["lms"]["default"] = measure(resolve_lm(None, "3B"), songs, args.frames)
    with tempfile.TemporaryDirectory() as tmp:
        write_random_root(Path(tmp) / "bench-36m", "bench-36m")
        result["lms"]["bench-36m (random weights)"] = measure(Path(tmp) / "bench-36m", songs[:3], args.frames)
        if args.official_size:
            from heartmula.lm.config import HeartMuLaConfig
            from heartmula.lm.model import HeartMuLa

            folder = Path(tmp) / "official"
            with torch.device("meta"):
                model = HeartMuLa(HeartMuLaConfig())
            model = model.to_empty(device="cpu").to(torch.bfloat16).init_weights(seed=0)
            model.save_pretrained(folder)
            del model
            write_random_root(Path(tmp) / "tok", "tiny")  # for its tokenizer and gen_config
            for name in ("tokenizer.json", "gen_config.json"):
                (folder / name).write_bytes((Path(tmp) / "tok" / name).read_bytes())
            result["lms"]["3B geometry (random weights)"] = measure(folder, songs[:1], min(args.frames, 10),
                                                                    "bfloat16")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
