"""Int8 linear layers (per-output-channel weight scales) for memory-bound CPU decoding.

Decoding one frame reads every weight once or more, so on a CPU the time is roughly bytes read / memory bandwidth;
int8 weights read a quarter of float32's bytes. On x86 the layers run on FBGEMM's int8 kernels, which also
quantise the activations on the fly (per call); elsewhere the weights are dequantised inside a float matmul.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn


def _fbgemm_available() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(torch.ops.quantized, "linear_dynamic")


class Int8Linear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        weight = weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        quantized = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
        self.register_buffer("scales", scales)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self._packed = None
        # With FBGEMM the packed copy is all the layer needs: keep no second int8 copy.
        use_fbgemm = weight.device.type == "cpu" and _fbgemm_available()
        self.register_buffer("weight", None if use_fbgemm else quantized)
        if use_fbgemm:
            with warnings.catch_warnings():  # quantized tensors are deprecated API, still the fast CPU path
                warnings.simplefilter("ignore")
                qweight = torch.quantize_per_channel(
                    weight, scales.double(), torch.zeros_like(scales, dtype=torch.int64), 0, torch.qint8)
                self._packed = torch.ops.quantized.linear_prepack(qweight, self.bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        return cls(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if self._packed is not None and flat.device.type == "cpu":
            # reduce_range: activations on 7 bits, as PyTorch's own x86 dynamic quantisation does. Without it,
            # CPUs lacking VNNI (AVX2 only) saturate FBGEMM's 16-bit intermediate sums, and the outputs go wrong.
            out = torch.ops.quantized.linear_dynamic(flat.float(), self._packed, True).to(x.dtype)
        else:
            out = F.linear(flat, self.weight.to(flat.dtype)) * self.scales.to(flat.dtype)
            if self.bias is not None:
                out = out + self.bias.to(flat.dtype)
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


def quantize_fused(module: nn.Module) -> None:
    """Fused projections (`heartmula.nn.layers.FusedLinear`) below `module` become one int8 layer each; their
    separate float layers are dropped, so the weights are held once (int8 runs never need upstream's bits)."""
    for parent in list(module.modules()):
        for fused_name, layer_names in (("fused_qkv", ("q_proj", "k_proj", "v_proj")),
                                        ("fused_gate_up", ("w1", "w3"))):
            fused = getattr(parent, fused_name, None)
            if fused is None or not fused.intact():
                continue
            fused.quantized = Int8Linear(fused.weight)
            fused.weight = None
            for name in layer_names:
                setattr(parent, name, None)


def quantize_int8(model) -> None:
    """Int8 weights for a HeartMuLa model's transformers, projection and heads (embeddings stay as they are)."""
    quantize_fused(model)
    quantize_linears(model.backbone)
    quantize_linears(model.decoder)
    model.projection = Int8Linear.from_linear(model.projection)
    model.codebook0_head = Int8Linear.from_linear(model.codebook0_head)
    # audio_head[i] is used as h @ W ([decoder_dim, vocab]); as a linear layer its weight is W transposed.
    model.audio_head_int8 = nn.ModuleList(Int8Linear(head.t()) for head in model.audio_head.detach())
    model.audio_head = nn.Parameter(torch.empty(0), requires_grad=False)
    # The float parameters left (norm scales) may be views of the block that held all the float weights
    # (heartmula.lm.backends.pack_weights_in_huge_pages): their own copies let that block go.
    for param in model.parameters():
        if param.untyped_storage().nbytes() > param.numel() * param.element_size():
            param.data = param.data.clone()
