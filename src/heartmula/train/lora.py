"""LoRA fine-tuning of a HeartMuLa LM on a token cache (`heartmula data tokenize`), with peft.

The base model stays frozen; peft adds low-rank matrices A [r, in] and B [out, r] beside the projections named by
`heartmula.lm.lora.target_pattern` (attention q/k/v/output and SwiGLU w1/w2/w3 of the backbone and the local
decoder by default). Samples and losses are those of full training (`heartmula.train.lm`). The output folder is an
adapter in PEFT's layout that `--lora OUT` merges at load and `peft.PeftModel.from_pretrained` reads:
    OUT/adapter_config.json, OUT/adapter_model.safetensors   (peft's save_pretrained)
    OUT/heartmula_base.json                                   the base model's config (checked when merging)
    OUT/train_state.safetensors + train_state.json, train_log.jsonl
Running again with the same OUT resumes.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from heartmula.errors import HeartMuLaError
from heartmula.lm.config import GenerationConfig
from heartmula.lm.lora import ADAPTER_WEIGHTS, BASE_FILE, DEFAULT_PARTS, DEFAULT_TARGETS, target_pattern
from heartmula.lm.model import HeartMuLa
from heartmula.lm.pretrained import LMFiles, locate_lm
from heartmula.text import TextTokenizer
from heartmula.train.device import Placement, placement
from heartmula.train.lm import AUDIO_SPECIALS, LMTrainConfig, SampleBuilder, augment_tags, lm_losses
from heartmula.train.state import load_training_state, save_training_state, trim_log
from heartmula.train.token_cache import load_cache

LOG_FILE = "train_log.jsonl"


@dataclass
class LoraTrainConfig:
    rank: int = 16  # r of every adapted projection
    alpha: float = 32.0  # the update is scaled by alpha / rank
    dropout: float = 0.05  # dropout on the adapter's input
    targets: tuple[str, ...] = DEFAULT_TARGETS  # projection names inside each layer
    parts: tuple[str, ...] = DEFAULT_PARTS  # backbone and/or decoder
    version: str = "3B"
    steps: int = 300
    batch_size: int = 4
    context: int = 512  # rows (prompt + frames) per sample
    min_frames: int = 16
    learning_rate: float = 1e-3
    warmup_steps: int = 20
    decoder_fraction: float = 0.5
    uncond_prob: float = 0.1  # keeps the unconditional branch of classifier-free guidance trained
    tag_drop_prob: float = 0.15
    all_tags_drop_prob: float = 0.1
    gradient_checkpointing: bool = False  # recompute each layer in the backward pass (less activation memory)
    save_every: int = 25
    eval_every: int = 50
    val_items: int = 16
    seed: int = 0
    threads: int | None = None
    max_minutes: float | None = None  # stop with a saved state after this much wall time; run again to resume
    device: str = "auto"  # auto, cpu, cuda or cuda:N (heartmula.train.device)
    precision: str = "auto"  # float32, or bfloat16 mixed precision; auto: bfloat16 on CUDA, float32 on the CPU

    def sample_config(self) -> LMTrainConfig:
        """The sample-building settings of full training that these fields stand for."""
        return LMTrainConfig(context=self.context, min_frames=self.min_frames, uncond_prob=self.uncond_prob,
                             tag_drop_prob=self.tag_drop_prob, all_tags_drop_prob=self.all_tags_drop_prob,
                             decoder_fraction=self.decoder_fraction, reference_prob=0.0)


def load_frozen_base(base: str | os.PathLike, version: str) -> tuple[LMFiles, HeartMuLa, TextTokenizer,
                                                                    GenerationConfig]:
    """The base model in float32 in its training layout, every parameter frozen, with its tokenizer."""
    files = locate_lm(base, version)
    gen_config = GenerationConfig.from_file(files.gen_config) if files.gen_config else GenerationConfig()
    tokenizer = TextTokenizer.from_file(files.tokenizer, gen_config.text_bos_id, gen_config.text_eos_id)
    model = HeartMuLa.from_pretrained(files.model_dir)
    model.audio_head.data = model.audio_head.data.contiguous()  # undo the inference layout for training
    model.requires_grad_(False)
    return files, model, tokenizer, gen_config


def base_identity(model: HeartMuLa) -> dict:
    """What an adapter records of its base (heartmula_base.json; `heartmula.lm.lora` compares it when merging)."""
    config = model.config.to_dict()
    keys = ("backbone_config", "decoder_config", "audio_vocab_size", "audio_num_codebooks", "text_vocab_size")
    return {k: config.get(k) for k in keys}


def attach_lora(model: HeartMuLa, out: Path, rank: int, alpha: float, dropout: float, targets, parts):
    """A peft model around `model`: the adapter saved in `out` (resume), else fresh LoRA matrices."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if (out / ADAPTER_WEIGHTS).is_file():
        recorded = json.loads((out / BASE_FILE).read_text(encoding="utf-8")) if (out / BASE_FILE).is_file() else None
        if recorded is not None and recorded != base_identity(model):
            raise HeartMuLaError(f"{out} holds an adapter of another base model: use a new --out folder")
        return PeftModel.from_pretrained(model, str(out), is_trainable=True)
    if rank < 1 or alpha <= 0 or not 0.0 <= dropout < 1.0:
        raise HeartMuLaError(f"LoRA needs rank >= 1, alpha > 0 and dropout in [0, 1); got {rank}, {alpha}, {dropout}")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_pattern(targets, parts),
                        bias="none")
    return get_peft_model(model, config)


def save_adapter(peft_model, out: Path, base: HeartMuLa) -> None:
    """peft's save_pretrained into a temporary folder, then each file renamed into `out` (never half written)."""
    staging = Path(tempfile.mkdtemp(prefix=".adapter.", dir=out))
    try:
        peft_model.save_pretrained(str(staging))
        (staging / BASE_FILE).write_text(json.dumps(base_identity(base), indent=1), encoding="utf-8")
        for item in staging.iterdir():
            os.replace(item, out / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _check_codec(model: HeartMuLa, codec: dict, base: Path) -> None:
    if model.config.audio_vocab_size != codec["codebook_size"] + AUDIO_SPECIALS or \
            model.num_codebooks != codec["num_codebooks"]:
        raise HeartMuLaError(f"{base} models {model.num_codebooks} codebooks of {model.config.audio_vocab_size - 5} "
                             f"codes, the cache's codec {codec['num_codebooks']} of {codec['codebook_size']}: "
                             "tokenize the music with the codec of the base model")


@dataclass
class LoraTrainReport:
    steps: int
    resumed_from: int
    trainable: int
    items: int
    first_loss: float | None = None
    last_loss: float | None = None
    seconds: float = 0.0
    validation: list[dict] = field(default_factory=list)


def _batch(builder: SampleBuilder, items, weights, rng: random.Random, config: LoraTrainConfig, sample: LMTrainConfig):
    samples = []
    for item in rng.choices(items, weights=weights, k=config.batch_size):
        unconditional = rng.random() < config.uncond_prob
        samples.append(builder.build(item, augment_tags(item.tags, rng, sample), None, rng, sample, unconditional))
    return samples


@torch.no_grad()
def _validation(model: HeartMuLa, builder: SampleBuilder, items, sample: LMTrainConfig, where: Placement) -> float:
    model.eval()
    with where.autocast():
        losses = [float(lm_losses(model, [builder.build(i, i.tags, 0, None, sample)], 1.0)[0]) for i in items]
    model.train()
    return round(sum(losses) / len(losses), 4)


def _train_step(model: HeartMuLa, optimizer, params: list, samples: list, step: int, generator: torch.Generator,
                config: LoraTrainConfig, where: Placement) -> dict:
    """One optimizer step of the adapter on a batch; returns its log record."""
    for group in optimizer.param_groups:
        group["lr"] = config.learning_rate * min(1.0, (step + 1) / max(1, config.warmup_steps))
    with where.autocast():
        loss, parts = lm_losses(model, samples, config.decoder_fraction, generator,
                                checkpoint=config.gradient_checkpointing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    return {"step": step + 1, "loss": round(float(loss.detach()), 4), **{k: round(v, 4) for k, v in parts.items()}}


def train_lora(cache: str | os.PathLike, base: str | os.PathLike, out: str | os.PathLike,
               config: LoraTrainConfig | None = None, progress: bool = True) -> LoraTrainReport:
    """Train (or resume) a LoRA adapter of the model `base` in `out` on the token cache `cache`."""
    config = config or LoraTrainConfig()
    if config.threads:
        torch.set_num_threads(config.threads)
    where = placement(config.device, config.precision)
    cache, out = Path(cache), Path(out)
    index, items = load_cache(cache)
    files, model, tokenizer, gen_config = load_frozen_base(base, config.version)
    model.to(where.device)
    _check_codec(model, index["codec"], files.model_dir)
    sample = config.sample_config()
    builder = SampleBuilder(tokenizer, gen_config, model.num_codebooks, config.context)
    fits = [i for i in items if config.context - builder.prompt_length(i) >= config.min_frames]
    train_items = [i for i in fits if i.split == "train"]
    val_items = [i for i in fits if i.split == "val"][: config.val_items]
    if not train_items:
        raise HeartMuLaError(f"{cache} holds no train-split item whose prompt leaves {config.min_frames} frames in "
                             f"a context of {config.context}")
    out.mkdir(parents=True, exist_ok=True)
    peft_model = attach_lora(model, out, config.rank, config.alpha, config.dropout, config.targets, config.parts)
    peft_model.to(where.device)  # also the matrices of a resumed adapter, wherever peft read them to
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    start = load_training_state(out, peft_model, optimizer)
    trim_log(out / LOG_FILE, start)
    report = LoraTrainReport(config.steps, start, trainable_parameters(peft_model), len(train_items))
    rng = random.Random(config.seed * 1_000_003 + start)
    generator = torch.Generator().manual_seed(config.seed + start)
    weights = [i.codes.shape[1] for i in train_items]
    began = time.perf_counter()
    bar = _progress(progress, config.steps, start)
    model.train()
    step = start
    for step in range(start, config.steps):
        samples = _batch(builder, train_items, weights, rng, config, sample)
        record = _train_step(model, optimizer, params, samples, step, generator, config, where)
        report.first_loss = report.first_loss if report.first_loss is not None else record["loss"]
        report.last_loss = record["loss"]
        last = step + 1 == config.steps
        out_of_time = config.max_minutes is not None and time.perf_counter() - began > 60 * config.max_minutes
        if val_items and (last or out_of_time or (step + 1) % config.eval_every == 0):
            record["val_loss"] = _validation(model, builder, val_items, sample, where)
            report.validation.append({"step": step + 1, "val_loss": record["val_loss"]})
        with open(out / LOG_FILE, "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=record["loss"])
        if last or out_of_time or (step + 1) % config.save_every == 0:
            save_adapter(peft_model, out, model)
            save_training_state(out, peft_model, optimizer, step + 1, config)
        if out_of_time:
            report.steps = step + 1
            break
    if bar is not None:
        bar.close()
    if not (out / ADAPTER_WEIGHTS).is_file():
        save_adapter(peft_model, out, model)
    report.seconds = round(time.perf_counter() - began, 1)
    return report


def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train lora", unit="step")

