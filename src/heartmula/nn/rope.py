"""Rotary position embedding on ADJACENT pairs (x viewed as [..., d/2] complex numbers), tables in complex64.

A pair (even, odd) rotated by angle a is the complex product (even + i odd)(cos a + i sin a): one elementwise
kernel instead of a dozen, with the same two products and one sum per output as the written-out formula (so the
same float32 results).

`llama3_inverse_frequencies` applies the Llama-3 long-context scaling elementwise in float32, in the same order of
operations as the reference implementations, so the tables agree bit for bit.
"""

from __future__ import annotations

import math

import torch


def inverse_frequencies(
    head_dim: int,
    base: float,
    scale_factor: float | None = None,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
    original_context: int = 8192,
) -> torch.Tensor:
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    if not scale_factor:
        return freqs
    low_freq_wavelen = original_context / low_freq_factor
    high_freq_wavelen = original_context / high_freq_factor
    wavelen = 2 * math.pi / freqs
    smooth = (original_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * freqs / scale_factor + smooth * freqs
    return torch.where(
        wavelen < high_freq_wavelen, freqs, torch.where(wavelen > low_freq_wavelen, freqs / scale_factor, blended)
    )


def rope_table(inv_freq: torch.Tensor, num_positions: int) -> torch.Tensor:
    """[num_positions, d/2] of cos + i sin (complex64, from float32 angles)."""
    positions = torch.arange(num_positions, dtype=inv_freq.dtype, device=inv_freq.device)
    angles = torch.einsum("i,j->ij", positions, inv_freq).float()
    return torch.complex(torch.cos(angles), torch.sin(angles))


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate x [batch, seq, heads, head_dim] by table rows [batch or 1, seq, head_dim/2] (broadcast over heads)."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * table.unsqueeze(2)).flatten(3).type_as(x)
