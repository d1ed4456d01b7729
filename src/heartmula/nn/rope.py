"""Rotary position embedding on ADJACENT pairs (x viewed as [..., d/2, 2]), tables in float32.

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
    """[num_positions, d/2, 2] of (cos, sin), float32."""
    positions = torch.arange(num_positions, dtype=inv_freq.dtype, device=inv_freq.device)
    angles = torch.einsum("i,j->ij", positions, inv_freq).float()
    return torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate x [batch, seq, heads, head_dim] by table rows [batch or 1, seq, head_dim/2, 2]."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    cos_sin = table.unsqueeze(2)  # broadcast over heads
    cos, sin = cos_sin[..., 0], cos_sin[..., 1]
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1)
    return rotated.flatten(3).type_as(x)
