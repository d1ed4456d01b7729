"""Top-k + temperature sampling with the Gumbel-style trick (argmax of probs / Exponential noise).

The trick draws from the categorical distribution without a host synchronisation, and it consumes the random
stream exactly as the upstream sampler does, so a seeded run reproduces upstream's choices.
"""

from __future__ import annotations

import torch


def sample_top_k(
    logits: torch.Tensor,
    top_k: int,
    temperature: float,
    generators: list[torch.Generator | None] | None = None,
) -> torch.Tensor:
    """logits [n, vocab] -> token ids [n] (long). Row i draws its noise from generators[i] (None: global RNG)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k < logits.shape[-1]:
        kth_best = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    probs = torch.softmax(torch.log_softmax(logits, dim=-1), dim=-1)
    noise = torch.empty_like(probs)
    if generators is None or all(g is None for g in generators):
        noise.exponential_(1)
    else:
        for row, generator in enumerate(generators):
            noise[row].exponential_(1, generator=generator)
    return torch.argmax(probs / noise, dim=-1)
