"""LoRA on the HeartMuLa-oss-3B geometry, on the meta device (no weights, no memory): trainable parameters, a
memory estimate per training step (`heartmula.train.lora_memory`), and one full training step (forward through
backbone and local decoder with gradient checkpointing, loss, backward) run on meta tensors, which checks every
shape of LoRA training at that size.

    python bench/lora_3b_memory.py      # writes bench/results/lora_3b_memory.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from heartmula.lm.config import HeartMuLaConfig
from heartmula.train.lm import Sample, embed_samples, run_transformer
from heartmula.train.lora_memory import lora_memory_estimate, lora_on_meta


def checkpointed_loss(model, samples: list[Sample]) -> torch.Tensor:
    """The training loss of `heartmula.train.lm.lm_losses` (every frame through the decoder) with gradient
    checkpointing, kept as a tensor (meta tensors have no values to report)."""
    k = model.num_codebooks
    hidden, targets = embed_samples(model, samples)
    out = run_transformer(model.backbone, hidden, torch.arange(hidden.shape[1]), checkpoint=True)
    c0 = F.cross_entropy(model.codebook0_head(out).flatten(0, 1), targets.flatten(), ignore_index=-100)
    batch = torch.cat([torch.full((len(s.frame_rows),), i) for i, s in enumerate(samples)])
    states = out[batch, torch.cat([s.frame_rows for s in samples])]
    codes = torch.cat([s.frame_codes for s in samples])
    previous = model.audio_embeddings(codes[:, : k - 1] + model.config.audio_vocab_size * torch.arange(k - 1))
    decoded = run_transformer(model.decoder, model.projection(torch.cat([states[:, None], previous], dim=1)),
                              torch.arange(k), checkpoint=True)
    logits = torch.einsum("nkd,kdv->nkv", decoded[:, 1:], model.audio_head)
    return c0 + F.cross_entropy(logits.flatten(0, 1), codes[:, 1:].flatten())


def meta_training_step(config: HeartMuLaConfig, rank: int, batch_size: int, context: int) -> dict:
    """One LoRA training step on the meta device; returns the gradient shapes that reached the adapters."""
    peft_model = lora_on_meta(config, rank)
    model = peft_model.base_model.model
    k = config.audio_num_codebooks
    prompt = 64
    with torch.device("meta"):
        samples = []
        for _ in range(batch_size):
            tokens = torch.zeros(context, k + 1, dtype=torch.long)
            targets = torch.zeros(context, dtype=torch.long)
            rows = torch.arange(prompt - 1, context - 1)
            samples.append(Sample(tokens, tokens.bool(), 0, targets, rows, torch.zeros(len(rows), k, dtype=torch.long),
                                  False))
        loss = checkpointed_loss(model, samples)
        loss.backward()
    grads = [p for p in peft_model.parameters() if p.requires_grad]
    return {"loss_shape": list(loss.shape), "adapter_tensors": len(grads),
            "adapter_tensors_with_gradient": sum(p.grad is not None and p.grad.shape == p.shape for p in grads),
            "frozen_tensors_with_gradient": sum(p.grad is not None for p in peft_model.parameters()
                                                if not p.requires_grad)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "lora_3b_memory.json")
    args = parser.parse_args()
    config = HeartMuLaConfig()  # the release's flavors: llama-3B backbone, llama-300M decoder, 8 x 8197 codes
    started = time.perf_counter()
    step = meta_training_step(config, args.rank, 2, args.context)
    estimates = {f"batch_{b}": lora_memory_estimate(config, args.rank, b, args.context) for b in (1, 2, 4, 8)}
    result = {"command": f"python bench/lora_3b_memory.py --rank {args.rank} --context {args.context}",
              "geometry": "HeartMuLa-oss-3B (backbone llama-3B, decoder llama-300M)", "dtype": "bfloat16 weights",
              "meta_training_step": step, "seconds": round(time.perf_counter() - started, 1),
              "estimates": estimates,
              "fits_24gb_with_checkpointing": {k: v["total_gb"] < 24 for k, v in estimates.items()},
              "fits_24gb_without_checkpointing": {k: v["without_checkpointing_gb"] < 24 for k, v in estimates.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
