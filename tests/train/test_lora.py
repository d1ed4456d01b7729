"""LoRA: training with peft into PEFT's layout, resume, merge at load, merge-lora, and refused adapters."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from heartmula.audio import save_audio
from heartmula.codec.pretrained import write_random_codec
from heartmula.manifest import write_manifest
from heartmula.train.token_cache import tokenize_manifest

pytest.importorskip("peft")


def _row(item_id, audio, tags, split, duration):
    return {"id": item_id, "audio": audio, "vocals": None, "lyrics": "", "timing": [], "language": None,
            "tags": tags, "duration": duration, "sample_rate": 16000, "source": {"corpus": "test"},
            "license": "test", "split": split}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Five instrumental tone songs of 2-3 s (four train, one val) tokenized with a tiny codec."""
    root = tmp_path_factory.mktemp("lora_corpus")
    (root / "audio").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(5):
        seconds = 2.0 + i % 2
        t = np.arange(int(seconds * 16000)) / 16000
        tone = 0.3 * np.sin(2 * np.pi * (220 + 55 * i) * t) + 0.02 * rng.standard_normal(t.size)
        save_audio(root / f"audio/s{i}.flac", np.stack([tone, tone]).astype(np.float32), 16000)
        rows.append(_row(f"s{i}", f"audio/s{i}.flac", f"jazz,piano,{'happy' if i % 2 else 'sad'}",
                         "val" if i == 4 else "train", seconds))
    write_manifest(root / "manifest.jsonl", rows)
    codec = write_random_codec(root / "codec", "tiny-direct", seed=0)
    out = tmp_path_factory.mktemp("lora_cache")
    tokenize_manifest(root / "manifest.jsonl", codec, out, progress=False)
    return out


@pytest.fixture(scope="module")
def base(cache, tmp_path_factory):
    """A tiny LM trained for a few steps on the cache (its codec and tokenizer)."""
    from heartmula.train.lm import LMTrainConfig, train_lm

    out = tmp_path_factory.mktemp("lora_base")
    train_lm(cache, out, LMTrainConfig(preset="tiny", steps=4, batch_size=2, context=128, warmup_steps=1,
                                       learning_rate=3e-3, eval_every=4, save_every=4), progress=False)
    return out


def _codes(generator, seed=3):
    from heartmula.lm.generation import SamplingParams, SongRequest

    request = SongRequest("", "jazz,piano", seed=seed)
    return generator.generate([request], SamplingParams(cfg_scale=1.5), max_new_frames=10)[0]


LORA_ARGS = ["--rank", "4", "--alpha", "8", "--batch-size", "2", "--context", "128", "--lr", "2e-2", "--warmup-steps",
             "1", "--save-every", "3", "--eval-every", "3", "--quiet"]


def test_lora_trains_resumes_and_merges_at_load(cache, base, tmp_path):
    from peft import PeftModel

    from heartmula.cli import main
    from heartmula.lm.model import HeartMuLa
    from heartmula.lm.pretrained import load_generator

    adapter = tmp_path / "adapter"
    assert main(["train", "lora", str(cache), "--from", str(base), "--out", str(adapter), "--steps", "6",
                 *LORA_ARGS]) == 0
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    log = [json.loads(line) for line in (adapter / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7)) and "val_loss" in log[-1]

    # peft reads the folder back onto the base model
    model = HeartMuLa.from_pretrained(base / "HeartMuLa-oss-3B")
    loaded = PeftModel.from_pretrained(model, str(adapter))
    assert any("lora_A" in name for name, _ in loaded.named_parameters())

    with open(adapter / "train_log.jsonl", "a") as log:  # as if stopped after logging step 7, before saving it
        log.write(json.dumps({"step": 7, "loss": 99.0}) + "\n")
    assert main(["train", "lora", str(cache), "--from", str(base), "--out", str(adapter), "--steps", "8",
                 *LORA_ARGS]) == 0  # resumes from step 6
    log = [json.loads(line) for line in (adapter / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 9)) and 99.0 not in [r["loss"] for r in log]
    assert json.loads((adapter / "train_state.json").read_text())["step"] == 8

    plain = _codes(load_generator(base))
    adapted = _codes(load_generator(base, lora=adapter))
    assert not torch.equal(plain, adapted)
    assert torch.equal(_codes(load_generator(base, lora=adapter, lora_scale=0.0)), plain)

    from heartmula.pipeline import HeartMuLaPipeline

    pipe = HeartMuLaPipeline.from_pretrained(base, device="cpu", decode=False, lora=adapter)
    assert torch.equal(_codes(pipe.generator), adapted)

    merged = tmp_path / "merged"
    assert main(["model", "merge-lora", str(base), "--lora", str(adapter), "--out", str(merged)]) == 0
    assert torch.equal(_codes(load_generator(merged)), adapted)


def test_merge_matches_peft_merge_and_unload(base, tmp_path):
    from peft import LoraConfig, get_peft_model

    from heartmula.lm.lora import merge_lora, target_pattern
    from heartmula.lm.model import HeartMuLa

    model = HeartMuLa.from_pretrained(base / "HeartMuLa-oss-3B")
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=6, target_modules=target_pattern(parts=("decoder",))))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    expected = peft_model.merge_and_unload().state_dict()
    fresh = HeartMuLa.from_pretrained(base / "HeartMuLa-oss-3B")
    assert merge_lora(fresh, tmp_path / "adapter") == 7  # the one decoder layer's seven projections
    for name, value in fresh.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6)


def test_bad_adapters_are_refused_with_a_clear_error(cache, base, tmp_path, capsys):
    from heartmula.cli import main
    from heartmula.errors import HeartMuLaError
    from heartmula.lm.lora import read_adapter
    from heartmula.lm.pretrained import load_generator, write_random_root

    adapter = tmp_path / "adapter"
    assert main(["train", "lora", str(cache), "--from", str(base), "--out", str(adapter), "--steps", "1",
                 *LORA_ARGS]) == 0

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HeartMuLaError, match="adapter_config.json and adapter_model.safetensors missing"):
        read_adapter(empty)
    with pytest.raises(HeartMuLaError, match="is not a folder"):
        read_adapter(tmp_path / "nowhere")

    other = tmp_path / "other"  # another geometry: 8192-code codebooks
    write_random_root(other, "tiny", seed=1)
    with pytest.raises(HeartMuLaError, match="another base model"):
        load_generator(other, lora=adapter)
    (adapter / "heartmula_base.json").unlink()  # a plain PEFT folder: the shapes still decide
    wider = tmp_path / "wider"
    write_random_root(wider, "bench-36m", seed=1)
    with pytest.raises(HeartMuLaError, match="does not fit"):
        load_generator(wider, lora=adapter)

    from heartmula.codec.pretrained import DEFAULT_CODEC_DIR
    from heartmula.serve.config import ServeConfig

    with pytest.raises(HeartMuLaError, match="not a LoRA adapter folder"):
        ServeConfig(model=base, codec=DEFAULT_CODEC_DIR, lora=empty).check()

    code = main(["generate", "--model", str(base), "--lora", str(empty), "--no-decode", "--codes-out",
                 str(tmp_path / "x.npy"), "--duration", "1", "--quiet"])
    assert code == 2 and "adapter_config.json" in capsys.readouterr().err
    code = main(["train", "lora", str(cache), "--from", str(other), "--out", str(tmp_path / "o"), "--steps", "1",
                 *LORA_ARGS])
    assert code == 2 and "codec" in capsys.readouterr().err


def test_3b_geometry_trainable_parameters_on_the_meta_device():
    from heartmula.lm.config import HeartMuLaConfig
    from heartmula.train.lora_memory import lora_memory_estimate

    estimate = lora_memory_estimate(HeartMuLaConfig(), rank=16, batch_size=4, context=2048)
    # per layer r * (in + out) for q, k, v, output, w1, w2, w3; keys and values: 8 KV heads of 128 in the backbone,
    # 4 KV heads of 384 in the decoder
    backbone = 28 * (16 * (3072 + 3072) * 2 + 2 * 16 * (3072 + 1024) + 3 * 16 * (3072 + 8192))
    decoder = 3 * (16 * (3072 + 3072) * 2 + 2 * 16 * (3072 + 1536) + 3 * 16 * (3072 + 8192))
    assert estimate["trainable_parameters"] == backbone + decoder
    assert estimate["lora_modules"] == 7 * (28 + 3)
    assert 3.0e9 < estimate["base_parameters"] < 4.5e9
    assert estimate["total_gb"] < 24 < estimate["without_checkpointing_gb"]


def test_generate_stream_and_serve_take_a_lora_option():
    from heartmula.cli import build_parser

    parser = build_parser()
    for verb in ("generate", "stream", "serve"):
        args = parser.parse_args([verb, "--lora", "adapter", "--lora-scale", "0.5"])
        assert (args.lora, args.lora_scale) == ("adapter", 0.5)
