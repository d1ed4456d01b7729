"""Where a trainer runs and in which precision: `--device auto|cpu|cuda|cuda:N`, `--precision float32|bfloat16`.

- device `auto` is CUDA when torch sees a GPU, else the CPU. Under torchrun each process takes the GPU of its
  LOCAL_RANK (`cuda` and `auto` both become cuda:LOCAL_RANK), which is also the GPU that the NCCL process group
  of `heartmula.train.distributed.session` uses.
- precision `bfloat16` is mixed precision: the weights and the optimizer's moments stay float32 and the forward
  pass runs under `torch.autocast(dtype=bfloat16)` (matrix products in bfloat16, losses and reductions in float32).
  With FSDP the sharded weights are also gathered in bfloat16 and the gradients reduced in float32
  (`MixedPrecisionPolicy`); autocast stays on there, as it keeps the losses in float32 (FSDP's policy alone runs
  the cross-entropy in bfloat16, whose steps near a loss of 8 are 1/16). The default is bfloat16 on CUDA and
  float32 on the CPU; bfloat16 autocast runs on the CPU too (the tests train that way).
- checkpoints are float32 CPU tensors whatever the device and precision, so a run resumes on any device.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from heartmula.errors import HeartMuLaError

DEVICES = ("auto", "cpu", "cuda", "cuda:N")
PRECISIONS = ("float32", "bfloat16")


@dataclass(frozen=True)
class Placement:
    """A trainer's device and precision (`placement` resolves the command-line choices)."""

    device: torch.device
    precision: str  # "float32" or "bfloat16" (mixed precision, float32 weights)

    @property
    def mixed(self) -> bool:
        return self.precision == "bfloat16"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's context: bfloat16 autocast for mixed precision, nothing for float32."""
        if not self.mixed:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def describe(self) -> str:
        if self.mixed:
            return f"device {self.device}, precision bfloat16 (mixed: float32 weights and optimizer state)"
        return f"device {self.device}, precision float32"


def _under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def training_device(name: str = "auto") -> torch.device:
    """The torch device of `--device NAME`; under torchrun a CUDA choice is this process's GPU (LOCAL_RANK)."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda" and not name.startswith("cuda:"):
        raise HeartMuLaError(f"--device {name!r}: choose auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise HeartMuLaError(f"--device {name}: torch sees no CUDA GPU here (torch {torch.__version__}); use "
                             "--device cpu, or install a CUDA build of torch on a machine with a GPU")
    if _under_torchrun():
        if name != "cuda":
            raise HeartMuLaError(f"--device {name}: under torchrun each process uses the GPU of its LOCAL_RANK; "
                                 "pass --device cuda (or auto)")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise HeartMuLaError(f"the torchrun process of LOCAL_RANK {local_rank} has no GPU of its own: torch sees "
                                 f"{torch.cuda.device_count()}; start at most that many (--nproc_per_node)")
        return torch.device("cuda", local_rank)
    device = torch.device(name)
    index = 0 if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise HeartMuLaError(f"--device {name}: torch sees {torch.cuda.device_count()} GPU(s), cuda:0 to "
                             f"cuda:{torch.cuda.device_count() - 1}")
    return torch.device("cuda", index)


def training_precision(name: str, device: torch.device) -> str:
    """`--precision NAME` checked; `auto` is bfloat16 on CUDA and float32 on the CPU."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return "bfloat16" if device.type == "cuda" else "float32"
    if name not in PRECISIONS:
        raise HeartMuLaError(f"--precision {name!r}: choose float32 or bfloat16")
    if name == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise HeartMuLaError(f"{torch.cuda.get_device_name(device)} has no bfloat16 support: use --precision "
                             "float32")
    return name


def placement(device: str = "auto", precision: str = "auto") -> Placement:
    """The resolved `--device` and `--precision` of a training run (HeartMuLaError for an impossible choice)."""
    resolved = training_device(device)
    return Placement(resolved, training_precision(precision, resolved))


def to_cpu(state):
    """A nested dict/list of tensors (an optimizer's state dict) with every tensor copied to the CPU."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {key: to_cpu(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(to_cpu(value) for value in state)
    return state


__all__ = ["DEVICES", "PRECISIONS", "Placement", "placement", "to_cpu", "training_device", "training_precision"]
