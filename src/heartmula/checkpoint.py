"""Checkpoint folders: safetensors (single or sharded), strict key/shape validation, dtype policy.

Never unpickles anything and never touches the network.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from heartmula.errors import HeartMuLaError
from heartmula.files import atomic_output

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise HeartMuLaError(f"unknown dtype {name!r}; choose one of float32, bfloat16, float16") from None


# safetensors dtype names of floating-point tensors (what a weight may be stored as; loading casts it).
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4"})


@contextlib.contextmanager
def open_safetensors(path: Path, device: str | torch.device = "cpu") -> Iterator:
    """`safe_open`, with an unreadable file (truncated, corrupt header, not safetensors) reported by name."""
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            yield f
    except SafetensorError as exc:
        raise HeartMuLaError(
            f"{path} cannot be read as safetensors ({exc}): the file is truncated or corrupt; download it again"
        ) from None
    except OSError as exc:
        raise HeartMuLaError(f"{path} cannot be read: {exc.strerror or exc}") from None


def _read_index(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise HeartMuLaError(f"{index} is not a valid safetensors index ({exc!r})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise HeartMuLaError(f"{index} is not a valid safetensors index: weight_map must map names to file names")
    return weight_map


def safetensors_files(folder: str | os.PathLike) -> dict[str, Path]:
    """Map every tensor name to the file that holds it (single file, or shards listed in the index)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HeartMuLaError(f"checkpoint folder {folder} does not exist")
    index = folder / INDEX_FILE
    if index.is_file():
        files = {name: folder / shard for name, shard in _read_index(index).items()}
        missing = sorted({str(p) for p in files.values() if not p.is_file()})
        if missing:
            raise HeartMuLaError(f"{index} lists shard {missing[0]} which is missing; download the folder again")
        return files
    single = folder / SINGLE_FILE
    if single.is_file():
        with open_safetensors(single) as f:
            return {name: single for name in f.keys()}
    raise HeartMuLaError(f"no {SINGLE_FILE} or {INDEX_FILE} in {folder}")


@dataclass(frozen=True)
class TensorHeader:
    shape: tuple[int, ...]
    dtype: str  # safetensors name: "F32", "BF16", "I64", "BOOL", ...
    path: Path  # the file that holds it


def tensor_headers(folder: str | os.PathLike) -> dict[str, TensorHeader]:
    """Shape, dtype and file of every tensor, read from the file headers only (no tensor data is loaded)."""
    by_file: dict[Path, list[str]] = {}
    for name, path in safetensors_files(folder).items():
        by_file.setdefault(path, []).append(name)
    headers: dict[str, TensorHeader] = {}
    for path, names in by_file.items():
        with open_safetensors(path) as f:
            stored = set(f.keys())
            for name in names:
                if name not in stored:
                    raise HeartMuLaError(f"{Path(folder) / INDEX_FILE} places tensor {name!r} in {path}, which "
                                         "does not hold it; download the folder again")
                info = f.get_slice(name)
                headers[name] = TensorHeader(tuple(info.get_shape()), info.get_dtype(), path)
    return headers


def tensor_shapes(folder: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    return {name: header.shape for name, header in tensor_headers(folder).items()}


def validate_shapes(
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, tuple[int, ...]],
    folder: str | os.PathLike,
    ignore: tuple[str, ...] = (),
) -> None:
    """Raise naming the first missing, unexpected or mis-shaped tensor (sorted order, so messages are stable)."""

    def ignored(name: str) -> bool:
        return any(name.endswith(suffix) for suffix in ignore)

    for name in sorted(expected):
        if name not in found:
            raise HeartMuLaError(f"tensor {name!r} is missing from the checkpoint in {folder}")
        if tuple(found[name]) != tuple(expected[name]):
            raise HeartMuLaError(
                f"tensor {name!r} in {folder} has shape {list(found[name])}, the config expects "
                f"{list(expected[name])}; the config.json does not match the weights"
            )
    for name in sorted(found):
        if name not in expected and not ignored(name):
            raise HeartMuLaError(f"unexpected tensor {name!r} in {folder}; is this the right model folder?")


def validate_tensors(
    expected: Mapping[str, torch.Tensor], folder: str | os.PathLike, ignore: tuple[str, ...] = ()
) -> None:
    """Check the folder's tensors against a model's state dict built on the meta device: every name present with
    its shape (`validate_shapes`), and stored as a floating-point type wherever the model holds one."""
    headers = tensor_headers(folder)
    shapes = {name: tuple(t.shape) for name, t in expected.items()}
    validate_shapes(shapes, {name: h.shape for name, h in headers.items()}, folder, ignore)
    for name in sorted(expected):
        if expected[name].is_floating_point() and headers[name].dtype not in FLOAT_DTYPES:
            raise HeartMuLaError(
                f"tensor {name!r} in {headers[name].path} is stored as {headers[name].dtype}, not as a "
                "floating-point type: the file does not hold this model's weights"
            )


def load_state_dict(
    folder: str | os.PathLike,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    names: set[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Read tensors (all, or `names`) converting floating tensors to `dtype` one at a time to bound memory."""
    by_file: dict[Path, list[str]] = {}
    for name, path in safetensors_files(folder).items():
        if names is None or name in names:
            by_file.setdefault(path, []).append(name)
    state: dict[str, torch.Tensor] = {}
    for path, tensor_names in by_file.items():
        with open_safetensors(path, device) as f:
            for name in tensor_names:
                tensor = f.get_tensor(name)
                if dtype is not None and tensor.is_floating_point():
                    tensor = tensor.to(dtype)
                state[name] = tensor
    return state


def _own_storage(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor that is a block of a larger one (fused projections share one matrix) copied out: safetensors
    refuses tensors that share memory."""
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        return tensor.clone()
    return tensor


def save_state_dict(
    state: Mapping[str, torch.Tensor], folder: str | os.PathLike, max_shard_bytes: int | None = None
) -> None:
    """Write `model.safetensors`, or shards + index when `max_shard_bytes` is given (the Hugging Face layout)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: _own_storage(t.detach().contiguous().cpu()) for name, t in state.items()}
    if max_shard_bytes is None:
        with atomic_output(folder / SINGLE_FILE) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        shard_name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        with atomic_output(folder / shard_name) as tmp:
            save_file(shard, str(tmp), metadata={"format": "pt"})
        weight_map.update({name: shard_name for name in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    write_json(folder / INDEX_FILE, index)


def split_config(data: Mapping, fields, model_type: str) -> tuple[dict, dict]:
    """config.json -> (the dataclass fields we know, every other key kept to be written back unchanged).

    Refuses a config whose `model_type` names another model (a missing model_type is accepted)."""
    if not isinstance(data, Mapping):
        raise HeartMuLaError(f"the config is a JSON {type(data).__name__}, not an object of {model_type} fields")
    found = data.get("model_type", model_type)
    if found != model_type:
        raise HeartMuLaError(f"config model_type is {found!r}, not {model_type!r}")
    known = {k: v for k, v in data.items() if k in fields and k != "extra"}
    check_field_types(fields, known, f"{model_type} config")
    extra = {k: v for k, v in data.items() if k not in known}
    return known, extra


_JSON_KINDS = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "dict": (dict,), "list": (list,)}


def check_field_types(fields: Mapping, values: Mapping, what: str) -> None:
    """Refuse a config value whose JSON type does not fit its dataclass field (`fields`: `__dataclass_fields__`),
    so that a string where a size belongs fails here, named, and not deep inside a layer. Fields of other types
    (nested sections) are left to their own dataclass."""
    for name, value in values.items():
        if name not in fields:
            continue
        kinds = [part.strip().split("[")[0] for part in str(fields[name].type).split("|")]
        if value is None and "None" in kinds:
            continue
        allowed = tuple(t for kind in kinds for t in _JSON_KINDS.get(kind, ()))
        if not allowed:
            continue
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise HeartMuLaError(f"{what} field {name!r} is {value!r}; it must be of type {fields[name].type}")


def build_on_meta(build: Callable[[], torch.nn.Module], config_path: Path) -> torch.nn.Module:
    """`build()` on the meta device (no memory for weights), with a config whose numbers make no model (zero
    heads, negative sizes, widths that do not divide) reported by the file's name."""
    try:
        with torch.device("meta"):
            return build()
    except (RuntimeError, ValueError, TypeError, ZeroDivisionError, AttributeError) as exc:
        raise HeartMuLaError(f"{config_path} describes a model that cannot be built ({exc})") from None


def check_model_folder(folder, what: str, read_config: Callable[[Path], object],
                       build: Callable[[object], torch.nn.Module],
                       tensors_of: Callable[[torch.nn.Module], dict]) -> torch.nn.Module:
    """Check a model folder without reading any weights: config.json (`read_config`), then every tensor's name,
    shape and dtype against the model `build(config)` makes, whose checkpoint tensors are `tensors_of(model)`.
    Returns that model on the meta device; `what` names the kind of folder in the error."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise HeartMuLaError(f"{folder} is not a {what} folder: config.json is missing")
    config = read_config(config_path)
    model = build_on_meta(lambda: build(config), config_path)
    validate_tensors(tensors_of(model), folder)
    return model


def read_config_file(path: Path, from_dict: Callable[[dict], object]):
    """A config.json through `from_dict`, with every problem reported under the file's name."""
    data = read_json(path)
    try:
        return from_dict(data)
    except HeartMuLaError as exc:
        raise HeartMuLaError(f"{path}: {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise HeartMuLaError(f"{path} is not a valid config ({exc})") from None


def read_json(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise HeartMuLaError(f"{path} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise HeartMuLaError(f"{path} is not valid JSON ({exc})") from None


def write_json(path: str | os.PathLike, data: Mapping) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
