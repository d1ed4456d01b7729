"""How a loaded HeartMuLa computes while decoding: transforms applied once at load, and the native local frame.

The model (`heartmula.lm.model`) holds upstream's parameters and computes with torch. `prepare_for_decoding` then
applies the transforms of one weight format, named in `WEIGHT_FORMATS`:
- "float": q/k/v and gate/up as one product each (`FusedLinear`), weights in huge pages where the OS has them;
- "int8-fbgemm": the same, then FBGEMM's int8 weight-only linear layers (`heartmula.nn.quant`);
- "int8", "int4": weight-only int8 / int4 weights on the native kernels (`heartmula.lm.quantized`), in huge pages.
  `load_weights` quantises a float folder to them while it reads it, one weight at a time, so the float model is
  never held whole; the transform quantises a float model already in memory.
A new format (another quantisation) is one more entry: a function that transforms the model in place.

Where the native kernels (`heartmula.nn.native`) can be used, the few-row products, the backbone step and the local
decoder's loop run on them; each piece checks at its call that its inputs are what the kernel reads (dtype, rows,
fused or quantised layers), so no switch needs setting. Compat mode computes with F.linear (`upstream_products`),
which no native kernel reproduces.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from heartmula.errors import HeartMuLaError
from heartmula.lm.model import HeartMuLa
from heartmula.lm.quantized import is_quantized_folder, load_quantized, quantize_model, stored_format
from heartmula.nn import native
from heartmula.nn.layers import computing_upstream_products
from heartmula.nn.memory import pack_in_huge_pages
from heartmula.nn.quant import quantize_int8
from heartmula.nn.quantized import QuantizedEmbedding, QuantizedLinear, native_matrix

# Formats whose weights the native kernels read quantised (`heartmula.nn.quantized`).
QUANTIZED_FORMATS = ("int8", "int4")


def fuse_projections(model: HeartMuLa) -> None:
    """One product per layer for q, k, v and one for the gate and up projections, in backbone and decoder
    (`heartmula.nn.layers.FusedLinear`: same parameters, names and values; faster decoding)."""
    model.backbone.fuse_projections()
    model.decoder.fuse_projections()


def pack_weights_in_huge_pages(model: HeartMuLa) -> int:
    """Move the weights decoding streams (transformers, projection, heads, fused matrices) into one block of huge
    pages (`heartmula.nn.memory`; CPU, Linux). Same parameters, names and values. Returns the bytes moved."""
    holders: list[tuple[object, str]] = []

    def add_quantized(layer: QuantizedLinear) -> None:
        holders.extend((layer, name) for name in ("data", "scales", "offsets"))

    for name, module in model.named_modules():
        if "embeddings" in name or name == "muq_linear":  # a few rows read per frame, once per song
            continue
        holders += [(param, "data") for param in module.parameters(recurse=False)]
        if isinstance(module, QuantizedLinear):
            add_quantized(module)
        for fused in (getattr(module, "fused_qkv", None), getattr(module, "fused_gate_up", None)):
            if fused is not None and fused.weight is not None:
                holders.append((fused, "weight"))
            if fused is not None and isinstance(fused.quantized, QuantizedLinear):
                add_quantized(fused.quantized)
    return pack_in_huge_pages(holders)


def _float_weights(model: HeartMuLa) -> None:
    fuse_projections(model)
    pack_weights_in_huge_pages(model)


def _fbgemm_int8_weights(model: HeartMuLa) -> None:
    _float_weights(model)
    quantize_int8(model)


def _quantized_weights(quant: str) -> Callable[[HeartMuLa], None]:
    def transform(model: HeartMuLa) -> None:
        if model.audio_head_quantized is None:  # a float model in memory; `load_weights` reads them quantised
            quantize_model(model, quant)
        pack_weights_in_huge_pages(model)

    return transform


WEIGHT_FORMATS: dict[str, Callable[[HeartMuLa], None]] = {
    "float": _float_weights,
    "int8-fbgemm": _fbgemm_int8_weights,
    **{quant: _quantized_weights(quant) for quant in QUANTIZED_FORMATS},
}


def weight_format_of(folder: str | os.PathLike, weights: str | None) -> str:
    """The weight format to load `folder` in: `weights`, or, where None, the format of a quantised folder, else
    "float". Raises where `weights` is unknown or the folder holds other quantised weights."""
    stored = stored_format(folder) if is_quantized_folder(folder) else None
    weights = weights or stored or "float"
    if weights not in WEIGHT_FORMATS:
        raise HeartMuLaError(f"unknown weight format {weights!r}; choose one of {', '.join(WEIGHT_FORMATS)}")
    if stored is not None and weights != stored:
        raise HeartMuLaError(f"{folder} holds {stored} weights, not {weights}: drop the weight format or load "
                             f"the float checkpoint")
    return weights


def load_weights(folder: str | os.PathLike, weights: str, dtype: torch.dtype, device) -> HeartMuLa:
    """The model of `folder` as weight format `weights` reads it, before `prepare_for_decoding`: float weights, or
    int8 / int4 ones quantised while read (a quantised folder as stored)."""
    if weights not in QUANTIZED_FORMATS:
        return HeartMuLa.from_pretrained(folder, dtype=dtype, device=device)
    if str(device) != "cpu":
        raise HeartMuLaError("int8 / int4 weights run on the CPU's native kernels: use --device cpu")
    return load_quantized(Path(folder), weights, dtype)


def prepare_for_decoding(model: HeartMuLa, weights: str = "float") -> HeartMuLa:
    """Apply the transforms of weight format `weights` (in place); returns the model."""
    if weights not in WEIGHT_FORMATS:
        raise HeartMuLaError(f"unknown weight format {weights!r}; choose one of {', '.join(WEIGHT_FORMATS)}")
    WEIGHT_FORMATS[weights](model)
    return model


def local_frame_weights(model: HeartMuLa, dtype: torch.dtype) -> list[list[torch.Tensor]] | None:
    """Projection [d, D], heads [(K-1) V, d] and audio embeddings [K V, D] as the native local frame reads them
    (`heartmula.nn.quantized.native_matrix`), or None where one of them is in another form (FBGEMM int8, a
    column-major head layout, float weights of a dtype other than `dtype`) or upstream's products are asked for."""
    if model.audio_head_int8 is not None or computing_upstream_products():
        return None
    projection = model.projection if isinstance(model.projection, QuantizedLinear) else model.projection.weight
    if model.audio_head_quantized is not None:
        heads = model.audio_head_quantized
    else:  # [K-1, V, d] in the row-major layout of from_pretrained
        heads = model.audio_head.transpose(1, 2)
        heads = heads.reshape(-1, heads.shape[-1]) if heads.is_contiguous() else None
    embeddings = model.audio_embeddings
    embeddings = embeddings.table if isinstance(embeddings, QuantizedEmbedding) else embeddings.weight
    matrices = [native_matrix(m) for m in (projection, heads, embeddings) if m is not None]
    if len(matrices) < 3 or any(m is None or (m[0].is_floating_point() and m[0].dtype != dtype) for m in matrices):
        return None
    return matrices


def local_frame_kernel(model: HeartMuLa, last_hidden: torch.Tensor):
    """The native kernels where they can compute codebooks 1..K-1 of a frame in one call (float32, bfloat16, int8
    or int4 few-row products on a CPU, `local_frame_weights`); None elsewhere."""
    if (local_frame_weights(model, last_hidden.dtype) is None
            or not model.decoder.native_step_applies(last_hidden[:, None])):  # one token per row after step 0
        return None
    return native.kernels()


def native_local_frame(kernels, model: HeartMuLa, last_hidden, first_codes, row_song, guidance_matrix, later_masks,
                       noise, temperature, decoder_cache) -> torch.Tensor:
    """Codebooks 1..K-1 [songs, K-1] in one native call (`decoding.cpp`'s local_frame: the local decoder loop of
    `heartmula.lm.generation` without its many small torch operations per codebook)."""
    decoder = model.decoder
    c = decoder.config
    if noise is None:  # the most likely codes
        noise = torch.empty(len(guidance_matrix), model.num_codebooks - 1, 0)
    positions = torch.arange(model.num_codebooks, device=last_hidden.device)
    rope = torch.view_as_real(decoder.rope_rows(positions))[0]
    return kernels.local_frame(
        last_hidden.contiguous(), first_codes, row_song, guidance_matrix, later_masks, noise, temperature,
        *local_frame_weights(model, last_hidden.dtype), rope, decoder.native_tensors(decoder_cache),
        decoder.norm.scale, c.num_heads, c.num_kv_heads, c.norm_eps)
