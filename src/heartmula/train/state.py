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


def save_training_state(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, config) -> None:
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{names[id(param)]}::{key}"] = value.detach().contiguous().cpu()
    with atomic_output(out / STATE_FILE) as tmp:
        save_file(tensors, str(tmp))
    with atomic_output(out / STATE_JSON) as tmp:
        tmp.write_text(json.dumps({"step": step, "config": asdict(config)}, indent=2))


def load_training_state(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Restore the optimizer tensors saved in `out`; returns the step to continue from (0 when there is none)."""
    if not (out / STATE_FILE).is_file():
        return 0
    params = dict(model.named_parameters())
    for key, value in load_file(str(out / STATE_FILE)).items():
        name, slot = key.split("::")
        optimizer.state[params[name]][slot] = value
    return int(json.loads((out / STATE_JSON).read_text())["step"])


def trim_log(path: Path, step: int) -> None:
    """Drop the records of steps after `step` from a JSON-lines log (trained again after a resume)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    with atomic_output(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
