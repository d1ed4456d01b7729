"""Linear layers, norms and feed-forward blocks (official tensor names: `scale`, `w1` gate, `w2` down, `w3` up)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

from heartmula.nn import native

# Up to this many rows (batch x positions), a product on a CPU may take a faster path than F.linear (see `linear`).
FEW_ROWS = 32
# Up to this many rows, the native kernel (heartmula.nn.native) computes it where it can be used.
NATIVE_ROWS = 12


def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


# Without the native kernel, float32 few-row products run as `(weight @ x.T).T` on AMD CPUs, where MKL (torch's
# BLAS) reads the weights of `x @ weight.T` slowly; on Intel CPUs MKL's own `x @ weight.T` is the faster path.
# `bench/lm_decode.py` with HEARTMULA_NATIVE=0 measures decoding on this path.
TRANSPOSED_FEW_ROWS = _cpu_vendor() == "AuthenticAMD"


_UPSTREAM_PRODUCTS: ContextVar[bool] = ContextVar("upstream_products", default=False)


@contextmanager
def upstream_products() -> Iterator[None]:
    """Inside: every `linear` is F.linear and fused projections run as their separate layers (upstream's bits, for
    compat mode). A context of the calling thread, not a property of the model: sessions in both modes may share
    one model."""
    token = _UPSTREAM_PRODUCTS.set(True)
    try:
        yield
    finally:
        _UPSTREAM_PRODUCTS.reset(token)


def computing_upstream_products() -> bool:
    return _UPSTREAM_PRODUCTS.get()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, faster for the few-row float32 and bfloat16 products of decoding on a CPU.

    Decoding with guidance multiplies 2-3 rows per song by every weight matrix. torch's CPU BLAS (MKL) streams the
    weights of such an `x @ weight.T` at a fraction of the memory bandwidth on some CPUs. The native kernel
    (`heartmula.nn.native`, x86 with AVX2) streams them at close to it; without it, on AMD CPUs, a float32 product
    is computed as `(weight @ x.T).T`, whose weights MKL streams faster there (see TRANSPOSED_FEW_ROWS). Both
    differ from F.linear by rounding only (another summation order; the native kernel accumulates bfloat16 in
    float32 and rounds once); inside `upstream_products()` it is F.linear, whose bits upstream's numbers need
    (compat mode).
    """
    if (_UPSTREAM_PRODUCTS.get() or x.device.type != "cpu" or x.dtype != weight.dtype
            or x.dtype not in (torch.float32, torch.bfloat16) or x.numel() > FEW_ROWS * x.shape[-1]):
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])
    out_shape = (*x.shape[:-1], weight.shape[0])
    if (rows.shape[0] <= NATIVE_ROWS and weight.is_contiguous() and (bias is None or bias.dtype == x.dtype)
            and not _needs_grad(x, weight, bias)
            and not torch.compiler.is_compiling()):  # a compiled graph keeps torch's own operations
        kernels = native.kernels()
        if kernels is not None:
            return kernels.few_rows_linear(rows.contiguous(), weight, bias).reshape(out_shape)
    if x.dtype != torch.float32 or not TRANSPOSED_FEW_ROWS:
        return F.linear(x, weight, bias)
    out = torch.mm(weight, rows.t()).t().contiguous().reshape(out_shape)
    return out if bias is None else out + bias


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd would record a product of these (the native kernel has no backward)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class Linear(nn.Linear):
    """nn.Linear (same parameters and names) computed by `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class FusedLinear:
    """Bias-free linear layers that read the same input (q, k, v; SwiGLU's gate and up), computed as one product.

    Decoding runs every layer on 2-3 rows, where each product's fixed cost rivals the reading of its weights: one
    call in place of three or two. Int8 layers gain most, since FBGEMM quantises the input once per call. The
    layers' weights become row blocks of one matrix by `.data`, so the parameters keep their identity, names and
    values, nothing is stored twice, and in-place updates (an optimizer step, `load_state_dict`) change the fused
    matrix too. Whatever gives the first layer new storage (`.to(dtype)`, `load_state_dict(assign=True)`) turns the
    fusion off, which `active` notices. Not an nn.Module: it owns no parameters, so state dicts and optimizers never
    see it.
    """

    def __init__(self, layers: list[Linear]):
        self.weight: torch.Tensor | None = torch.cat([layer.weight.detach() for layer in layers])
        self.sizes = [layer.out_features for layer in layers]
        start = 0
        for layer in layers:
            layer.weight.data = self.weight[start : start + layer.out_features]
            start += layer.out_features
        self._first = layers[0]
        self.quantized: nn.Module | None = None  # an int8 / int4 layer over the fused matrix (heartmula.nn.quant*)

    @classmethod
    def of_quantized(cls, quantized: nn.Module, sizes: list[int]) -> FusedLinear:
        """The fusion of layers that exist only quantised (their float weights were never loaded)."""
        fused = cls.__new__(cls)
        fused.weight, fused.sizes, fused._first, fused.quantized = None, list(sizes), None, quantized
        return fused

    def active(self) -> bool:
        """Whether to take the fused product: always once quantised; in float, while the layers still share the
        fused matrix, outside `upstream_products()` (upstream's bits need the separate F.linear) and with no
        gradients needed (the fused matrix is outside autograd)."""
        if self.quantized is not None:
            return True
        first = self._first
        return (not _UPSTREAM_PRODUCTS.get() and self.intact()
                and not (torch.is_grad_enabled() and first.weight.requires_grad))

    def intact(self) -> bool:
        """Whether the float layers still share the fused matrix."""
        return self.weight is not None and self._first.weight.data_ptr() == self.weight.data_ptr()

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.quantized(x) if self.quantized is not None else linear(x, self.weight)
        return out.split(self.sizes, dim=-1)


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
        self.fused_gate_up: FusedLinear | None = None

    def fuse_projections(self) -> None:
        self.fused_gate_up = FusedLinear([self.w1, self.w3])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_gate_up is not None and self.fused_gate_up.active():
            gate, up = self.fused_gate_up(x)
        else:
            gate, up = self.w1(x), self.w3(x)
        return self.w2(F.silu(gate) * up)
