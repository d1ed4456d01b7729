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
    def __init__(self, dim: int, kernel_size: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel_size, dilation=dilation, padding=dilation * (kernel_size // 2))
        self.mix = nn.Conv1d(dim, dim, 1)

    def forward(self, x):  # [B, C, T]
        return x + self.mix(F.gelu(self.conv(F.gelu(x))))


def dilations(num_blocks: int) -> list[int]:
    return [2 ** (i % 4) for i in range(num_blocks)]  # 1, 2, 4, 8, 1, 2, ...


class DirectDecoder(nn.Module):
    def __init__(self, dim: int, latent_dim: int, config: ConvNetConfig):
        super().__init__()
        k = config.kernel_size
        self.conv_in = nn.Conv1d(dim, config.hidden_dim, k, padding=k // 2)
        self.blocks = nn.ModuleList(ResidualConv(config.hidden_dim, k, d) for d in dilations(config.num_blocks))
        self.norm = nn.LayerNorm(config.hidden_dim)  # per frame: keeps the net local in time (streaming)
        self.proj_out = nn.Linear(config.hidden_dim, latent_dim)
        # How many frames on each side an output frame sees: streaming keeps this much context.
        self.receptive_radius = k // 2 + sum(d * (k // 2) for d in dilations(config.num_blocks))

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(condition.transpose(1, 2))
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
