"""A Llama-style transformer (no token embedding, no output head) with a GQA-native static KV cache.

The cache keeps K/V per KV head ([batch, kv_heads, capacity, head_dim]), never expanded to all query heads, and
attention reads only the filled part of it. A single-token step folds the query heads of each KV group into the
sequence axis, so grouped-query attention needs no copy at all.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from heartmula.nn import native
from heartmula.nn.layers import NATIVE_ROWS, FusedLinear, Linear, RMSNorm, SwiGLU
from heartmula.nn.quantized import QuantizedLinear, native_matrix
from heartmula.nn.rope import apply_rope, inverse_frequencies, rope_table


@dataclass(frozen=True)
class TransformerConfig:
    num_layers: int
    num_heads: int
    num_kv_heads: int
    embed_dim: int
    intermediate_dim: int
    max_seq_len: int
    rope_base: float = 500_000.0
    scale_factor: float | None = 32.0  # Llama-3 RoPE scaling; None or 0 = plain RoPE
    norm_eps: float = 1e-5
    head_dim: int | None = None  # default embed_dim // num_heads

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.head_dim is None and self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not a multiple of num_heads {self.num_heads}")

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.embed_dim // self.num_heads

    def to_dict(self) -> dict:
        return asdict(self)


class KVCache:
    """Static K/V buffers of one attention layer [batch, kv_heads, capacity, head_dim]; the caller tracks which
    slots are filled and passes the cache into every forward call."""

    def __init__(self, batch: int, kv_heads: int, capacity: int, head_dim: int, dtype, device):
        shape = (batch, kv_heads, capacity, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def keep_rows(self, index: torch.Tensor) -> None:
        """Keep the batch rows `index` [b'] (in that order)."""
        self.k, self.v = self.k[index], self.v[index]


class Attention(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.dim_per_head
        self.q_proj = Linear(config.embed_dim, self.num_heads * self.head_dim, bias=False)
        self.k_proj = Linear(config.embed_dim, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = Linear(config.embed_dim, self.num_kv_heads * self.head_dim, bias=False)
        self.output_proj = Linear(self.num_heads * self.head_dim, config.embed_dim, bias=False)
        self.fused_qkv: FusedLinear | None = None

    def fuse_projections(self) -> None:
        self.fused_qkv = FusedLinear([self.q_proj, self.k_proj, self.v_proj])

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.fused_qkv is not None and self.fused_qkv.active():
            return self.fused_qkv(x)
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        start: int | None,
        key_mask: torch.Tensor | None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """x [b, s, d]; rope rows [b or 1, s, hd/2] (complex); `start` = first slot of `cache` to write (None: no
        cache).

        key_mask [b, keys] (True = may attend) marks padding slots of left-padded batches; causality inside the
        new block is added here.
        """
        b, s, _ = x.shape
        q, k, v = self.project_qkv(x)
        q = apply_rope(q.view(b, s, self.num_heads, self.head_dim), rope)
        k = apply_rope(k.view(b, s, self.num_kv_heads, self.head_dim), rope)
        v = v.view(b, s, self.num_kv_heads, self.head_dim)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        if start is not None:
            end = start + s
            cache.k[:b, :, start:end] = k
            cache.v[:b, :, start:end] = v
            k, v = cache.k[:b, :, :end], cache.v[:b, :, :end]
        else:
            start = 0
        groups = self.num_heads // self.num_kv_heads
        if s == 1:
            # One new token sees every filled slot: fold the query heads of a group into the sequence axis.
            q = q.view(b, self.num_kv_heads, groups, self.head_dim)
            mask = None if key_mask is None else key_mask[:, None, None, :]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            return self.output_proj(out.reshape(b, 1, self.num_heads * self.head_dim))
        q = q.transpose(1, 2)
        keys = k.shape[2]
        query_slots = torch.arange(start, start + s, device=x.device)
        causal = torch.arange(keys, device=x.device)[None, :] <= query_slots[:, None]
        mask = causal[None, None] if key_mask is None else causal[None, None] & key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=groups > 1)
        return self.output_proj(out.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim))


class TransformerLayer(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.sa_norm = RMSNorm(config.embed_dim, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.embed_dim, config.norm_eps)
        self.mlp = SwiGLU(config.embed_dim, config.intermediate_dim)

    def runs_on_few_row_products(self, dtype: torch.dtype) -> bool:
        """Whether every product of the layer is a few-row product of `dtype` or int8 / int4 weights
        (`heartmula.nn.quantized`) with q/k/v and gate/up fused (not FBGEMM's int8 layers, not upstream's separate
        F.linear products of compat mode), and its norms are of `dtype`."""
        fused = (self.attn.fused_qkv, self.mlp.fused_gate_up)
        return (all(f is not None and (isinstance(f.quantized, QuantizedLinear)
                                       or (f.quantized is None and f.active() and f.weight.dtype == dtype))
                    for f in fused)
                and all(isinstance(m, QuantizedLinear) or (isinstance(m, Linear) and m.weight.dtype == dtype)
                        for m in (self.attn.output_proj, self.mlp.w2))
                and self.sa_norm.scale.dtype == dtype and self.mlp_norm.scale.dtype == dtype)

    def native_tensors(self, cache: KVCache) -> list[torch.Tensor]:
        """The layer's norms, weights (3 tensors each: `heartmula.nn.quantized.native_matrix`) and its `cache`, 16
        in the order of `decoding.cpp`."""
        attn, mlp = self.attn, self.mlp

        def matrix(fused_or_linear) -> list[torch.Tensor]:
            if isinstance(fused_or_linear, FusedLinear):
                quantized = fused_or_linear.quantized
                return native_matrix(quantized if quantized is not None else fused_or_linear.weight)
            return native_matrix(fused_or_linear if isinstance(fused_or_linear, QuantizedLinear)
                                 else fused_or_linear.weight)

        return [self.sa_norm.scale, *matrix(attn.fused_qkv), *matrix(attn.output_proj), self.mlp_norm.scale,
                *matrix(mlp.fused_gate_up), *matrix(mlp.w2), cache.k, cache.v]

    def forward(self, x, rope, start, key_mask, cache=None):
        h = x + self.attn(self.sa_norm(x), rope, start, key_mask, cache)
        return h + self.mlp(self.mlp_norm(h))


class Transformer(nn.Module):
    """Embeddings in, final-normed hidden states out."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(TransformerLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.embed_dim, config.norm_eps)
        self._rope: torch.Tensor | None = None  # built on first use on the right device; not in checkpoints

    def rope_rows(self, positions: torch.Tensor) -> torch.Tensor:
        """RoPE rows for positions [s] or [b, s] -> [1 or b, s, hd/2] (complex)."""
        if self._rope is None or self._rope.device != positions.device:
            c = self.config
            inv = inverse_frequencies(c.dim_per_head, c.rope_base, c.scale_factor).to(positions.device)
            self._rope = rope_table(inv, c.max_seq_len)
        rows = self._rope[positions]
        return rows if positions.dim() == 2 else rows.unsqueeze(0)

    def fuse_projections(self) -> None:
        """One product for each layer's q, k, v and one for its gate and up projections (`FusedLinear`)."""
        for layer in self.layers:
            layer.attn.fuse_projections()
            layer.mlp.fuse_projections()

    def new_cache(self, batch: int, capacity: int, dtype: torch.dtype, device) -> list[KVCache]:
        """Empty K/V buffers for every layer, to pass into `forward`."""
        c = self.config
        return [KVCache(batch, c.num_kv_heads, capacity, c.dim_per_head, dtype, device) for _ in self.layers]

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        start: int | None = None,
        key_mask: torch.Tensor | None = None,
        cache: list[KVCache] | None = None,
    ) -> torch.Tensor:
        """x [b, s, d]; positions [s] or [b, s] (RoPE); `start`: slot of x[:, 0] in `cache` (one KVCache per layer;
        None = no cache, causal)."""
        rope = self.rope_rows(positions)
        if start is not None and self.native_step_applies(x):
            kernels = native.kernels()
            if kernels is not None:
                return self._native_step(kernels, x, rope, start, key_mask, cache)
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, start, key_mask, None if cache is None else cache[i])
        return self.norm(x)

    def native_step_applies(self, x: torch.Tensor) -> bool:
        """Whether a decoding step may run as one native call (`decoding.cpp`): a few float32 or bfloat16 CPU rows,
        no autograd, no compiled graph, and every layer on its fused products of x's type or of int8 / int4 weights
        (so not in compat mode, not FBGEMM's int8)."""
        return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
                and x.shape[0] * x.shape[1] <= NATIVE_ROWS and not torch.is_grad_enabled()
                and not torch.compiler.is_compiling() and self.norm.scale.dtype == x.dtype
                and all(layer.runs_on_few_row_products(x.dtype) for layer in self.layers))

    def native_tensors(self, cache: list[KVCache]) -> list[torch.Tensor]:
        """The weights of every layer and its `cache` as the native kernels read them (16 per layer, `decoding.cpp`)."""
        return [tensor for layer, layer_cache in zip(self.layers, cache)
                for tensor in layer.native_tensors(layer_cache)]

    def _native_step(self, kernels, x, rope, start, key_mask, cache) -> torch.Tensor:
        c = self.config
        return kernels.transformer_step(x.contiguous(), torch.view_as_real(rope), key_mask, start,
                                        self.native_tensors(cache), self.norm.scale, c.num_heads, c.num_kv_heads,
                                        c.norm_eps)
