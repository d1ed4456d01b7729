"""Training on several processes (torchrun, gloo on CPU): two processes give the losses of one process with the same
global batch, with DDP and with FSDP (`--fsdp`, also in bfloat16); a run resumes with another number of processes;
the FSDP plan of the 3B LM on the meta device."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from heartmula.cli import main
from heartmula.train.distributed import Ranks

ROOT = Path(__file__).resolve().parents[2]


def _args(cache: Path, out: Path, steps: int, tokenizer: Path | None, eval_every: int = 10) -> list[str]:
    args = ["train", "lm", str(cache), "--out", str(out), "--preset", "tiny", "--steps", str(steps),
            "--batch-size", "4", "--context", "96", "--min-frames", "8", "--save-every", "5", "--eval-every",
            str(eval_every),
            "--warmup-steps", "3", "--vocab-size", "300", "--threads", "1", "--quiet"]
    return args + (["--tokenizer", str(tokenizer)] if tokenizer else [])


def _torchrun(processes: int, args: list[str]) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(processes), "-m", "heartmula", *args]
    # its own process group, so that a timeout ends torchrun's workers too, not only torchrun
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    assert process.returncode == 0, stderr[-3000:]
    assert stdout.count("trained") == 1, stdout  # only rank 0 reports


def _losses(out: Path) -> np.ndarray:
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, len(records) + 1))
    return np.array([[r["loss"], r["c0"], r["dec"], r["grad_norm"]] for r in records])


def test_two_gloo_processes_train_as_one_with_the_same_global_batch(cache, tmp_path):
    single = tmp_path / "single"
    assert main(_args(cache, single, 20, None)) == 0
    tokenizer = single / "tokenizer.json"
    pair = tmp_path / "pair"
    _torchrun(2, _args(cache, pair, 20, tokenizer))
    np.testing.assert_allclose(_losses(pair), _losses(single), atol=2e-3)
    assert _losses(single)[-1, 0] < _losses(single)[0, 0]
    from safetensors.torch import load_file

    weights = [load_file(str(next((o / "HeartMuLa-oss-3B").glob("*.safetensors")))) for o in (single, pair)]
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, atol=1e-4, rtol=1e-3)

    # Resume with another world size: 2 processes to step 10, then 1 process to 20, equals 1 + 1.
    split, whole = tmp_path / "split", tmp_path / "whole"
    _torchrun(2, _args(cache, split, 10, tokenizer))
    assert main(_args(cache, split, 20, tokenizer)) == 0
    assert main(_args(cache, whole, 10, tokenizer)) == 0
    assert main(_args(cache, whole, 20, tokenizer)) == 0
    np.testing.assert_allclose(_losses(split), _losses(whole), atol=2e-3)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(next((out / "HeartMuLa-oss-3B").glob("*.safetensors"))))


def test_fsdp_on_two_gloo_processes_trains_as_one_process_and_saves_whole_checkpoints(cache, tmp_path):
    from heartmula.lm.generation import SamplingParams, SongRequest
    from heartmula.lm.pretrained import load_generator

    single = tmp_path / "single"
    assert main(_args(cache, single, 10, None, eval_every=4)) == 0
    tokenizer = single / "tokenizer.json"
    sharded = tmp_path / "sharded"
    _torchrun(2, _args(cache, sharded, 10, tokenizer, eval_every=4) + ["--fsdp"])
    np.testing.assert_allclose(_losses(sharded), _losses(single), atol=2e-3)
    validation = [{r["step"]: r["val_loss"] for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())
                   if "val_loss" in r} for out in (single, sharded)]
    assert list(validation[1]) == [4, 8, 10]  # through the sharded model, during the run too
    np.testing.assert_allclose(list(validation[1].values()), list(validation[0].values()), atol=2e-3)
    expected = _weights(single)
    saved = _weights(sharded)
    assert saved.keys() == expected.keys()
    for name, value in expected.items():  # whole tensors, not one rank's shard
        torch.testing.assert_close(saved[name], value, atol=1e-4, rtol=1e-3)

    # The whole checkpoint loads in one process without torch.distributed.
    generator = load_generator(sharded)
    request = SongRequest("[verse]\nthe night is young", "pop,sad", seed=1)
    codes = generator.generate([request], SamplingParams(cfg_scale=1.5), 6)
    assert codes[0].shape[0] == 8 and 1 <= codes[0].shape[1] <= 7

    # Resume from 1 process into 2 sharded ones: each rank takes its shard of the saved optimizer state.
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(_args(cache, whole, 5, tokenizer)) == 0
    shutil.copytree(whole, split)
    assert main(_args(cache, whole, 10, tokenizer)) == 0
    _torchrun(2, _args(cache, split, 10, tokenizer) + ["--fsdp"])
    np.testing.assert_allclose(_losses(split), _losses(whole), atol=2e-3)


def test_fsdp_in_bfloat16_on_two_gloo_processes_trains_as_one_process_and_saves_float32(cache, tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    bfloat16 = ["--precision", "bfloat16", "--device", "cpu"]
    assert main(_args(cache, single, 6, None, eval_every=6) + bfloat16) == 0
    _torchrun(2, _args(cache, sharded, 6, single / "tokenizer.json", eval_every=6) + bfloat16 + ["--fsdp"])
    # the sharded run gathers bfloat16 weights (FSDP's policy), the single one casts them per product (autocast)
    np.testing.assert_allclose(_losses(sharded)[:, :3], _losses(single)[:, :3], rtol=0.02)
    expected, saved = _weights(single), _weights(sharded)
    assert saved.keys() == expected.keys() and {t.dtype for t in saved.values()} == {torch.float32}
    for name, value in expected.items():
        torch.testing.assert_close(saved[name], value, atol=2e-3, rtol=2e-2)


def test_global_batch_must_divide_among_the_ranks():
    from heartmula.errors import HeartMuLaError

    assert Ranks(1, 2).slice([0, 1, 2, 3]) == [1, 3]
    with pytest.raises(HeartMuLaError, match="multiple of the 3 processes"):
        Ranks(0, 3).check_batch(4)


def test_fsdp_plan_of_the_3b_lm_on_the_meta_device():
    """The 3B geometry sharded over 8 ranks (a fake process group: shapes only, no weights, no communication)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor, Shard
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from heartmula.lm.config import HeartMuLaConfig
    from heartmula.lm.model import HeartMuLa
    from heartmula.train.distributed import LossModule, shard_fully, transformer_layers
    from heartmula.train.lm import lm_losses

    with torch.device("meta"):
        model = HeartMuLa(HeartMuLaConfig())  # the release's llama-3B backbone and 300M decoder
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    total = sum(p.numel() for p in model.parameters())
    dist.init_process_group("fake", store=FakeStore(), rank=3, world_size=8)
    try:
        step = shard_fully(LossModule(model, lm_losses), mesh=init_device_mesh("cpu", (8,)))
        units = transformer_layers(model)
        assert len(units) == 28 + 3 and all(isinstance(u, FSDPModule) for u in units)
        local = 0
        for name, param in step.named_parameters():
            assert isinstance(param, DTensor) and param.placements == (Shard(0),) and param.is_meta
            rows = shapes[name.removeprefix("model.")][0]
            per_rank = -(-rows // 8)
            assert param.to_local().shape[0] == max(0, min(per_rank, rows - 3 * per_rank))
            local += param.to_local().numel()
    finally:
        dist.destroy_process_group()
    assert 3.9e9 < total < 4.0e9 and local < 1.01 * total / 8
