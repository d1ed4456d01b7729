"""Int8 weights on the embedded default LM: how much faster, and how much do the next-code distributions move?

For the first prompt of each language and an instrumental (the quality report's `--quick` set), the float32 model
generates `--frames` frames (seeded, CFG 1.5, top-k 50). Then the float32 and the int8 model are both teacher-forced
over those same codes, and for every codebook of every frame the guided distribution (temperature 1, undecodable
codes masked) is recorded. Reported per model against float32:
- `kl`: mean KL(float32 || model) in nats per code;
- `top1_agree`: how often both put the same code first;
- `top50_overlap`: the shared fraction of their 50 best codes (what top-k 50 samples among);
- `nll`: mean negative log-likelihood of the float32 model's own sampled codes (lower = the model likes them more).
`float32 (F.linear)` is a control: the same float32 weights with upstream's products, so it differs only by float32
summation order; its numbers are the noise floor. Speed: ms per frame for each model, generating freely, in the
same run and thread count.

    python bench/lm_int8.py            # writes bench/results/lm_int8.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from _machine import machine

from heartmula.eval.report import select_prompts
from heartmula.lm.generation import SamplingParams, SongRequest
from heartmula.lm.pretrained import load_generator
from heartmula.nn.layers import upstream_products
from heartmula.nn.quant import quantize_int8
from heartmula.song_models import resolve_lm

ROOT = Path(__file__).resolve().parents[1]
MASKED = -1e9  # stands in for -inf so that 0 * log 0 terms are 0, not NaN


def generate_codes(generator, song: SongRequest, frames: int) -> torch.Tensor:
    return generator.generate([song], SamplingParams(), frames, min_new_frames=frames)[0]


def forced_log_probs(generator, song: SongRequest, codes: torch.Tensor, exact_products: bool = False) -> torch.Tensor:
    """Guided log-probabilities [T, K, V] of a session fed `codes` [K, T] instead of its own samples."""
    session = generator.start([song], SamplingParams(), codes.shape[1] - 1)
    sampler = session.sampler
    sampler.fused_local_frame = False  # the native local frame would not ask `sample`
    records = []

    def forced(logits: torch.Tensor, codebook: int, noise: torch.Tensor | None = None) -> torch.Tensor:
        guided = sampler.guide(logits) + sampler.masks[codebook]
        records.append(torch.log_softmax(guided.clamp(min=MASKED), dim=-1)[0])
        return codes[codebook, session.frame_index].view(1)

    sampler.sample = forced
    with torch.inference_mode(), upstream_products() if exact_products else nullcontext():
        for _ in session.iter_frames():
            pass
    session.close()
    k = codes.shape[0]
    return torch.stack(records).view(codes.shape[1], k, -1)


def compare(reference: torch.Tensor, other: torch.Tensor, codes: torch.Tensor, k_best: int = 50) -> dict:
    p = reference.exp()
    kl = (p * (reference - other)).sum(-1)
    top1 = reference.argmax(-1) == other.argmax(-1)
    ref_best = reference.topk(k_best, dim=-1).indices
    other_best = other.topk(k_best, dim=-1).indices
    overlap = (ref_best[..., :, None] == other_best[..., None, :]).any(-1).float().mean(-1)
    nll = -other.gather(-1, codes.t()[..., None]).squeeze(-1)
    return {"kl": kl.mean().item(), "top1_agree": top1.float().mean().item(),
            "top50_overlap": overlap.mean().item(), "nll": nll.mean().item()}


def ms_per_frame(generator, song: SongRequest, frames: int) -> float:
    generate_codes(generator, song, 10)  # warm-up
    started = time.perf_counter()
    generate_codes(generator, song, frames)
    return (time.perf_counter() - started) / (frames + 1) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=150, help="frames per prompt (12.5 per second)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "lm_int8.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    path = resolve_lm(None, "3B")
    float32 = load_generator(path)
    int8 = load_generator(path)
    quantize_int8(int8.model)
    prompts = select_prompts(quick=True)
    rows = {"float32": [], "float32 (F.linear)": [], "int8": []}
    speed = {"float32": [], "int8": []}
    for prompt in prompts:
        song = SongRequest(lyrics=prompt.lyrics, tags=prompt.tags, seed=0)
        codes = generate_codes(float32, song, args.frames)
        reference = forced_log_probs(float32, song, codes)
        rows["float32"].append(compare(reference, reference, codes))
        rows["float32 (F.linear)"].append(compare(reference, forced_log_probs(float32, song, codes, True), codes))
        rows["int8"].append(compare(reference, forced_log_probs(int8, song, codes), codes))
        speed["float32"].append(ms_per_frame(float32, song, args.frames))
        speed["int8"].append(ms_per_frame(int8, song, args.frames))
        print(prompt.id, {name: {k: round(v, 4) for k, v in r[-1].items()} for name, r in rows.items()},
              {name: round(v[-1], 1) for name, v in speed.items()}, flush=True)

    def mean(values):
        return float(f"{sum(values) / len(values):.4g}")

    result = {
        "lm": "embedded default",
        "machine": machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "frames_per_prompt": args.frames,
        "prompts": [p.id for p in prompts],
        "against_float32": {name: {key: mean([r[key] for r in rs]) for key in rs[0]} for name, rs in rows.items()},
        "ms_per_frame": {name: round(sum(v) / len(v), 2) for name, v in speed.items()},
    }
    result["speedup_int8"] = round(result["ms_per_frame"]["float32"] / result["ms_per_frame"]["int8"], 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
