"""Fine-tune the Whisper lyrics transcriber on (audio, lyrics) JSONL manifests.

A manifest line is a JSON object with at least `audio` (a path, relative to the manifest's folder or absolute),
`lyrics` and `language` (en, zh, ja, ko, es, ...). Lyrics keep their case and punctuation (Whisper writes them),
lose their [section] headers, and their lines are joined with spaces (no spaces for zh/ja). A row longer than
30 s with line `timing` (as `heartmula data build` writes) is cut into windows of whole lines, each at most 30 s;
a row's `vocals` stem can be used beside or instead of its mix, and rows can be chosen by `split` and left out by
voice (language and `vocal_gender`, e.g. "ja-female"), so that a voice is kept for testing only.

The embedded models are CTranslate2-only: they are converted to transformers once (cached) and trained in PyTorch;
the result is a transformers folder that `heartmula transcribe --model OUT` runs.
"""

from __future__ import annotations

import hashlib
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
from heartmula.transcribe.convert import convert_ct2_to_transformers, is_current_conversion
from heartmula.transcribe.models import cache_dir, locate_model

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
    split: str | None = None  # use only manifest rows of this split (rows without a split always count)
    exclude_voices: tuple[str, ...] = ()  # "language-gender" voices never trained on (kept for testing)
    sources: tuple[str, ...] = ("audio",)  # manifest keys of the audio to learn from: "audio" (mix), "vocals"
    save_every: int = 100  # steps between resumable checkpoints in OUT/.state (0: none)

    def validate(self) -> TranscriberTrainConfig:
        if self.steps < 1 or self.batch_size < 1 or self.learning_rate <= 0 or self.warmup_steps < 0:
            raise HeartMuLaError("steps and batch size must be >= 1, learning rate > 0, warm-up >= 0")
        if not 0 < self.max_seconds <= 30:
            raise HeartMuLaError("max_seconds must be in (0, 30]: Whisper sees 30 s at a time")
        if not self.sources or set(self.sources) - {"audio", "vocals"}:
            raise HeartMuLaError(f"sources must be audio and/or vocals, got {self.sources}")
        return self


@dataclass
class ManifestItem:
    audio: Path
    lyrics: str
    language: str
    offset: float = 0.0  # seconds into the file where the item starts
    duration: float | None = None  # seconds; None = to the end of the file
    voice: str = ""  # "language-gender" when the manifest names the gender


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


def line_windows(timing: list[dict], max_seconds: float, pad: float = 0.2) -> list[tuple[float, float, str]]:
    """(offset, duration, lyrics) windows of whole consecutive lines, each at most max_seconds long with `pad`
    seconds around its lines; a line longer than a window on its own is left out."""
    windows: list[tuple[float, float, list[str]]] = []
    for line in timing:
        start, end = max(line["start"] - pad, 0.0), line["end"] + pad
        if end - start > max_seconds:
            continue
        if windows and end - windows[-1][0] <= max_seconds:
            windows[-1] = (windows[-1][0], end, windows[-1][2] + [line["text"]])
        else:
            windows.append((start, end, [line["text"]]))
    return [(a, b - a, "\n".join(texts)) for a, b, texts in windows]


def read_manifest(path: str | os.PathLike, config: TranscriberTrainConfig | None = None) -> list[ManifestItem]:
    config = config or TranscriberTrainConfig()
    path = Path(path)
    if not path.is_file():
        raise HeartMuLaError(f"manifest {path} does not exist")
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            lyrics, language, _ = record["lyrics"], record["language"], record["audio"]
            sources = [record[key] for key in config.sources if record.get(key)]
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise HeartMuLaError(f"{path}:{number}: need a JSON object with audio, lyrics, language ({exc})") from None
        if language is None or not str(lyrics).strip():
            continue  # instrumental rows (the corpus marks them language null): nothing to transcribe
        voice = f"{language}-{record['vocal_gender']}" if record.get("vocal_gender") else ""
        if (config.split and record.get("split", config.split) != config.split) or voice in config.exclude_voices:
            continue
        for audio in sources:
            audio_path = Path(audio) if Path(audio).is_absolute() else path.parent / audio
            if not audio_path.is_file():
                raise HeartMuLaError(f"{path}:{number}: audio file {audio_path} does not exist")
            if record.get("timing") and float(record.get("duration", 0)) > config.max_seconds:
                items += [ManifestItem(audio_path, text, str(language), offset, seconds, voice)
                          for offset, seconds, text in line_windows(record["timing"], config.max_seconds)]
            else:
                items.append(ManifestItem(audio_path, str(lyrics), str(language), voice=voice))
    if not items:
        raise HeartMuLaError(f"manifest {path} has no items with lyrics (after the split and voice filters)")
    return items


def target_text(lyrics: str, language: str) -> str:
    lines = [" ".join(_SECTION_HEADER.sub(" ", line).split()) for line in lyrics.splitlines()]
    return ("" if language in ("zh", "ja") else " ").join(line for line in lines if line)


def transformers_start_folder(model: str | None) -> Path:
    """A transformers Whisper folder to start from; CTranslate2 models are converted once into the cache."""
    location = locate_model(model)
    if location.backend == "transformers":
        return location.path
    name = location.name if location.name in ("base", "tiny.en") else Path(location.path).resolve().name
    target = cache_dir() / "whisper" / f"{name}-transformers"
    if not is_current_conversion(target):
        convert_ct2_to_transformers(location.path, target)
    return target


class _Examples:
    """Features (or, with the encoder frozen, its outputs in float16) and label ids for every item, computed once.

    Encoder outputs also go to `encoded_dir` (one .npy a window, keyed by the audio file, its window and the start
    model), so a resumed run reads them instead of encoding the audio again."""

    def __init__(self, items: list[ManifestItem], features, tokenizer, generation_config, max_seconds: float,
                 encoder=None, progress: bool = False, encoded_dir: Path | None = None):
        from tqdm import tqdm

        self.inputs: list[torch.Tensor] = []
        self.labels: list[list[int]] = []
        self.prefix_lengths: list[int] = []
        self.skipped = 0
        self.encoded = encoder is not None
        loaded: tuple[Path, np.ndarray] | None = None
        for item in tqdm(sorted(items, key=lambda i: (str(i.audio), i.offset)), disable=not progress,
                         desc="encode audio" if encoder is not None else "audio features", unit="window"):
            if loaded is None or loaded[0] != item.audio:
                loaded = (item.audio, load_audio(item.audio, SAMPLE_RATE, 1)[0][0])
            start = int(item.offset * SAMPLE_RATE)
            end = len(loaded[1]) if item.duration is None else start + int(item.duration * SAMPLE_RATE)
            audio = loaded[1][start:end]
            if len(audio) > max_seconds * SAMPLE_RATE or not len(audio):
                self.skipped += 1  # cutting the audio would leave lyrics that are no longer heard
                continue
            ids, prefix_length = self._label_ids(item, len(audio) / SAMPLE_RATE, tokenizer, generation_config)
            if len(ids) > MAX_LABEL_TOKENS:
                self.skipped += 1
                continue
            cached = encoded_dir / f"{_window_key(item)}.npy" if encoder is not None and encoded_dir else None
            if cached is not None and cached.is_file():
                self.inputs.append(torch.from_numpy(np.load(cached)))
            else:
                self.inputs.append(self._inputs(audio, features, encoder, cached))
            self.labels.append(ids)
            self.prefix_lengths.append(prefix_length)

    @staticmethod
    def _inputs(audio: np.ndarray, features, encoder, cached: Path | None) -> torch.Tensor:
        inputs = features(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        if encoder is None:
            return inputs[0]
        with torch.no_grad():
            encoded = encoder(inputs.to(next(encoder.parameters()).device)).last_hidden_state[0].half().cpu()
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_suffix(".partial.npy")
            np.save(partial, encoded.numpy())
            os.replace(partial, cached)
        return encoded

    @staticmethod
    def _label_ids(item: ManifestItem, seconds: float, tokenizer, generation_config) -> tuple[list[int], int]:
        multilingual = bool(getattr(generation_config, "is_multilingual", False))
        prefix = [generation_config.decoder_start_token_id]
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
        first_timestamp = generation_config.no_timestamps_token_id + 1
        text_ids = tokenizer.encode(" " + target_text(item.lyrics, item.language), add_special_tokens=False)
        ids = prefix + [first_timestamp, *text_ids, first_timestamp + round(min(seconds, 30.0) / 0.02),
                        generation_config.eos_token_id]
        return ids, len(prefix)

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


def _window_key(item: ManifestItem) -> str:
    stat = item.audio.stat()
    text = f"{item.audio.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{item.offset}|{item.duration}"
    return hashlib.sha1(text.encode()).hexdigest()


def _learning_rate_factor(step: int, config: TranscriberTrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train_transcriber(manifests: list[str | os.PathLike], out_dir: str | os.PathLike,
                      config: TranscriberTrainConfig | None = None, progress: bool = False) -> TrainReport:
    """Train, checkpointing every `save_every` steps beside OUT (`.OUT.state`; a rerun with the same settings
    resumes there) and logging the loss to `OUT.log.jsonl`; the finished model is written to OUT."""
    require("train", "transformers")
    from tqdm import tqdm
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizerFast

    config = (config or TranscriberTrainConfig()).validate()
    out_dir = Path(out_dir)
    items = [item for manifest in manifests for item in read_manifest(manifest, config)]
    start_folder = transformers_start_folder(config.model)
    torch.manual_seed(config.seed)
    model = WhisperForConditionalGeneration.from_pretrained(str(start_folder), dtype=torch.float32)
    features = WhisperFeatureExtractor.from_pretrained(str(start_folder))
    tokenizer = WhisperTokenizerFast.from_pretrained(str(start_folder))
    generation = model.generation_config
    model.to(config.device)
    if config.freeze_encoder:
        model.model.encoder.requires_grad_(False).eval()
    state = _TrainingState(out_dir, config)
    examples = _Examples(items, features, tokenizer, generation, config.max_seconds,
                         model.model.encoder if config.freeze_encoder else None, progress, state.encoded)
    if not examples.labels:
        raise HeartMuLaError(f"no usable items: all {len(items)} are longer than {config.max_seconds} s or have "
                             f"more than {MAX_LABEL_TOKENS} tokens of lyrics; cut the songs into lines first")
    model.model.decoder.train()
    if not config.freeze_encoder:
        model.model.encoder.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    report = TrainReport(steps=config.steps, items=len(examples.labels), skipped=examples.skipped)
    first_step = state.load(model, optimizer, report)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _learning_rate_factor(step, config),
                                                  last_epoch=first_step - 1)
    for step in tqdm(range(first_step, config.steps), disable=not progress, desc="train transcriber", unit="step",
                     initial=first_step, total=config.steps):
        draw = random.Random(config.seed * 1_000_003 + step)  # the batch of a step is the same on resume
        indices = draw.sample(range(len(examples.labels)), min(config.batch_size, len(examples.labels)))
        loss = _training_loss(model, examples, indices, generation.pad_token_id, config.device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip)
        optimizer.step()
        scheduler.step()
        report.losses.append(loss.item())
        state.log(step + 1, report.losses[-1], scheduler.get_last_lr()[0])
        if config.save_every and (step + 1) % config.save_every == 0 and step + 1 < config.steps:
            state.save(model, optimizer, report, step + 1)
    model.eval()
    _save_folder(model, tokenizer, features, out_dir, config, report)
    state.clear()
    return report


def _training_loss(model, examples: _Examples, indices: list[int], pad_id: int, device: str) -> torch.Tensor:
    inputs, decoder_inputs, targets = examples.batch(indices, pad_id)
    inputs, decoder_inputs = inputs.to(device), decoder_inputs.to(device)
    if examples.encoded:
        from transformers.modeling_outputs import BaseModelOutput

        logits = model(encoder_outputs=BaseModelOutput(last_hidden_state=inputs.float()),
                       decoder_input_ids=decoder_inputs, use_cache=False).logits
    else:
        logits = model(input_features=inputs, decoder_input_ids=decoder_inputs, use_cache=False).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.to(device).flatten(), ignore_index=-100)
    if not torch.isfinite(loss):
        raise HeartMuLaError(f"the loss became {loss.item()}: lower --lr")
    return loss


class _TrainingState:
    """Resumable checkpoints in `.OUT.state` beside OUT: trainable weights (safetensors), the optimizer state
    (tensors only, loaded with weights_only) and the step; the loss log in `OUT.log.jsonl`."""

    def __init__(self, out_dir: Path, config: TranscriberTrainConfig):
        self.folder = out_dir.with_name(f".{out_dir.name}.state")
        self.log_path = out_dir.with_name(f"{out_dir.name}.log.jsonl")
        # encoder outputs of the start model (frozen encoder), kept until the run finishes
        model_key = hashlib.sha1(str(config.model).encode()).hexdigest()[:12]
        self.encoded = out_dir.with_name(f".{out_dir.name}.encoded") / model_key
        self.settings = {k: list(v) if isinstance(v, tuple) else v for k, v in config.__dict__.items()
                         if k not in ("steps", "save_every", "device")}

    def load(self, model, optimizer, report: TrainReport) -> int:
        progress = self.folder / "progress.json"
        if not progress.is_file():
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log_path.write_text("")
            return 0
        from safetensors.torch import load_file

        saved = json.loads(progress.read_text())
        if saved["settings"] != self.settings:
            raise HeartMuLaError(f"{self.folder} holds a run with other settings: use another --out or delete it")
        model.load_state_dict(load_file(self.folder / "trainable.safetensors"), strict=False)
        optimizer.load_state_dict(torch.load(self.folder / "optimizer.pt", weights_only=True))
        report.losses[:] = saved["losses"]
        return int(saved["step"])

    def save(self, model, optimizer, report: TrainReport, step: int) -> None:
        from safetensors.torch import save_file

        partial = self.folder.with_name(self.folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        trainable = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trainable, partial / "trainable.safetensors")
        torch.save(optimizer.state_dict(), partial / "optimizer.pt")
        (partial / "progress.json").write_text(json.dumps({"step": step, "settings": self.settings,
                                                           "losses": report.losses}))
        shutil.rmtree(self.folder, ignore_errors=True)
        os.replace(partial, self.folder)

    def log(self, step: int, loss: float, learning_rate: float) -> None:
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "loss": round(loss, 5), "lr": learning_rate}) + "\n")

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        shutil.rmtree(self.encoded.parent, ignore_errors=True)


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
