"""Int8 weight-only linear layers (per-output-channel scales) for memory-bound CPU decoding.

Decoding one frame reads every weight once or more, so on a CPU the time is roughly bytes read / memory
bandwidth; int8 weights read a quarter of float32's bytes. Activations stay in floating point.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Int8Linear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        weight = weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        quantized = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
        self.register_buffer("weight", quantized)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        return cls(linear.weight, linear.bias).to(linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.device.type == "cpu":
            out = torch.ops.aten._weight_int8pack_mm(flat, self.weight, self.scales.to(flat.dtype))
        else:
            out = F.linear(flat, self.weight.to(flat.dtype)) * self.scales.to(flat.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def quantize_linears(module: nn.Module) -> int:
    """Replace every nn.Linear below `module` (in place); returns how many were replaced."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, Int8Linear.from_linear(child))
            count += 1
        else:
            count += quantize_linears(child)
    return count


def quantize_int8(model) -> None:
    """Int8 weights for a HeartMuLa model's transformers, projection and heads (embeddings stay as they are)."""
    quantize_linears(model.backbone)
    quantize_linears(model.decoder)
    model.projection = Int8Linear.from_linear(model.projection)
    model.codebook0_head = Int8Linear.from_linear(model.codebook0_head)
    # audio_head[i] is used as h @ W ([decoder_dim, vocab]); as a linear layer its weight is W transposed.
    model.audio_head_int8 = nn.ModuleList(Int8Linear(head.t()) for head in model.audio_head.detach())
    model.audio_head = nn.Parameter(torch.empty(0), requires_grad=False)
