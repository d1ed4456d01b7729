"""Training on several processes: `torchrun --nproc_per_node N -m heartmula train lm|clap|codec ...`.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `session(device)` joins the process
group through env:// (gloo for the CPU, NCCL for CUDA, where each process uses the GPU of its LOCAL_RANK:
`heartmula.train.device`) and leaves it at the end. Without WORLD_SIZE > 1 nothing is started and
`current_ranks()` is the single process (rank 0 of 1), so the trainers have one code path.

How the trainers use it:
- every rank draws the same global batch with the same seeded RNG and computes its slice `batch[rank::world]`
  (`Ranks.slice`); the rank builds and runs only its own samples' tensors, and one step with N processes equals
  one step of one process with the same global batch;
- gradients are averaged by DistributedDataParallel around a `LossModule` (the trainers' losses call several
  submodules, and DDP synchronises only what runs inside its wrapped module's forward);
- rank 0 alone writes checkpoints, logs and reports; checkpoints hold the whole model and optimizer state keyed by
  parameter name, so a run resumes with any number of processes;
- `shard_fully` is the FSDP plan (FSDP2 `fully_shard`, one unit per transformer layer) for models that do not fit
  one device, e.g. the 3B LM: `data_parallel(..., fully_sharded=True)` (`heartmula train lm --fsdp`) shards the
  parameters, gradients and optimizer state over the ranks instead of replicating them. `full_state` gathers the
  whole model and optimizer state on rank 0's CPU, so its checkpoints are those of one process.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from heartmula.errors import HeartMuLaError

# Joining the group and every collective wait at most this long for the other ranks: a missing or stuck rank ends
# the run with an error instead of a hang.
COLLECTIVE_TIMEOUT = timedelta(minutes=float(os.environ.get("HEARTMULA_DIST_TIMEOUT_MINUTES", "30")))


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, logs and progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def slice(self, batch: list) -> list:
        """This rank's share of a global batch (every world-th item from its rank)."""
        return batch[self.rank :: self.world]

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.world:
            raise HeartMuLaError(f"--batch-size {batch_size} is the global batch; it must be a multiple of the "
                                 f"{self.world} processes")


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current_ranks() -> Ranks:
    """This process's place in the running group (rank 0 of 1 when no group runs)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


@contextlib.contextmanager
def session(device: str = "cpu") -> Iterator[Ranks]:
    """Join the torchrun process group for the duration of a command (a no-op for one process)."""
    if not launched_by_torchrun() or dist.is_initialized():
        yield current_ranks()
        return
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise HeartMuLaError(f"WORLD_SIZE is set but {name} is not: start several processes with torchrun")
    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, init_method="env://", timeout=COLLECTIVE_TIMEOUT)
    try:
        yield current_ranks()
    finally:
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    """Where the tensors of a collective must be: NCCL reduces CUDA tensors only (this process's GPU), gloo CPU
    tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if current_ranks().distributed:
        dist.barrier()


@contextlib.contextmanager
def main_rank_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. writes a cache or a tokenizer), then the other ranks (which read it)."""
    ranks = current_ranks()
    if not ranks.is_main:
        barrier()
    yield
    if ranks.is_main:
        barrier()


def sum_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `values` over the ranks (the values themselves for one process)."""
    if not current_ranks().distributed:
        return values.detach().clone()
    reduced = values.detach().to(_collective_device(), copy=True)
    dist.all_reduce(reduced)
    return reduced.to(values.device)


def mean_across_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the ranks (for logging a loss that every rank computed on its slice)."""
    if not current_ranks().distributed:
        return values
    total = sum_across_ranks(torch.tensor(list(values.values()), dtype=torch.float64))
    return {key: float(v) / current_ranks().world for key, v in zip(values, total)}


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` [n, ...] concatenated on dim 0 in rank order, without gradients."""
    if not current_ranks().distributed:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(current_ranks().world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def in_batch_order(gathered: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """Rows gathered in rank order (rank 0's slice, rank 1's, ...) put back in the global batch's order: row i of
    the batch is row i // world of rank i % world's slice."""
    if not ranks.distributed:
        return gathered
    per_rank = gathered.shape[0] // ranks.world
    order = torch.tensor([(i % ranks.world) * per_rank + i // ranks.world for i in range(gathered.shape[0])])
    return gathered[order]


class _GatherRows(torch.autograd.Function):
    """all_gather on dim 0 whose backward hands each rank the sum over ranks of the gradient of its own rows (each
    rank's loss reads every rank's rows)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ranks = current_ranks()
        ctx.rows, ctx.rank = tensor.shape[0], ranks.rank
        parts = [torch.empty_like(tensor) for _ in range(ranks.world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `tensor` [n, ...] on dim 0, in rank order; gradients flow back to each rank's part
    (for losses over the whole batch, such as a contrastive loss's in-batch negatives). With DDP's average over the
    ranks, the gradient is that of one process computing the loss on the whole batch."""
    if not current_ranks().distributed:
        return tensor
    return _GatherRows.apply(tensor)


class LossModule(nn.Module):
    """`loss_fn(model, *args)` as the forward of a module that holds `model`, so that DDP and FSDP see the whole
    step: their hooks run around forward, while the trainers' losses call several submodules of the model."""

    def __init__(self, model: nn.Module, loss_fn: Callable):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, *args, **kwargs):
        return self.loss_fn(self.model, *args, **kwargs)


def data_parallel(model: nn.Module, loss_fn: Callable, ranks: Ranks, find_unused_parameters: bool = False,
                  fully_sharded: bool = False, bfloat16: bool = False) -> nn.Module:
    """A module whose forward is `loss_fn(model, ...)`: wrapped in DistributedDataParallel when several processes
    run, as is otherwise. `find_unused_parameters` for models with trainable parameters that a step may not use
    (DDP then marks them ready itself). `fully_sharded`: FSDP (`shard_fully`) instead of DDP; `model`'s parameters
    become shards (DTensors), so build the optimizer after this call, and every rank must then run every forward
    of the returned module (also for validation) and every `full_state`. `bfloat16` (with `fully_sharded`):
    FSDP's mixed precision, the weights gathered in bfloat16 and the gradients reduced in float32."""
    step = LossModule(model, loss_fn)
    if not ranks.distributed:
        return step
    device = next(model.parameters()).device
    if fully_sharded:
        from torch.distributed.device_mesh import init_device_mesh

        return shard_fully(step, mesh=init_device_mesh(device.type, (ranks.world,)), bfloat16=bfloat16)
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [ranks.local_rank] if device.type == "cuda" else None
    return DistributedDataParallel(step, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The whole (unsharded) state dict of a model sharded by `data_parallel(..., fully_sharded=True)` and its
    optimizer's state per parameter name ({name: {slot: tensor}}), on the CPU of rank 0; the other ranks get empty
    dicts. A collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=options)
    return weights, optimizer_state.get("state", {})


def full_value(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's whole value (a collective, e.g. the gradient norm of a sharded model); other tensors as they are."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def transformer_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a model (members of every nn.ModuleList named `layers`): FSDP's units."""
    return [layer for name, module in model.named_modules() if name.endswith("layers")
            and isinstance(module, nn.ModuleList) for layer in module]


def shard_fully(model: nn.Module, mesh=None, bfloat16: bool = False) -> nn.Module:
    """FSDP (fully_shard): each transformer layer is one unit, the rest (embeddings, heads) the root unit. Works on
    the meta device, so the plan of a model too big for one host can be checked before any weight exists.
    `bfloat16`: the sharded weights stay float32 (what the optimizer updates); each unit gathers them in bfloat16
    for its forward and backward, and reduces the gradients in float32 (FSDP's MixedPrecisionPolicy)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bfloat16 else \
        MixedPrecisionPolicy()
    for layer in transformer_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    return fully_shard(model, mesh=mesh, mp_policy=policy)


__all__ = ["COLLECTIVE_TIMEOUT", "LossModule", "Ranks", "barrier", "current_ranks", "data_parallel", "full_state",
           "full_value", "gather", "gather_with_grad", "in_batch_order", "launched_by_torchrun", "main_rank_first",
           "mean_across_ranks", "session", "shard_fully", "sum_across_ranks", "transformer_layers"]
