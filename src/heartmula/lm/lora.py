"""LoRA adapters in PEFT's folder layout, merged into a HeartMuLa's weights at load.

An adapter folder holds `adapter_config.json` and `adapter_model.safetensors` as `peft` writes them
(`heartmula train lora`), with tensors named `base_model.model.<module>.lora_A.weight` [r, in] and
`...lora_B.weight` [out, r]. Merging adds `scale * alpha / r * B @ A` (alpha / sqrt(r) with rsLoRA) to each target
module's weight, so the merged model is a plain HeartMuLa: the fused projections, int8 layers and the native
decoding kernels read the merged weights exactly as they read a base model's. Reading needs no `peft`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from heartmula.errors import HeartMuLaError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_FILE = "heartmula_base.json"  # the config of the model an adapter was trained on (not part of PEFT's layout)
KEY_PREFIX = "base_model.model."
# The projections of every backbone and local-decoder layer: attention q, k, v, output and SwiGLU gate, down, up.
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "output_proj", "w1", "w2", "w3")
DEFAULT_PARTS = ("backbone", "decoder")


def target_pattern(targets: tuple[str, ...] = DEFAULT_TARGETS, parts: tuple[str, ...] = DEFAULT_PARTS) -> str:
    """A regular expression of the module names to adapt (PEFT's `target_modules` as a string: a full match)."""
    if not targets or not parts:
        raise HeartMuLaError("LoRA needs at least one target module name and one of backbone/decoder")
    unknown = sorted(set(parts) - set(DEFAULT_PARTS))
    if unknown:
        raise HeartMuLaError(f"LoRA parts {unknown} unknown: choose among {', '.join(DEFAULT_PARTS)}")
    return rf"({'|'.join(parts)})\.layers\.\d+\.(attn|mlp)\.({'|'.join(targets)})"


@dataclass(frozen=True)
class LoraAdapter:
    folder: Path
    config: dict  # adapter_config.json
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module name -> (A [r, in], B [out, r])
    base_config: dict | None  # heartmula_base.json, when the folder has one

    def scaling(self, module: str) -> float:
        """alpha / r of a module (PEFT's rank_pattern / alpha_pattern override the defaults by name suffix)."""
        rank = _pattern_value(self.config.get("rank_pattern") or {}, module, self.config["r"])
        alpha = _pattern_value(self.config.get("alpha_pattern") or {}, module, self.config["lora_alpha"])
        return alpha / (math.sqrt(rank) if self.config.get("use_rslora") else rank)

    @property
    def parameters(self) -> int:
        return sum(a.numel() + b.numel() for a, b in self.pairs.values())


def _pattern_value(patterns: dict, module: str, default):
    for key, value in patterns.items():
        if module == key or module.endswith("." + key):
            return value
    return default


def _check_supported(folder: Path, config: dict) -> None:
    if config.get("peft_type", "LORA") != "LORA":
        raise HeartMuLaError(f"{folder} holds a {config.get('peft_type')} adapter; only LoRA adapters merge")
    for flag, what in (("use_dora", "DoRA"), ("fan_in_fan_out", "fan-in-fan-out weights")):
        if config.get(flag):
            raise HeartMuLaError(f"{folder}: {what} adapters are not supported; train a plain LoRA")
    if config.get("modules_to_save"):
        raise HeartMuLaError(f"{folder}: adapters with modules_to_save are not supported")


def read_adapter(folder: str | os.PathLike) -> LoraAdapter:
    """Read and check a PEFT LoRA folder (not yet against a model: `merge_lora` does that)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise HeartMuLaError(f"LoRA adapter {folder} is not a folder")
    missing = [name for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if not (folder / name).is_file()]
    if missing:
        raise HeartMuLaError(f"{folder} is not a LoRA adapter folder: {' and '.join(missing)} missing (a folder "
                             "written by `heartmula train lora` or peft's save_pretrained holds both)")
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        tensors = load_file(str(folder / ADAPTER_WEIGHTS))
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError) as exc:
        raise HeartMuLaError(f"{folder}: unreadable adapter files ({exc})") from None
    if not isinstance(config, dict) or "r" not in config or "lora_alpha" not in config:
        raise HeartMuLaError(f"{folder / ADAPTER_CONFIG} lacks the LoRA fields r and lora_alpha")
    _check_supported(folder, config)
    pairs = _pair_tensors(folder, tensors)
    base_path = folder / BASE_FILE
    base_config = json.loads(base_path.read_text(encoding="utf-8")) if base_path.is_file() else None
    return LoraAdapter(folder, config, pairs, base_config)


def _pair_tensors(folder: Path, tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name = key.removeprefix(KEY_PREFIX)
        for half in ("lora_A", "lora_B"):
            marker = f".{half}."
            if marker in name:
                module = name.split(marker)[0]
                halves.setdefault(module, {})[half] = value
                break
        else:
            raise HeartMuLaError(f"{folder / ADAPTER_WEIGHTS}: tensor {key} is not a LoRA A or B matrix")
    pairs = {}
    for module, found in halves.items():
        if set(found) != {"lora_A", "lora_B"}:
            raise HeartMuLaError(f"{folder / ADAPTER_WEIGHTS}: {module} lacks its lora_A or lora_B matrix")
        pairs[module] = (found["lora_A"], found["lora_B"])
    if not pairs:
        raise HeartMuLaError(f"{folder / ADAPTER_WEIGHTS} holds no LoRA matrices")
    return pairs


def _check_base(adapter: LoraAdapter, model: nn.Module) -> None:
    if adapter.base_config is None:
        return
    config = model.config.to_dict()
    keys = ("backbone_config", "decoder_config", "audio_vocab_size", "audio_num_codebooks", "text_vocab_size")
    differs = [k for k in keys if adapter.base_config.get(k) != config.get(k)]
    if differs:
        raise HeartMuLaError(f"LoRA adapter {adapter.folder} was trained on another base model ({', '.join(differs)} "
                             "differ): load it onto the model it was trained from")


@torch.no_grad()
def merge_lora(model: nn.Module, adapter: LoraAdapter | str | os.PathLike, scale: float = 1.0) -> int:
    """Add the adapter's updates, times `scale`, into `model`'s weights in place; returns the modules changed.

    Call it before `fuse_projections` and int8 quantisation (`load_generator` does)."""
    if not isinstance(adapter, LoraAdapter):
        adapter = read_adapter(adapter)
    if not math.isfinite(scale):
        raise HeartMuLaError(f"--lora-scale must be a finite number, got {scale}")
    _check_base(adapter, model)
    modules = dict(model.named_modules())
    for name, (a, b) in adapter.pairs.items():
        module = modules.get(name)
        weight = getattr(module, "weight", None)
        if not isinstance(module, nn.Linear) or weight is None:
            raise HeartMuLaError(f"LoRA adapter {adapter.folder} adapts {name}, which this model does not have as a "
                                 "linear layer: load it onto the model it was trained from")
        if a.shape[1] != weight.shape[1] or b.shape[0] != weight.shape[0] or a.shape[0] != b.shape[1]:
            raise HeartMuLaError(f"LoRA adapter {adapter.folder} does not fit {name}: A {tuple(a.shape)}, B "
                                 f"{tuple(b.shape)}, weight {tuple(weight.shape)}; load it onto the model it was "
                                 "trained from")
    for name, (a, b) in adapter.pairs.items():
        weight = modules[name].weight
        delta = (b.float() @ a.float()) * (scale * adapter.scaling(name))
        weight.copy_((weight.float() + delta.to(weight.device)).to(weight.dtype))
    return len(adapter.pairs)
