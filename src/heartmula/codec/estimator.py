"""The flow-matching velocity estimator: a two-stage DiT with adaLN-single timestep modulation.

    input [B, T, 1024] = cat(noisy latent, in-context latent, condition)
    proj_in (conv k3 + linear) -> stage 1: `num_layers` blocks of width W = heads x head_dim
    -> LayerNorm + shift/scale -> skip: cat(input, stage-1 output) -> connection_proj -> stage 2: `num_layers_2`
    blocks of width 2W (head_dim doubled) -> LayerNorm + shift/scale -> proj_out -> velocity [B, T, 256]

Tensor names are the official ones (`flow_matching.estimator.*`). The order of operations follows the reference
so that float32 results agree to the last bit: the SQ decoder rounds the latent to a grid of 1/9, and a rounding
flip caused by a 1e-7 difference would be audible in a sample-for-sample comparison.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from heartmula.codec.config import HeartCodecConfig
from heartmula.nn.rope import apply_rope, inverse_frequencies, rope_table

TIMESTEP_CHANNELS = 512  # sinusoid width of the timestep embedding
TIMESTEP_SCALE = 1000.0  # t in [0, 1] is embedded as t * 1000


class RMSNorm(nn.Module):
    """RMSNorm with the estimator's tensor name (`weight`) and eps."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps))


class FeedForward(nn.Module):
    """SwiGLU with hidden width 2/3 x 4 x dim rounded up to a multiple of 256 (4096 for 1536, 8192 for 3072)."""

    def __init__(self, dim: int):
        super().__init__()
        hidden = 256 * ((int(2 * 4 * dim / 3) + 255) // 256)
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(dim, inner, bias=False)
        self.k_proj = nn.Linear(dim, inner, bias=False)
        self.v_proj = nn.Linear(dim, inner, bias=False)
        self.o_proj = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        split = (b, t, self.num_heads, self.head_dim)
        # q and k contiguous as [B, heads, T, head_dim], v a transposed view: the layouts of the reference, so that
        # the attention kernel takes the same path and sums in the same order.
        q = apply_rope(self.q_proj(x).view(split), rope).transpose(1, 2).contiguous()
        k = apply_rope(self.k_proj(x).view(split), rope).transpose(1, 2).contiguous()
        v = self.v_proj(x).view(split).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # full (bidirectional) attention, no mask
        return self.o_proj(out.transpose(1, 2).contiguous().view(b, t, -1))


class Block(nn.Module):
    """Pre-norm transformer block; the timestep sets a shift, scale and gate for each of its two halves."""

    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.attn_norm = RMSNorm(dim)
        self.attn = SelfAttention(dim, num_heads, head_dim)
        self.mlp_norm = RMSNorm(dim)
        self.mlp = FeedForward(dim)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, modulation: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        mods = self.scale_shift_table[None] + modulation.reshape(x.shape[0], 6, -1)
        shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = mods.chunk(6, dim=1)
        h = self.attn(self.attn_norm(x) * (1 + scale_attn) + shift_attn, rope)
        x = x + gate_attn * h
        h = self.mlp(self.mlp_norm(x) * (1 + scale_mlp) + shift_mlp)
        return x + gate_mlp * h


class ConvProjection(nn.Module):
    """Conv1d (kernel k, centred) scaled by k^-1/2, then a Linear; works on [B, T, C]."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3):
        super().__init__()
        self.kernel_size = kernel_size
        self.ffn_1 = nn.Conv1d(cin, cout, kernel_size, padding=kernel_size // 2)
        self.ffn_2 = nn.Linear(cout, cout)

    def forward(self, x):
        x = self.ffn_1(x.transpose(1, 2)).transpose(1, 2)
        return self.ffn_2(x * self.kernel_size**-0.5)


class TimestepMLP(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(TIMESTEP_CHANNELS, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class TimestepEmbedding(nn.Module):
    """Holds `timestep_embedder` (official name path: adaln_single.emb.timestep_embedder)."""

    def __init__(self, dim: int):
        super().__init__()
        self.timestep_embedder = TimestepMLP(dim)


def timestep_sinusoid(t: torch.Tensor) -> torch.Tensor:
    """t [B] in [0, 1] -> [B, 512]: cos then sin of t*1000 at geometric frequencies (period up to 10000)."""
    half = TIMESTEP_CHANNELS // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(0, half, device=t.device) / half).to(t.dtype)
    angles = t[:, None] * freqs[None] * TIMESTEP_SCALE
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class AdaLayerNormSingle(nn.Module):
    """One timestep network per stage: returns (the 6 x dim block modulation, the dim embedding for the output)."""

    def __init__(self, dim: int):
        super().__init__()
        self.emb = TimestepEmbedding(dim)
        self.linear = nn.Linear(dim, 6 * dim)

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        embedded = self.emb.timestep_embedder(timestep_sinusoid(t).to(dtype))
        return self.linear(F.silu(embedded)), embedded


class Estimator(nn.Module):
    def __init__(self, config: HeartCodecConfig):
        super().__init__()
        heads, head_dim = config.num_attention_heads, config.attention_head_dim
        width, width_2 = heads * head_dim, 2 * heads * head_dim
        self.proj_in = ConvProjection(config.in_channels, width)
        self.transformer_blocks = nn.ModuleList(Block(width, heads, head_dim) for _ in range(config.num_layers))
        self.transformer_blocks_2 = nn.ModuleList(
            Block(width_2, heads, 2 * head_dim) for _ in range(config.num_layers_2)
        )
        self.connection_proj = ConvProjection(config.in_channels + width, width_2)
        self.scale_shift_table = nn.Parameter(torch.randn(2, width) / width**0.5)
        self.scale_shift_table_2 = nn.Parameter(torch.randn(2, width_2) / width_2**0.5)
        self.proj_out = ConvProjection(width_2, config.out_channels)
        self.adaln_single = AdaLayerNormSingle(width)
        self.adaln_single_2 = AdaLayerNormSingle(width_2)
        self.head_dim = head_dim
        self.eps = 1e-6

    def rope_tables(self, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE (base 10000, adjacent pairs, whole head) for both stages; [1, length, head_dim/2] complex64."""
        tables = []
        for head_dim in (self.head_dim, 2 * self.head_dim):
            inv_freq = inverse_frequencies(head_dim, 10000.0).to(device)
            tables.append(rope_table(inv_freq, length).unsqueeze(0))
        return tables[0], tables[1]

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x [B, T, in_channels], t [B] -> velocity [B, T, out_channels]."""
        rope_1, rope_2 = self.rope_tables(x.shape[1], x.device)
        h = self.proj_in(x)
        modulation, embedded = self.adaln_single(t, h.dtype)
        for block in self.transformer_blocks:
            h = block(h, modulation, rope_1)
        h = self._modulated_norm(h, self.scale_shift_table, embedded)

        h = self.connection_proj(torch.cat([x, h], dim=-1))
        modulation, embedded = self.adaln_single_2(t, h.dtype)
        for block in self.transformer_blocks_2:
            h = block(h, modulation, rope_2)
        h = self._modulated_norm(h, self.scale_shift_table_2, embedded)
        return self.proj_out(h)

    def _modulated_norm(self, h, table, embedded):
        shift, scale = (table[None] + embedded[:, None]).chunk(2, dim=1)
        h = F.layer_norm(h, (h.shape[-1],), eps=self.eps)
        return h * (1 + scale) + shift
