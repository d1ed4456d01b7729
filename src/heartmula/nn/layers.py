"""Linear layers, norms and feed-forward blocks (official tensor names: `scale`, `w1` gate, `w2` down, `w3` up)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Up to this many rows (batch x positions), a float32 product on a CPU runs as `(weight @ x.T).T` (see `linear`).
FEW_ROWS = 32


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           few_rows_transposed: bool = True) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, faster for the few-row float32 products of decoding on a CPU.

    Decoding with guidance multiplies 2-3 rows per song by every weight matrix. torch's CPU BLAS (MKL) streams the
    weights of such an `x @ weight.T` at a fraction of the memory bandwidth on some CPUs; the same product computed
    as `(weight @ x.T).T` decoded the issue's 36M LM 3x faster on a 2-core AMD EPYC (`bench/lm_decode.py`). The
    two differ by float32 rounding only (another summation order); `few_rows_transposed=False` keeps F.linear's
    bits, which upstream's numbers need (compat mode).
    """
    if (few_rows_transposed and x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.numel() <= FEW_ROWS * x.shape[-1]):
        rows = x.reshape(-1, x.shape[-1])
        out = torch.mm(weight, rows.t()).t().contiguous().reshape(*x.shape[:-1], weight.shape[0])
        return out if bias is None else out + bias
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear (same parameters and names) computed by `linear`; `few_rows_transposed` picks its product."""

    few_rows_transposed = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.few_rows_transposed)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.scale.dtype == torch.float32:
            # One fused call, the same bits as the formula below (it runs once per layer and token: the overhead
            # of five small kernels shows in decoding speed).
            return F.rms_norm(x, self.scale.shape, self.scale, self.eps)
        # Normalise in float32 whatever the weight dtype, then scale in the weight dtype, as the reference does.
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.scale


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = Linear(dim, hidden_dim, bias=False)
        self.w2 = Linear(hidden_dim, dim, bias=False)
        self.w3 = Linear(dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))
