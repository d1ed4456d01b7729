"""Resumable training state shared by the trainers: optimizer tensors in safetensors (keyed by parameter name, so
no pickle) and the step + training config as JSON, both written atomically beside the model."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from heartmula.files import atomic_output

STATE_FILE = "train_state.safetensors"
STATE_JSON = "train_state.json"


def optimizer_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's state tensors keyed `<parameter name>::<slot>`."""
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{names[id(param)]}::{key}"] = value.detach().contiguous().cpu()
    return tensors


def write_training_state(out: Path, tensors: dict[str, torch.Tensor], step: int, config) -> None:
    """Write optimizer tensors keyed `<parameter name>::<slot>` (`optimizer_tensors`), the step and the config."""
    with atomic_output(out / STATE_FILE) as tmp:
        save_file(tensors, str(tmp))
    with atomic_output(out / STATE_JSON) as tmp:
        tmp.write_text(json.dumps({"step": step, "config": asdict(config)}, indent=2))


def save_training_state(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, config) -> None:
    write_training_state(out, optimizer_tensors(model, optimizer), step, config)


def load_training_state(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Restore the optimizer tensors saved in `out`; returns the step to continue from (0 when there is none).

    The saved tensors are whole CPU tensors; for a parameter sharded by FSDP (a DTensor) each rank keeps its own
    shard, so the state of any number of processes loads into any other. The moments go to their parameter's device
    (a run resumes on another device); the step count stays on the CPU, where torch's AdamW keeps it."""
    if not (out / STATE_FILE).is_file():
        return 0
    params = dict(model.named_parameters())
    for key, value in load_file(str(out / STATE_FILE)).items():
        name, slot = key.split("::")
        if slot != "step":
            value = _shard_like(value.to(params[name].device), params[name])
        optimizer.state[params[name]][slot] = value
    return int(json.loads((out / STATE_JSON).read_text())["step"])


def _shard_like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a whole optimizer tensor of a parameter sharded by FSDP (a DTensor); scalars (AdamW's
    step) and the tensors of whole parameters as they are."""
    if not torch.distributed.is_available():
        return value
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(param, DTensor) or value.shape != param.shape:
        return value
    return distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)


def trim_log(path: Path, step: int) -> None:
    """Drop the records of steps after `step` from a JSON-lines log (trained again after a resume)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    with atomic_output(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
