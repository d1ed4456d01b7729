"""Top-k + temperature sampling with the Gumbel-style trick (argmax of probs / Exponential noise).

The trick draws from the categorical distribution without a host synchronisation. Two samplers with the same
distribution: `sample_top_k` consumes the random stream exactly as the upstream sampler does (noise over the whole
vocabulary), so a seeded run reproduces upstream's choices; `sample_among_top_k` works on the k best codes only,
a dozen small operations instead of a dozen over the vocabulary, which matters once per codebook per frame.
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


def sample_among_top_k(
    logits: torch.Tensor,
    top_k: int,
    temperature: float,
    generators: list[torch.Generator | None] | None = None,
) -> torch.Tensor:
    """Same distribution as `sample_top_k` (softmax of logits / temperature over the k best), its own noise."""
    if temperature <= 0 or top_k == 1:
        return logits.argmax(dim=-1)
    best, best_ids = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1)
    probs = torch.softmax(best / temperature, dim=-1)
    noise = torch.empty_like(probs)
    if generators is None or all(g is None for g in generators):
        noise.exponential_(1)
    else:
        for row, generator in enumerate(generators):
            noise[row].exponential_(1, generator=generator)
    return best_ids.gather(-1, torch.argmax(probs / noise, dim=-1, keepdim=True)).squeeze(-1)
