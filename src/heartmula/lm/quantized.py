"""HeartMuLa with int8 or int4 weights (`heartmula.nn.quantized`): the transform applied at load, and quantised model
folders.

Quantised: every transformer weight (q|k|v and gate|up fused, as `fuse_projections` does), the projection and the
heads, at the chosen width; the text and audio embeddings at int8 in both cases (a few rows are read per frame, so
their width buys memory, not speed). Kept in the activations' dtype: the norms, the unconditional text embedding and
the reference-audio projection.

The model is built one tensor at a time from a `read(name, index)` callable (a safetensors folder read lazily, a
float model in memory, or random values), so a 3B checkpoint is never held in float32.

A quantised folder holds config.json, quantization.json ({"format": "int4", ...}) and model.safetensors, in which
each quantised weight `NAME` is stored as `NAME.qdata`, `NAME.qscales` and (int4) `NAME.qoffsets`, in the layout of
`heartmula.nn.quantized`; `audio_head` is stored as the matrix [(K-1) V, decoder_dim] whose row (c - 1) V + x is
code x of codebook c.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from heartmula.checkpoint import build_on_meta, open_safetensors, safetensors_files
from heartmula.errors import HeartMuLaError
from heartmula.lm.config import HeartMuLaConfig
from heartmula.lm.model import CONFIG_FILE, HeartMuLa
from heartmula.nn.layers import FusedLinear
from heartmula.nn.memory import map_large_blocks_apart, release_free_memory
from heartmula.nn.quantized import QuantizedEmbedding, QuantizedLinear, RowSource, bits_of

QUANT_FILE = "quantization.json"
WEIGHTS_FILE = "model.safetensors"
SUFFIXES = (".qdata", ".qscales", ".qoffsets")
EMBEDDING_FORMAT = "int8"

# read(name, index) -> the float tensor `name`[index] (index: a tuple of slices and ints; () for all of it)
Reader = Callable[[str, tuple], torch.Tensor]


def is_quantized_folder(folder: str | os.PathLike) -> bool:
    return (Path(folder) / QUANT_FILE).is_file()


def _rows(read: Reader, name: str, shape: tuple[int, ...]) -> RowSource:
    """A float weight [rows, columns] as a RowSource; `audio_head` [K-1, d, V] as its heads' rows [(K-1) V, d]."""
    if name != "audio_head":
        return RowSource(shape[0], shape[1], lambda start, stop: read(name, (slice(start, stop),)))
    heads, dim, vocab = shape

    def head_rows(start: int, stop: int) -> torch.Tensor:
        pieces = []
        while start < stop:
            codebook, code = divmod(start, vocab)
            end = min(stop, (codebook + 1) * vocab) - codebook * vocab
            pieces.append(read(name, (codebook, slice(None), slice(code, end))).t())
            start += end - code
        return torch.cat(pieces)

    return RowSource(heads * vocab, dim, head_rows)


def quantizing(read: Reader, shapes: dict[str, tuple[int, ...]], quant: str) -> Callable[[str], QuantizedLinear]:
    """`layer_of(name)` for `install`: the float weight `name`, read a block of rows at a time, quantised."""

    def layer_of(name: str) -> QuantizedLinear:
        width = EMBEDDING_FORMAT if name.endswith("embeddings.weight") else quant
        return QuantizedLinear.from_weight(_rows(read, name, shapes[name]), bits_of(width))

    return layer_of


def install(model: HeartMuLa, layer_of: Callable[[str], QuantizedLinear], read: Reader,
            dtype: torch.dtype = torch.float32) -> HeartMuLa:
    """Replace the model's weights (on any device, or on meta) by `layer_of(name)` for each quantised weight and
    `read(name, ())` in `dtype` for the others; one weight at a time. Returns the model, in eval mode."""
    map_large_blocks_apart()  # the float blocks read and freed here must not stay resident in the heap
    for prefix, transformer in (("backbone", model.backbone), ("decoder", model.decoder)):
        for i, layer in enumerate(transformer.layers):
            base = f"{prefix}.layers.{i}"
            attn, mlp = layer.attn, layer.mlp
            qkv = [layer_of(f"{base}.attn.{p}.weight") for p in ("q_proj", "k_proj", "v_proj")]
            attn.fused_qkv = FusedLinear.of_quantized(QuantizedLinear.stacked(qkv), [q.out_features for q in qkv])
            attn.q_proj = attn.k_proj = attn.v_proj = None
            attn.output_proj = layer_of(f"{base}.attn.output_proj.weight")
            gate_up = [layer_of(f"{base}.mlp.{p}.weight") for p in ("w1", "w3")]
            mlp.fused_gate_up = FusedLinear.of_quantized(QuantizedLinear.stacked(gate_up),
                                                         [g.out_features for g in gate_up])
            mlp.w1 = mlp.w3 = None
            mlp.w2 = layer_of(f"{base}.mlp.w2.weight")
    model.projection = layer_of("projection.weight")
    model.codebook0_head = layer_of("codebook0_head.weight")
    model.audio_head_quantized = layer_of("audio_head")
    model.audio_head = torch.nn.Parameter(torch.empty(0, dtype=dtype), requires_grad=False)
    model.text_embeddings = QuantizedEmbedding(layer_of("text_embeddings.weight"), dtype)
    model.audio_embeddings = QuantizedEmbedding(layer_of("audio_embeddings.weight"), dtype)
    for name, _ in list(model.named_parameters()):
        if name != "audio_head":  # own storage: no view keeps a packed block of float weights alive
            owner, _, attribute = name.rpartition(".")
            value = read(name, ()).to(dtype).clone()
            setattr(model.get_submodule(owner), attribute, torch.nn.Parameter(value, requires_grad=False))
    release_free_memory()
    return model.eval()


def quantize_model(model: HeartMuLa, quant: str, dtype: torch.dtype | None = None) -> HeartMuLa:
    """The float model in memory, quantised in place (one weight at a time). Returns it."""
    state = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    if state["audio_head"].numel() == 0:
        raise HeartMuLaError("the model is quantised already")
    shapes = {name: tuple(t.shape) for name, t in state.items()}
    dtype = dtype or model.dtype

    def read(name: str, index: tuple) -> torch.Tensor:
        return state[name][index]

    return install(model, quantizing(read, shapes, quant), read, dtype)


def _folder_reader(folder: Path) -> Reader:
    files = safetensors_files(folder)

    def read(name: str, index: tuple) -> torch.Tensor:
        if name not in files:
            raise HeartMuLaError(f"{folder} has no tensor {name}: the folder is incomplete; write it again")
        with open_safetensors(files[name]) as handle:
            return handle.get_slice(name)[index] if index else handle.get_tensor(name)

    return read


def load_quantized(folder: str | os.PathLike, quant: str | None = None,
                   dtype: torch.dtype = torch.float32) -> HeartMuLa:
    """A model folder with quantised weights: a quantised folder as stored (`quant` None or its own format), or a
    float folder quantised to `quant` while it is read, one weight at a time."""
    folder = Path(folder)
    model = HeartMuLa.check_folder(folder) if not is_quantized_folder(folder) else _meta_model(folder)
    read = _folder_reader(folder)
    if not is_quantized_folder(folder):
        if quant is None:
            raise HeartMuLaError(f"{folder} holds float weights: say which quantisation (int8 or int4)")
        shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
        return install(model, quantizing(read, shapes, quant), read, dtype)
    stored = stored_format(folder)
    if quant is not None and quant != stored:
        raise HeartMuLaError(f"{folder} holds {stored} weights, not {quant}: drop --quant or quantise the float "
                             f"checkpoint again")
    return install(model, _stored_layers(folder, read), read, dtype)


def _meta_model(folder: Path) -> HeartMuLa:
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise HeartMuLaError(f"{folder} is not a HeartMuLa model folder: {CONFIG_FILE} is missing")
    config = HeartMuLaConfig.from_file(config_path)
    return build_on_meta(lambda: HeartMuLa(config), config_path)


def stored_format(folder: str | os.PathLike) -> str:
    """The format ("int8", "int4") of a quantised folder's weights."""
    folder = Path(folder)
    try:
        quant = json.loads((folder / QUANT_FILE).read_text(encoding="utf-8"))["format"]
    except (ValueError, KeyError, TypeError) as exc:
        raise HeartMuLaError(f"{folder / QUANT_FILE} is not valid ({exc!r}): write the folder again") from None
    bits_of(quant)
    return quant


def _stored_layers(folder: Path, read: Reader) -> Callable[[str], QuantizedLinear]:
    names = set(safetensors_files(folder))

    def layer_of(name: str) -> QuantizedLinear:
        data, scales, offsets = (name + suffix for suffix in SUFFIXES)
        missing = [key for key in (data, scales) if key not in names]
        values = read(data, ()) if data in names else None
        if values is not None and values.dtype == torch.uint8 and offsets not in names:
            missing.append(offsets)
        if missing:
            raise HeartMuLaError(f"{folder} is missing {', '.join(missing)}: the quantised folder is incomplete; "
                                 f"write it again with `heartmula model quantize`")
        stored_offsets = read(offsets, ()) if offsets in names else torch.empty(0)
        return QuantizedLinear(values, read(scales, ()), stored_offsets, name)

    return layer_of


def quantized_state(model: HeartMuLa) -> dict[str, torch.Tensor]:
    """The tensors of a quantised folder (see the module's docstring) from a quantised model."""
    state: dict[str, torch.Tensor] = {}

    def put(name: str, layer: QuantizedLinear) -> None:
        for suffix, tensor in zip(SUFFIXES, layer.native_tensors()):
            if tensor.numel():
                state[name + suffix] = tensor.contiguous()

    for prefix, transformer in (("backbone", model.backbone), ("decoder", model.decoder)):
        for i, layer in enumerate(transformer.layers):
            base = f"{prefix}.layers.{i}"
            for fused, names in ((layer.attn.fused_qkv, ("attn.q_proj", "attn.k_proj", "attn.v_proj")),
                                 (layer.mlp.fused_gate_up, ("mlp.w1", "mlp.w3"))):
                start = 0
                for name, size in zip(names, fused.sizes):
                    put(f"{base}.{name}.weight", fused.quantized.row_block(start, start + size))
                    start += size
            put(f"{base}.attn.output_proj.weight", layer.attn.output_proj)
            put(f"{base}.mlp.w2.weight", layer.mlp.w2)
    put("projection.weight", model.projection)
    put("codebook0_head.weight", model.codebook0_head)
    put("audio_head", model.audio_head_quantized)
    put("text_embeddings.weight", model.text_embeddings.table)
    put("audio_embeddings.weight", model.audio_embeddings.table)
    for name, param in model.named_parameters():
        if name != "audio_head":
            state[name] = param.detach().contiguous()
    return state


def save_quantized(model: HeartMuLa, folder: str | os.PathLike, quant: str) -> None:
    """Write a quantised folder: config.json, quantization.json, model.safetensors (renamed into place once whole)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{WEIGHTS_FILE}.", dir=folder)
    os.close(handle)
    try:
        save_file(quantized_state(model), staging, metadata={"format": "pt", "quantization": quant})
        os.replace(staging, folder / WEIGHTS_FILE)
    finally:
        Path(staging).unlink(missing_ok=True)
    model.config.save(folder / CONFIG_FILE)
    (folder / QUANT_FILE).write_text(json.dumps({"format": quant, "embeddings": EMBEDDING_FORMAT,
                                                 "layout": "heartmula.nn.quantized"}, indent=2) + "\n")
