"""Weight-only int8 and int4 quantisation for decoding on a CPU, read by the native kernels (`weight_matrix.h`).

Decoding reads every weight once or more per frame, so on a CPU its time is about the bytes read over the memory
bandwidth. Here a weight matrix [n, k] is stored as:

- int8: one signed byte per weight and a float16 scale per group of columns: `weight = scale * q`, |q| <= 127;
- int4: two weights per byte (q in 0..15) and a float16 scale and offset per group: `weight = scale * q + offset`,
  the group's minimum and maximum exact up to the float16 rounding. In each block of 64 columns, byte t holds
  column t (low nibble) and column t + 32 (high nibble).

A group is 128 columns (64 where the width is not a multiple of 128): int4 costs 4.25 bits per weight, int8 8.125.
Activations stay float32 (or the model's dtype): `QuantizedLinear` computes on the native kernel where it can be used
(few rows on a CPU), else as `F.linear` with the dequantised weight (`dequantize`, the reference).

Quantisation reads its input a block of rows at a time (`quantize` takes a `RowSource`), so a model held in
bfloat16 on disk, or made up row by row, never exists in float32 as a whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from heartmula.errors import HeartMuLaError
from heartmula.nn import native
from heartmula.nn.layers import NATIVE_ROWS

BLOCK = 64  # columns per packed block; a group is a multiple of it
GROUP_SIZE = 128  # columns per scale, where the width allows
ROWS_PER_CHUNK = 2048  # rows quantised at once (a float32 chunk of a 3072-wide matrix: 25 MB)
DEQUANTIZED_ROWS = 1024  # rows dequantised at once for a product of many rows (a prefill)
FORMATS = ("int8", "int4")
_EMPTY = torch.empty(0)


def bits_of(quant: str) -> int:
    """4 or 8 for "int4" or "int8"."""
    if quant not in FORMATS:
        raise HeartMuLaError(f"unknown quantisation {quant!r}: choose int8 or int4")
    return int(quant[3:])


def group_size_for(columns: int) -> int | None:
    """Columns per scale for a matrix `columns` wide: 128, else 64; None where neither divides it."""
    for size in (GROUP_SIZE, BLOCK):
        if columns % size == 0:
            return size
    return None


@dataclass(frozen=True)
class RowSource:
    """A matrix [rows, columns] read a block of rows at a time: `read(start, stop)` returns rows start..stop-1 in
    any float dtype (a slice of a tensor in memory, of a safetensors file, or freshly drawn random values)."""

    rows: int
    columns: int
    read: Callable[[int, int], torch.Tensor]

    @classmethod
    def of(cls, tensor: torch.Tensor) -> RowSource:
        return cls(tensor.shape[0], tensor.shape[1], lambda start, stop: tensor[start:stop])


def _half_at_least(values: torch.Tensor) -> torch.Tensor:
    """`values` in float16, rounded up where rounding to nearest went down (a scale then never clips the group's
    largest weight); zeros become 1 (a group of zeros: any scale)."""
    half = values.half()
    below = half.float() < values
    half = torch.where(below, torch.nextafter(half, torch.full_like(half, float("inf"))), half)
    return torch.where(half == 0, torch.ones_like(half), half)


def _quantize_chunk(chunk: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, ...]:
    rows, columns = chunk.shape
    grouped = chunk.float().reshape(rows, columns // group, group)
    if bits == 8:
        scales = _half_at_least(grouped.abs().amax(-1) / 127)
        q = torch.round(grouped / scales.float()[..., None]).clamp(-127, 127).to(torch.int8)
        return q.reshape(rows, columns), scales, _EMPTY
    low, high = grouped.amin(-1), grouped.amax(-1)
    offsets = low.half()
    offsets = torch.where(offsets.float() > low, torch.nextafter(offsets, torch.full_like(offsets, -float("inf"))),
                          offsets)  # at most the minimum: q >= 0 reaches it
    scales = _half_at_least((high - offsets.float()) / 15)
    q = torch.round((grouped - offsets.float()[..., None]) / scales.float()[..., None]).clamp(0, 15).to(torch.uint8)
    blocks = q.reshape(rows, columns // BLOCK, 2, BLOCK // 2)
    packed = blocks[:, :, 0] | (blocks[:, :, 1] << 4)
    return packed.reshape(rows, columns // 2), scales, offsets


def quantize(source: RowSource | torch.Tensor, bits: int, group: int | None = None) -> tuple[torch.Tensor, ...]:
    """A matrix [n, k] -> (data, scales, offsets): int8 [n, k] or packed int4 (uint8) [n, k / 2]; float16 scales
    [n, k / group]; float16 offsets of the same shape (int4) or an empty tensor (int8)."""
    if isinstance(source, torch.Tensor):
        source = RowSource.of(source)
    group = group or group_size_for(source.columns)
    if group is None or group % BLOCK or source.columns % group:
        raise HeartMuLaError(f"a {source.columns}-column matrix cannot be quantised in groups of {group}: the width "
                             f"must be a multiple of the group, and the group of {BLOCK}")
    groups = source.columns // group
    data = torch.empty(source.rows, source.columns * bits // 8, dtype=torch.int8 if bits == 8 else torch.uint8)
    scales = torch.empty(source.rows, groups, dtype=torch.float16)
    offsets = torch.empty(source.rows, groups, dtype=torch.float16) if bits == 4 else _EMPTY
    for start in range(0, source.rows, ROWS_PER_CHUNK):  # each chunk into its place: no second copy to join
        stop = min(start + ROWS_PER_CHUNK, source.rows)
        for whole, part in zip((data, scales, offsets), _quantize_chunk(source.read(start, stop), bits, group)):
            if part.numel():
                whole[start:stop] = part
    return data, scales, offsets


def dequantize(data: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """The float32 matrix [n, k] that (data, scales, offsets) stand for (the reference of the native products)."""
    rows, groups = scales.shape
    if data.dtype == torch.int8:
        values = data.float()
    else:
        blocks = data.reshape(rows, -1, BLOCK // 2)
        values = torch.stack([blocks & 15, blocks >> 4], dim=2).reshape(rows, -1).float()
    columns = values.shape[1]
    grouped = values.reshape(rows, groups, columns // groups).mul_(scales.float()[..., None])  # values: a new tensor
    if offsets.numel():
        grouped.add_(offsets.float()[..., None])
    return grouped.reshape(rows, columns)


def check_quantized(data: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor, name: str) -> None:
    """Raise HeartMuLaError unless (data, scales, offsets) form an int8 or int4 matrix as `quantize` writes them."""
    int4 = data.dtype == torch.uint8
    if data.dtype not in (torch.int8, torch.uint8) or data.dim() != 2:
        raise HeartMuLaError(f"{name}: quantised data must be a 2-d int8 or uint8 (int4) tensor, not {data.dtype}")
    columns = data.shape[1] * (2 if int4 else 1)
    if (scales.dtype != torch.float16 or scales.dim() != 2 or scales.shape[0] != data.shape[0] or scales.shape[1] == 0
            or columns % scales.shape[1] or (columns // scales.shape[1]) % BLOCK):
        raise HeartMuLaError(f"{name}: scales must be float16 [{data.shape[0]}, groups] with groups dividing "
                             f"{columns} columns into multiples of {BLOCK}, not {scales.dtype} {list(scales.shape)}")
    if int4 and (offsets.dtype != torch.float16 or offsets.shape != scales.shape):
        raise HeartMuLaError(f"{name}: int4 offsets must be float16 {list(scales.shape)}")


class QuantizedLinear(nn.Module):
    """A bias-free linear layer with int8 or int4 weights [out_features, in_features] (see the module's docstring)."""

    def __init__(self, data: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor, name: str = "weight"):
        super().__init__()
        check_quantized(data, scales, offsets, name)
        self.register_buffer("data", data)
        self.register_buffer("scales", scales)
        self.register_buffer("offsets", offsets)
        self.bits = 4 if data.dtype == torch.uint8 else 8
        self.out_features = data.shape[0]
        self.in_features = data.shape[1] * (2 if self.bits == 4 else 1)

    @classmethod
    def from_weight(cls, weight: RowSource | torch.Tensor, bits: int) -> QuantizedLinear:
        return cls(*quantize(weight, bits))

    @classmethod
    def stacked(cls, layers: list[QuantizedLinear]) -> QuantizedLinear:
        """One layer whose output rows are the layers' in turn (q|k|v, gate|up): groups are per row, so this is
        the quantisation of the stacked float weights."""
        offsets = [layer.offsets for layer in layers]
        return cls(torch.cat([layer.data for layer in layers]), torch.cat([layer.scales for layer in layers]),
                   torch.cat(offsets) if offsets[0].numel() else _EMPTY)

    def row_block(self, start: int, stop: int) -> QuantizedLinear:
        """Output rows start..stop-1 as a layer of their own (views: nothing is copied)."""
        offsets = self.offsets[start:stop] if self.offsets.numel() else _EMPTY
        return QuantizedLinear(self.data[start:stop], self.scales[start:stop], offsets)

    def native_tensors(self) -> list[torch.Tensor]:
        """(data, scales, offsets) as the native kernels read a weight matrix (`weight_matrix.h`)."""
        return [self.data, self.scales, self.offsets]

    def dequantized(self) -> torch.Tensor:
        return dequantize(self.data, self.scales, self.offsets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = None
        if (flat.device.type == "cpu" and flat.shape[0] <= NATIVE_ROWS and not torch.is_grad_enabled()
                and not torch.compiler.is_compiling()):
            kernels = native.kernels()
            if kernels is not None:
                out = kernels.few_rows_quantized_linear(flat.float().contiguous(), *self.native_tensors())
        if out is None:
            out = self._product_by_row_blocks(flat.float())
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def _product_by_row_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """x @ weight.T with the weight dequantised a block of output rows at a time: the float weights of a
        prefill's products never exist whole (a 3B layer's gate|up would take 200 MB, and three times that in
        intermediates)."""
        if self.out_features <= DEQUANTIZED_ROWS:
            return F.linear(x, self.dequantized().to(x.device))
        out = torch.empty(x.shape[0], self.out_features, device=x.device)
        for start in range(0, self.out_features, DEQUANTIZED_ROWS):
            block = self.row_block(start, min(start + DEQUANTIZED_ROWS, self.out_features))
            out[:, start : start + block.out_features] = F.linear(x, block.dequantized().to(x.device))
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int{self.bits}"


class QuantizedEmbedding(nn.Module):
    """An embedding table [num_embeddings, dim] stored as a `QuantizedLinear`'s weight; rows come out in `dtype`."""

    def __init__(self, table: QuantizedLinear, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.table = table
        self.dtype = dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        table = self.table
        kernels = native.kernels() if flat.device.type == "cpu" else None
        if kernels is not None:
            rows = kernels.dequantized_rows(*table.native_tensors(), flat.contiguous())
        else:
            offsets = table.offsets[flat] if table.offsets.numel() else _EMPTY
            rows = dequantize(table.data[flat], table.scales[flat], offsets)
        return rows.to(self.dtype).reshape(*ids.shape, -1)


def native_matrix(layer) -> list[torch.Tensor] | None:
    """A weight matrix as the native kernels take it: (data, scales, offsets) of a `QuantizedLinear`, or (weight,
    empty, empty) of a float weight tensor; None for anything else (e.g. FBGEMM's int8 layers)."""
    if isinstance(layer, QuantizedLinear):
        return layer.native_tensors()
    if isinstance(layer, torch.Tensor) and layer.is_contiguous():
        return [layer, _EMPTY, _EMPTY]
    return None
