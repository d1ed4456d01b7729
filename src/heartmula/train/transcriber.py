"""Fine-tune the Whisper lyrics transcriber on (audio, lyrics) JSONL manifests.

A manifest line is a JSON object with at least `audio` (a path, relative to the manifest's folder or absolute),
`lyrics` and `language` (en, zh, ja, ko, es, ...). Lyrics keep their case and punctuation (Whisper writes them),
lose their [section] headers, and their lines are joined with spaces (no spaces for zh/ja).

The embedded models are CTranslate2-only: they are converted to transformers once (cached) and trained in PyTorch;
the result is a transformers folder that `heartmula transcribe --model OUT` runs.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from heartmula.audio import load_audio
from heartmula.errors import HeartMuLaError
from heartmula.extras import require

SAMPLE_RATE = 16000
MAX_LABEL_TOKENS = 448  # Whisper's decoder positions
_SECTION_HEADER = re.compile(r"\[[^\]\n]*\]")


@dataclass
class TranscriberTrainConfig:
    model: str | None = None  # embedded name, CTranslate2 folder or transformers folder; None = base
    steps: int = 1000
    batch_size: int = 8
    learning_rate: float = 1e-5
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    freeze_encoder: bool = False
    max_seconds: float = 30.0
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> TranscriberTrainConfig:
        if self.steps < 1 or self.batch_size < 1 or self.learning_rate <= 0 or self.warmup_steps < 0:
            raise HeartMuLaError("steps and batch size must be >= 1, learning rate > 0, warm-up >= 0")
        if not 0 < self.max_seconds <= 30:
            raise HeartMuLaError("max_seconds must be in (0, 30]: Whisper sees 30 s at a time")
        return self


@dataclass
class ManifestItem:
    audio: Path
    lyrics: str
    language: str


@dataclass
class TrainReport:
    steps: int
    items: int
    skipped: int
    losses: list[float] = field(default_factory=list)

    @property
    def first_loss(self) -> float:
        return self.losses[0]

    @property
    def last_loss(self) -> float:
        return self.losses[-1]


def read_manifest(path: str | os.PathLike) -> list[ManifestItem]:
    path = Path(path)
    if not path.is_file():
        raise HeartMuLaError(f"manifest {path} does not exist")
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            audio, lyrics, language = record["audio"], record["lyrics"], record["language"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise HeartMuLaError(f"{path}:{number}: need a JSON object with audio, lyrics, language ({exc})") from None
        if language is None or not str(lyrics).strip():
            continue  # instrumental rows (the corpus marks them language null): nothing to transcribe
        audio_path = Path(audio) if Path(audio).is_absolute() else path.parent / audio
        if not audio_path.is_file():
            raise HeartMuLaError(f"{path}:{number}: audio file {audio_path} does not exist")
        items.append(ManifestItem(audio_path, str(lyrics), str(language)))
    if not items:
        raise HeartMuLaError(f"manifest {path} has no items with lyrics")
    return items


def target_text(lyrics: str, language: str) -> str:
    lines = [" ".join(_SECTION_HEADER.sub(" ", line).split()) for line in lyrics.splitlines()]
    return ("" if language in ("zh", "ja") else " ").join(line for line in lines if line)


def transformers_start_folder(model: str | None) -> Path:
    """A transformers Whisper folder to start from; CTranslate2 models are converted once into the cache."""
    from heartmula.transcribe.convert import convert_ct2_to_transformers, is_current_conversion
    from heartmula.transcribe.models import cache_dir, locate_model

    location = locate_model(model)
    if location.backend == "transformers":
        return location.path
    name = location.name if location.name in ("base", "tiny.en") else Path(location.path).resolve().name
    target = cache_dir() / "whisper" / f"{name}-transformers"
    if not is_current_conversion(target):
        convert_ct2_to_transformers(location.path, target)
    return target


class _Examples:
    """Features and label ids for every item, computed once (the data sets this trains on are small)."""

    def __init__(self, items: list[ManifestItem], features, tokenizer, generation_config, max_seconds: float):
        self.inputs: list[torch.Tensor] = []
        self.labels: list[list[int]] = []
        self.prefix_lengths: list[int] = []
        self.skipped = 0
        multilingual = bool(getattr(generation_config, "is_multilingual", False))
        start = generation_config.decoder_start_token_id
        for item in items:
            audio, _ = load_audio(item.audio, SAMPLE_RATE, 1)
            if audio.shape[1] > max_seconds * SAMPLE_RATE:
                self.skipped += 1  # cutting the audio would leave lyrics that are no longer heard
                continue
            prefix = [start]
            if multilingual:
                language_token = f"<|{item.language}|>"
                if language_token not in generation_config.lang_to_id:
                    raise HeartMuLaError(f"{item.audio}: language {item.language!r} is not one Whisper knows")
                prefix += [generation_config.lang_to_id[language_token], generation_config.task_to_id["transcribe"]]
            elif item.language != "en":
                raise HeartMuLaError(f"{item.audio}: an English-only model cannot learn {item.language!r}")
            # Targets keep Whisper's timestamp mode alive (training only without timestamps makes it forget how
            # to emit them, and timed transcription then returns nothing): the item is one segment from 0 to its
            # duration, timestamp tokens counting 20 ms steps after <|notimestamps|>.
            seconds = min(audio.shape[1] / SAMPLE_RATE, 30.0)
            first_timestamp = generation_config.no_timestamps_token_id + 1
            text_ids = tokenizer.encode(" " + target_text(item.lyrics, item.language), add_special_tokens=False)
            ids = prefix + [first_timestamp, *text_ids, first_timestamp + round(seconds / 0.02),
                            generation_config.eos_token_id]
            if len(ids) > MAX_LABEL_TOKENS:
                self.skipped += 1
                continue
            self.inputs.append(features(audio[0], sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features[0])
            self.labels.append(ids)
            self.prefix_lengths.append(len(prefix))

    def batch(self, indices: list[int], pad_id: int):
        """input features [B, mels, 3000], decoder inputs [B, T], targets [B, T] (-100 = not scored)."""
        longest = max(len(self.labels[i]) for i in indices) - 1
        decoder_inputs = torch.full((len(indices), longest), pad_id, dtype=torch.long)
        targets = torch.full((len(indices), longest), -100, dtype=torch.long)
        for row, i in enumerate(indices):
            ids = torch.tensor(self.labels[i])
            decoder_inputs[row, : len(ids) - 1] = ids[:-1]
            targets[row, : len(ids) - 1] = ids[1:]
            # The start/language/task prompt is given, not learned: score what follows it.
            targets[row, : self.prefix_lengths[i] - 1] = -100
        return torch.stack([self.inputs[i] for i in indices]), decoder_inputs, targets


def _learning_rate_factor(step: int, config: TranscriberTrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train_transcriber(manifests: list[str | os.PathLike], out_dir: str | os.PathLike,
                      config: TranscriberTrainConfig | None = None, progress: bool = False) -> TrainReport:
    require("train", "transformers")
    from tqdm import tqdm
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizerFast

    config = (config or TranscriberTrainConfig()).validate()
    items = [item for manifest in manifests for item in read_manifest(manifest)]
    start_folder = transformers_start_folder(config.model)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    model = WhisperForConditionalGeneration.from_pretrained(str(start_folder), dtype=torch.float32)
    features = WhisperFeatureExtractor.from_pretrained(str(start_folder))
    tokenizer = WhisperTokenizerFast.from_pretrained(str(start_folder))
    generation = model.generation_config
    examples = _Examples(items, features, tokenizer, generation, config.max_seconds)
    if not examples.labels:
        raise HeartMuLaError(f"no usable items: all {len(items)} are longer than {config.max_seconds} s or have "
                             f"more than {MAX_LABEL_TOKENS} tokens of lyrics; cut the songs into lines first")
    model.to(config.device).train()
    if config.freeze_encoder:
        model.model.encoder.requires_grad_(False)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _learning_rate_factor(step, config))
    order: list[int] = []
    report = TrainReport(steps=config.steps, items=len(examples.labels), skipped=examples.skipped)
    for _ in tqdm(range(config.steps), disable=not progress, desc="train transcriber", unit="step"):
        if len(order) < config.batch_size:
            order += random.sample(range(len(examples.labels)), len(examples.labels))
        indices, order = order[: config.batch_size], order[config.batch_size:]
        inputs, decoder_inputs, targets = examples.batch(indices, generation.pad_token_id)
        logits = model(input_features=inputs.to(config.device), decoder_input_ids=decoder_inputs.to(config.device),
                       use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.to(config.device).flatten(),
                                                 ignore_index=-100)
        if not torch.isfinite(loss):
            raise HeartMuLaError(f"the loss became {loss.item()}: lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip)
        optimizer.step()
        scheduler.step()
        report.losses.append(loss.item())
    model.eval()
    _save_folder(model, tokenizer, features, Path(out_dir), config, report)
    return report


def _save_folder(model, tokenizer, features, out_dir: Path, config: TranscriberTrainConfig,
                 report: TrainReport) -> None:
    """Write into a sibling temporary folder, then swap it in: an interrupted save never leaves a broken model."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    features.save_pretrained(partial)
    summary = {"config": config.__dict__, "items": report.items, "skipped": report.skipped,
               "first_loss": report.first_loss, "last_loss": report.last_loss,
               "mean_last_losses": float(np.mean(report.losses[-10:]))}
    (partial / "heartmula_training.json").write_text(json.dumps(summary, indent=1))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(partial, out_dir)
