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
from heartmula.codec.sq_codec import Conv, with_tail
from heartmula.errors import HeartMuLaError


class ResidualConv(nn.Module):
    """x + 1x1(gelu(conv(gelu(x)))) with a centred or a causal (left-padded) dilated conv; streams with a cache."""

    def __init__(self, dim: int, kernel_size: int, dilation: int, causal: bool = False):
        super().__init__()
        self.conv = Conv(dim, dim, kernel_size, dilation=dilation, causal=causal, weight_normed=False)
        self.mix = Conv(dim, dim, 1, weight_normed=False)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:  # [B, C, T]
        return x + self.mix(F.gelu(self.conv(F.gelu(x), cache)))


def dilations(num_blocks: int) -> list[int]:
    return [2 ** (i % 4) for i in range(num_blocks)]  # 1, 2, 4, 8, 1, 2, ...


class DirectDecoder(nn.Module):
    def __init__(self, dim: int, latent_dim: int, config: ConvNetConfig):
        super().__init__()
        k = config.kernel_size
        causal = config.lookahead is not None
        self.causal = causal
        # The input conv decides the look-ahead: centred, or `lookahead` frames ahead and the rest behind.
        self.input_pad = (k // 2, k // 2) if not causal else (k - 1 - config.lookahead, config.lookahead)
        self.conv_in = nn.Conv1d(dim, config.hidden_dim, k)
        self.blocks = nn.ModuleList(ResidualConv(config.hidden_dim, k, d, causal)
                                    for d in dilations(config.num_blocks))
        self.norm = nn.LayerNorm(config.hidden_dim)  # per frame: keeps the net local in time (streaming)
        self.proj_out = nn.Linear(config.hidden_dim, latent_dim)
        # How many condition frames before and after an output frame it sees: streaming keeps this much context.
        reach = sum(block.conv.context for block in self.blocks)
        self.left_context = self.input_pad[0] + (reach if causal else reach // 2)
        self.right_context = self.input_pad[1] + (0 if causal else reach // 2)

    def forward(self, condition: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """condition [B, L, dim] -> latent [B, L, latent_dim].

        Streaming (causal decoders): pass the condition in pieces with one `cache` dict; each call returns the
        latent frames whose look-ahead has arrived (the first call `lookahead` fewer than it was given) and
        `end_stream` the rest, so the pieces join to the one-shot output, without recomputing any left context.
        """
        x = condition.transpose(1, 2)
        if cache is None:
            x = F.pad(x, self.input_pad)
        else:
            if not self.causal:
                raise HeartMuLaError("only a decoder with a look-ahead (direct_decoder.lookahead) streams from a cache")
            x = with_tail(self.conv_in, x, cache, self.input_pad[0], self.conv_in.kernel_size[0] - 1)
            if x.shape[-1] < self.conv_in.kernel_size[0]:  # still filling the look-ahead: no frame is ready
                return condition.new_zeros(condition.shape[0], 0, self.proj_out.out_features)
        x = self.conv_in(x)
        for block in self.blocks:
            x = block(x, cache)
        # The SQ latent is a tanh output: keep predictions in (-1, 1).
        return torch.tanh(self.proj_out(F.gelu(self.norm(x.transpose(1, 2)))))

    def end_stream(self, cache: dict, batch: int = 1) -> torch.Tensor:
        """The last `lookahead` latent frames of a stream: the zero padding after the end stands in for it."""
        dim = self.conv_in.in_channels
        return self(self.proj_out.weight.new_zeros(batch, self.input_pad[1], dim), cache)


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
