"""Top-k + temperature sampling with the Gumbel-style trick (argmax of probs / Exponential noise).

The trick draws from the categorical distribution without a host synchronisation. Two samplers with the same
distribution: `sample_top_k` consumes the random stream exactly as the upstream sampler does (noise over the whole
vocabulary), so a seeded run reproduces upstream's choices; `sample_among_top_k` works on the k best codes only
(one native call on x86 CPUs, else a few small operations) instead of a dozen operations over the vocabulary, which
matters once per codebook per frame.
"""

from __future__ import annotations

import torch

from heartmula.nn import native


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
    return torch.argmax(probs / exponential_noise(probs.shape, probs.dtype, probs.device, generators), dim=-1)


def sample_among_top_k(
    logits: torch.Tensor,
    top_k: int,
    temperature: float,
    generators: list[torch.Generator | None] | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same distribution as `sample_top_k` (softmax of logits / temperature over the k best), its own noise:
    `noise` [n, min(top_k, vocab)] if given (Exponential(1) draws), else drawn here from `generators`.

    Float32 CPU logits [n, vocab] take the native kernel (`heartmula.nn.native`): one call instead of six torch
    operations, with the same noise paired with the same codes."""
    if temperature <= 0 or top_k == 1:
        return logits.argmax(dim=-1)
    k = min(top_k, logits.shape[-1])
    if noise is None:
        noise = exponential_noise((*logits.shape[:-1], k), logits.dtype, logits.device, generators)
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.dim() == 2:
        kernels = native.kernels()
        if kernels is not None:
            return kernels.sample_among_top_k(logits.contiguous(), temperature, noise.contiguous())
    best, best_ids = torch.topk(logits, k, dim=-1)
    probs = torch.softmax(best / temperature, dim=-1)
    return best_ids.gather(-1, torch.argmax(probs / noise, dim=-1, keepdim=True)).squeeze(-1)


def exponential_noise(shape, dtype, device, generators: list[torch.Generator | None] | None) -> torch.Tensor:
    """Exponential(1) draws; row i from generators[i] (None: the global generator)."""
    noise = torch.empty(shape, dtype=dtype, device=device)
    if generators is None or all(g is None for g in generators):
        return noise.exponential_(1)
    for row, generator in enumerate(generators):
        noise[row].exponential_(1, generator=generator)
    return noise
