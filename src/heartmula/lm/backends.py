"""How a loaded HeartMuLa computes while decoding: transforms applied once at load, and the native local frame.

The model (`heartmula.lm.model`) holds upstream's parameters and computes with torch. `prepare_for_decoding` then
applies the transforms of one weight format, named in `WEIGHT_FORMATS`:
- "float": q/k/v and gate/up as one product each (`FusedLinear`), weights in huge pages where the OS has them;
- "int8": the same, then int8 weight-only linear layers (`heartmula.nn.quant`).
A new format (another quantisation) is one more entry: a function that transforms the model in place.

Where the native kernels (`heartmula.nn.native`) can be used, the few-row products, the backbone step and the local
decoder's loop run on them; each piece checks at its call that its inputs are what the kernel reads (dtype, rows,
fused float layers), so no switch needs setting. Compat mode computes with F.linear (`upstream_products`), which no
native kernel reproduces.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from heartmula.errors import HeartMuLaError
from heartmula.lm.model import HeartMuLa
from heartmula.nn import native
from heartmula.nn.layers import Linear
from heartmula.nn.memory import pack_in_huge_pages
from heartmula.nn.quant import quantize_int8


def fuse_projections(model: HeartMuLa) -> None:
    """One product per layer for q, k, v and one for the gate and up projections, in backbone and decoder
    (`heartmula.nn.layers.FusedLinear`: same parameters, names and values; faster decoding)."""
    model.backbone.fuse_projections()
    model.decoder.fuse_projections()


def pack_weights_in_huge_pages(model: HeartMuLa) -> int:
    """Move the weights decoding streams (transformers, projection, heads, fused matrices) into one block of huge
    pages (`heartmula.nn.memory`; CPU, Linux). Same parameters, names and values. Returns the bytes moved."""
    holders: list[tuple[object, str]] = []
    for name, module in model.named_modules():
        if name.endswith("embeddings") or name == "muq_linear":  # a few rows read per frame, once per song
            continue
        holders += [(param, "data") for param in module.parameters(recurse=False)]
        for fused in (getattr(module, "fused_qkv", None), getattr(module, "fused_gate_up", None)):
            if fused is not None and fused.weight is not None:
                holders.append((fused, "weight"))
    return pack_in_huge_pages(holders)


def _float_weights(model: HeartMuLa) -> None:
    fuse_projections(model)
    pack_weights_in_huge_pages(model)


def _int8_weights(model: HeartMuLa) -> None:
    _float_weights(model)
    quantize_int8(model)


WEIGHT_FORMATS: dict[str, Callable[[HeartMuLa], None]] = {"float": _float_weights, "int8": _int8_weights}


def prepare_for_decoding(model: HeartMuLa, weights: str = "float") -> HeartMuLa:
    """Apply the transforms of weight format `weights` (in place); returns the model."""
    if weights not in WEIGHT_FORMATS:
        raise HeartMuLaError(f"unknown weight format {weights!r}; choose one of {', '.join(WEIGHT_FORMATS)}")
    WEIGHT_FORMATS[weights](model)
    return model


def local_frame_kernel(model: HeartMuLa, last_hidden: torch.Tensor):
    """The native kernels where they can compute codebooks 1..K-1 of a frame in one call (float32 or bfloat16
    few-row products on a CPU, row-major heads, float projection); None elsewhere."""
    if model.audio_head_int8 is not None or not isinstance(model.projection, Linear):
        return None
    heads = model.audio_head.transpose(1, 2)  # [K-1, V, d]: contiguous in the row-major layout of from_pretrained
    if (not heads.is_contiguous()
            or any(t.dtype != last_hidden.dtype
                   for t in (model.projection.weight, heads, model.audio_embeddings.weight))
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
    heads = model.audio_head.transpose(1, 2)
    return kernels.local_frame(
        last_hidden.contiguous(), first_codes, row_song, guidance_matrix, later_masks, noise, temperature,
        model.projection.weight, heads, model.audio_embeddings.weight, rope, decoder.native_tensors(decoder_cache),
        decoder.norm.scale, c.num_heads, c.num_kv_heads, c.norm_eps)
