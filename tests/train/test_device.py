"""`--device` and `--precision` of the trainers (heartmula.train.device): the CPU path is the plain float32 path,
bfloat16 mixed precision trains with float32 weights and checkpoints, resumes, and a missing GPU is a clear error.
The CUDA tests run a few real steps on a GPU and skip without one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from heartmula.cli import main
from heartmula.errors import HeartMuLaError
from heartmula.train.device import placement, training_device

ROOT = Path(__file__).resolve().parents[2]
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
without_cuda = pytest.mark.skipif(HAS_CUDA, reason="checks the behaviour of a machine without a GPU")


def _lm_config(steps: int, **options):
    from heartmula.train.lm import LMTrainConfig

    return LMTrainConfig(preset="tiny", steps=steps, batch_size=2, context=96, min_frames=8, warmup_steps=2,
                         learning_rate=3e-3, eval_every=2, save_every=2, vocab_size=300, **options)


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def _losses(out: Path) -> np.ndarray:
    return np.array([[r["loss"], r["c0"], r["dec"]] for r in _log(out)])


def _float32_cpu_files(out: Path) -> dict[str, torch.Tensor]:
    """The weights and optimizer state of an LM run, checked to be float32 (step counts aside)."""
    tensors = {**load_file(str(out / "HeartMuLa-oss-3B" / "model.safetensors")),
               **load_file(str(out / "train_state.safetensors"))}
    assert {t.dtype for name, t in tensors.items() if not name.endswith("::step")} == {torch.float32}
    return tensors


def test_device_and_precision_choices():
    assert placement("cpu") == placement("cpu", "float32")
    assert placement("cpu").precision == "float32" and not placement("cpu").mixed
    mixed = placement("cpu", "bfloat16")
    assert mixed.mixed and "bfloat16" in mixed.describe()
    with mixed.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with pytest.raises(HeartMuLaError, match="auto, cpu, cuda"):
        placement("tpu")
    with pytest.raises(HeartMuLaError, match="float32 or bfloat16"):
        placement("cpu", "float16")


def test_gpu_choices_on_a_host_with_two_gpus(monkeypatch):
    """The choice of GPU (torch's view of two GPUs stood in): plain, under torchrun, and the refused ones."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert [training_device(name) for name in ("auto", "cuda", "cuda:1")] == [torch.device("cuda", i)
                                                                             for i in (0, 0, 1)]
    assert placement("cuda").precision == "bfloat16" and placement("cuda", "float32").precision == "float32"
    with pytest.raises(HeartMuLaError, match="cuda:0 to cuda:1"):
        training_device("cuda:2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert training_device("auto") == training_device("cuda") == torch.device("cuda", 1)
    assert training_device("cpu") == torch.device("cpu")
    with pytest.raises(HeartMuLaError, match="LOCAL_RANK"):
        training_device("cuda:0")
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(HeartMuLaError, match="--nproc_per_node"):
        training_device("cuda")


@without_cuda
def test_auto_is_the_cpu_and_cuda_is_refused_without_a_gpu():
    assert training_device("auto") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(HeartMuLaError, match="no CUDA GPU"):
            training_device(name)


@without_cuda
@pytest.mark.parametrize("action", ["lm", "lora", "clap", "codec"])
def test_cli_refuses_cuda_without_a_gpu_before_loading_anything(action, tmp_path, capsys):
    inputs = {"lm": ["cache"], "lora": ["cache", "--from", "base"], "clap": ["manifest.jsonl"],
              "codec": ["song.wav"]}[action]
    assert main(["train", action, *inputs, "--out", str(tmp_path / "out"), "--device", "cuda"]) == 2
    assert "torch sees no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@without_cuda
def test_cli_error_for_cuda_is_one_line_without_a_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    result = subprocess.run([sys.executable, "-m", "heartmula", "train", "lm", str(tmp_path), "--out",
                             str(tmp_path / "out"), "--device", "cuda"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "no CUDA GPU" in result.stderr


def test_device_cpu_is_the_float32_path_bit_for_bit(cache, tmp_path):
    from heartmula.train.lm import train_lm

    train_lm(cache, tmp_path / "default", _lm_config(4), progress=False)
    train_lm(cache, tmp_path / "cpu", _lm_config(4, device="cpu", precision="float32"), progress=False)
    default, cpu = _float32_cpu_files(tmp_path / "default"), _float32_cpu_files(tmp_path / "cpu")
    assert default.keys() == cpu.keys() and all(torch.equal(default[k], cpu[k]) for k in default)
    np.testing.assert_array_equal(_losses(tmp_path / "default"), _losses(tmp_path / "cpu"))


def test_bfloat16_on_the_cpu_trains_saves_float32_resumes_and_generates(cache, tmp_path):
    from heartmula.lm.generation import SamplingParams, SongRequest
    from heartmula.lm.pretrained import load_generator
    from heartmula.train.lm import train_lm

    for steps in (4, 6):  # the same schedule, interrupted after step 4: a resumed run draws its own batches
        train_lm(cache, tmp_path / "fp32", _lm_config(steps, device="cpu"), progress=False)
        report = train_lm(cache, tmp_path / "bf16", _lm_config(steps, device="cpu", precision="bfloat16"),
                          progress=False)
    assert report.resumed_from == 4 and [r["step"] for r in _log(tmp_path / "bf16")] == list(range(1, 7))
    mixed, full = _losses(tmp_path / "bf16"), _losses(tmp_path / "fp32")
    assert np.isfinite(mixed).all()
    assert not np.array_equal(mixed, full)  # the matrix products ran in bfloat16
    np.testing.assert_allclose(mixed, full, rtol=0.02)
    _float32_cpu_files(tmp_path / "bf16")
    generator = load_generator(tmp_path / "bf16")
    songs = generator.generate([SongRequest("[verse]\nla la", "pop", seed=1)], SamplingParams(), max_new_frames=4)
    assert songs[0].shape[0] == 8 and songs[0].shape[1] >= 1


def test_lora_trains_in_bfloat16_on_the_cpu(cache, tmp_path):
    pytest.importorskip("peft")
    from heartmula.lm.lora import ADAPTER_WEIGHTS
    from heartmula.lm.pretrained import load_generator
    from heartmula.train.lm import train_lm
    from heartmula.train.lora import LoraTrainConfig, train_lora

    train_lm(cache, tmp_path / "base", _lm_config(2), progress=False)
    options = dict(rank=4, alpha=8.0, steps=4, batch_size=2, context=96, min_frames=8, warmup_steps=1,
                   save_every=2, eval_every=4)
    train_lora(cache, tmp_path / "base", tmp_path / "fp32", LoraTrainConfig(**options, device="cpu"),
               progress=False)
    report = train_lora(cache, tmp_path / "base", tmp_path / "bf16",
                        LoraTrainConfig(**options, device="cpu", precision="bfloat16"), progress=False)
    full, mixed = [r["loss"] for r in _log(tmp_path / "fp32")], [r["loss"] for r in _log(tmp_path / "bf16")]
    assert report.steps == 4 and np.isfinite(mixed).all()
    np.testing.assert_allclose(mixed, full, rtol=0.02)
    assert {t.dtype for t in load_file(str(tmp_path / "bf16" / ADAPTER_WEIGHTS)).values()} == {torch.float32}
    load_generator(tmp_path / "base", lora=tmp_path / "bf16")


@needs_cuda
def test_lm_trains_on_cuda_and_resumes_on_the_cpu(cache, tmp_path):
    from heartmula.train.lm import train_lm

    out = tmp_path / "run"
    report = train_lm(cache, out, _lm_config(4, device="cuda"), progress=False)  # bfloat16 by default on CUDA
    assert report.steps == 4 and np.isfinite(_losses(out)).all()
    _float32_cpu_files(out)
    train_lm(cache, tmp_path / "fp32", _lm_config(4, device="cpu"), progress=False)
    np.testing.assert_allclose(_losses(out), _losses(tmp_path / "fp32"), rtol=0.05)
    resumed = train_lm(cache, out, _lm_config(6, device="cpu"), progress=False)
    assert resumed.resumed_from == 4 and [r["step"] for r in _log(out)] == list(range(1, 7))
    again = train_lm(cache, out, _lm_config(8, device="cuda:0", precision="float32"), progress=False)
    assert again.resumed_from == 6 and np.isfinite(_losses(out)).all()


@needs_cuda
def test_lora_trains_on_cuda(cache, tmp_path):
    pytest.importorskip("peft")
    from heartmula.lm.pretrained import load_generator
    from heartmula.train.lm import train_lm
    from heartmula.train.lora import LoraTrainConfig, train_lora

    train_lm(cache, tmp_path / "base", _lm_config(2, device="cpu"), progress=False)
    config = LoraTrainConfig(rank=4, alpha=8.0, steps=4, batch_size=2, context=96, min_frames=8, warmup_steps=1,
                             save_every=2, eval_every=2, device="cuda")
    report = train_lora(cache, tmp_path / "base", tmp_path / "adapter", config, progress=False)
    assert report.steps == 4 and np.isfinite([r["loss"] for r in _log(tmp_path / "adapter")]).all()
    config.steps, config.device = 6, "cpu"
    assert train_lora(cache, tmp_path / "base", tmp_path / "adapter", config, progress=False).resumed_from == 4
    load_generator(tmp_path / "base", lora=tmp_path / "adapter")
