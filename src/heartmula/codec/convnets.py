"""Small convolutional nets of this project (not in the official release).

`DirectDecoder`: code condition [B, 2T, dim] at 25 Hz -> latent [B, 2T, latent_dim] in one pass (replaces the
flow-matching solver for fast CPU decoding). `CodeEncoder`: SQ latent [B, 2T, latent_dim] -> features
[B, T, dim] at 12.5 Hz, which the residual quantiser turns into codes (audio -> tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from heartmula.codec.config import ConvNetConfig


class ResidualConv(nn.Module):
    """x + 1x1(gelu(conv(gelu(x)))) with a centred or a causal (left-padded) dilated conv."""

    def __init__(self, dim: int, kernel_size: int, dilation: int, causal: bool = False):
        super().__init__()
        reach = dilation * (kernel_size - 1)
        self.left_pad = reach if causal else 0
        self.conv = nn.Conv1d(dim, dim, kernel_size, dilation=dilation, padding=0 if causal else reach // 2)
        self.mix = nn.Conv1d(dim, dim, 1)

    def forward(self, x):  # [B, C, T]
        h = F.gelu(x)
        if self.left_pad:
            h = F.pad(h, (self.left_pad, 0))
        return x + self.mix(F.gelu(self.conv(h)))


def dilations(num_blocks: int) -> list[int]:
    return [2 ** (i % 4) for i in range(num_blocks)]  # 1, 2, 4, 8, 1, 2, ...


class DirectDecoder(nn.Module):
    def __init__(self, dim: int, latent_dim: int, config: ConvNetConfig):
        super().__init__()
        k = config.kernel_size
        causal = config.lookahead is not None
        # The input conv decides the look-ahead: centred, or `lookahead` frames ahead and the rest behind.
        self.input_pad = (k // 2, k // 2) if not causal else (k - 1 - config.lookahead, config.lookahead)
        self.conv_in = nn.Conv1d(dim, config.hidden_dim, k)
        self.blocks = nn.ModuleList(ResidualConv(config.hidden_dim, k, d, causal)
                                    for d in dilations(config.num_blocks))
        self.norm = nn.LayerNorm(config.hidden_dim)  # per frame: keeps the net local in time (streaming)
        self.proj_out = nn.Linear(config.hidden_dim, latent_dim)
        # How many condition frames before and after an output frame it sees: streaming keeps this much context.
        reach = sum(d * (k - 1) for d in dilations(config.num_blocks))
        self.left_context = self.input_pad[0] + (reach if causal else reach // 2)
        self.right_context = self.input_pad[1] + (0 if causal else reach // 2)

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(F.pad(condition.transpose(1, 2), self.input_pad))
        for block in self.blocks:
            x = block(x)
        # The SQ latent is a tanh output: keep predictions in (-1, 1).
        return torch.tanh(self.proj_out(F.gelu(self.norm(x.transpose(1, 2)))))


class CodeEncoder(nn.Module):
    def __init__(self, latent_dim: int, dim: int, config: ConvNetConfig):
        super().__init__()
        k = config.kernel_size
        self.conv_in = nn.Conv1d(latent_dim, config.hidden_dim, 4, stride=2, padding=1)  # 25 Hz -> 12.5 Hz
        self.blocks = nn.ModuleList(ResidualConv(config.hidden_dim, k, d) for d in dilations(config.num_blocks))
        self.proj_out = nn.Linear(config.hidden_dim, dim)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [B, 2T, latent_dim] -> features [B, T, dim] (odd lengths are padded by one frame)."""
        if latent.shape[1] % 2:
            latent = F.pad(latent, (0, 0, 0, 1), mode="replicate")
        x = self.conv_in(latent.transpose(1, 2))
        for block in self.blocks:
            x = block(x)
        return self.proj_out(x.transpose(1, 2))
