"""Train a HeartMuLa song language model on a token cache (`heartmula data tokenize`), on the CPU or a GPU
(`heartmula.train.device`), in one process or several (`heartmula.train.distributed`).

One training sample is the generation prompt followed by a crop of a song's codec frames, laid out exactly as
`HeartMuLaGenerator` feeds the model:
    rows [tags (BOS..EOS), reference slot, lyrics (BOS..EOS)]   text column only
    rows [c0..c7, empty] per frame                              audio columns only
Objective (the Sesame-CSM global/local scheme the release uses):
    backbone: row r predicts codebook 0 of the next frame (the last prompt row predicts frame 0; after the song's
              last frame, codebook 0 must be the audio EOS);
    decoder:  per frame [backbone state that predicted c0, emb(c0), ..., emb(c6)] -> c1..c7 (teacher forcing),
              trained on a random fraction of the frames (compute amortisation, as CSM does);
    loss = CE(c0) + mean over codebooks 1..7 of CE(c_i).
Conditioning augmentation: tags are shuffled and each dropped at random (sometimes all of them); with probability
`uncond_prob` the whole sample is unconditional: every text-column embedding and the reference slot become the
learned null embedding, which is exactly the unconditional CFG row the generator builds (no reference either).
Reference-audio slot of conditional samples: when the cache holds the song's HeartCLAP audio embedding
(`heartmula data tokenize --clap`), with probability `reference_prob` the slot holds muq_linear(embedding), exactly
what the generator puts there for `SongRequest(reference_embedding=...)` (`heartmula stream --reference-audio`);
otherwise muq_linear(zeros), what upstream and our generator use without a reference. So a reference song steers
the output, and generation without one behaves as a model trained without references.

Everything lives in one output folder in the official root layout, loadable by `load_generator(OUT)`:
    OUT/HeartMuLa-oss-<version>/  config.json + model.safetensors
    OUT/tokenizer.json, OUT/gen_config.json
    OUT/train_state.safetensors + train_state.json (optimizer, step), train_log.jsonl, training_data.json
Running again with the same OUT resumes.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from heartmula.checkpoint import save_state_dict
from heartmula.constants import FRAME_RATE
from heartmula.errors import HeartMuLaError
from heartmula.files import atomic_output
from heartmula.lm.config import GEOMETRIES, GenerationConfig, HeartMuLaConfig
from heartmula.lm.model import CONFIG_FILE, HeartMuLa
from heartmula.lm.pretrained import GEN_CONFIG_FILE, TOKENIZER_FILE, LMFiles, locate_lm
from heartmula.text import TextTokenizer
from heartmula.train.device import Placement, placement
from heartmula.train.distributed import (
    Ranks,
    barrier,
    current_ranks,
    data_parallel,
    full_state,
    full_value,
    main_rank_first,
    mean_across_ranks,
)
from heartmula.train.lyric_alignment import (
    ALIGN_UNITS,
    AlignmentTargets,
    AttentionRecorder,
    frame_line_targets,
    line_attention_loss,
    line_token_spans,
)
from heartmula.train.state import load_training_state, optimizer_tensors, write_training_state
from heartmula.train.text_tokenizer import BOS, EOS, prompt_texts, train_bpe_tokenizer
from heartmula.train.token_cache import CachedItem, load_cache

LOG_FILE = "train_log.jsonl"
DATA_FILE = "training_data.json"
# Special audio ids after the codebook (as in the release: 8192 codes, EOS 8193, vocabulary 8197).
AUDIO_SPECIALS = 5


# Model sizes for training from scratch; the audio and text vocabularies come from the codec and the tokenizer.
LM_PRESETS: dict[str, dict] = GEOMETRIES


@dataclass
class LMTrainConfig:
    preset: str = "small"
    version: str = "3B"  # folder name HeartMuLa-oss-<version>; 3B is what `heartmula generate` loads by default
    steps: int = 1000
    batch_size: int = 4
    context: int = 1024  # rows (prompt + frames) per sample
    min_frames: int = 32  # items whose prompt leaves fewer frames than this in the context are not used
    learning_rate: float = 6e-4
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decay to this fraction of the learning rate at `steps`
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    decoder_fraction: float = 0.25  # fraction of the frames the local decoder trains on per step
    align_weight: float = 0.0  # weight of the lyric alignment loss (train/lyric_alignment.py); 0 = off
    align_layer: int | None = None  # backbone layer whose attention is aligned; None = the middle layer
    align_heads: int = 2  # its first query heads that are aligned
    align_unit: str = "line"  # what a sung frame attends to: the tokens of its "line" or of its "word"
    uncond_prob: float = 0.1  # classifier-free guidance: whole-sample text dropout
    tag_drop_prob: float = 0.15  # each tag dropped independently
    all_tags_drop_prob: float = 0.1  # all tags dropped (an empty <tag></tag>)
    shuffle_tags: bool = True
    reference_prob: float = 0.5  # conditional samples with a cached CLAP embedding get it in the reference slot
    start_crop_prob: float = 0.4  # long songs: crop from the song's start ...
    end_crop_prob: float = 0.2  # ... or ending at its end (teaches EOS); otherwise a random window
    eval_every: int = 50
    save_every: int = 50
    val_items: int = 16
    tokenizer: str | None = None  # a tokenizer.json to use; default: train a BPE on the cache's texts
    init_from: str | None = None  # fine-tune: start from this checkpoint root or model folder (and its tokenizer)
    vocab_size: int = 4096
    seed: int = 0
    threads: int | None = None
    # under torchrun: shard parameters, gradients and optimizer state over the processes (FSDP) instead of
    # replicating them (DDP); the checkpoints are the same whole files either way
    fsdp: bool = False
    device: str = "auto"  # auto, cpu, cuda or cuda:N (heartmula.train.device; under torchrun cuda:LOCAL_RANK)
    precision: str = "auto"  # float32, or bfloat16 mixed precision; auto: bfloat16 on CUDA, float32 on the CPU


@dataclass
class Sample:
    tokens: torch.Tensor  # [L, K+1]
    mask: torch.Tensor  # [L, K+1] bool
    slot: int  # reference-slot row
    c0_targets: torch.Tensor  # [L] long, -100 = no target
    frame_rows: torch.Tensor  # [n] row whose hidden state predicted the frame's codebook 0
    frame_codes: torch.Tensor  # [n, K]
    unconditional: bool
    reference: torch.Tensor | None = None  # [muq_dim] embedding for the reference slot; None = empty (zeros)
    # lyric alignment: which frames of the crop are sung, and the prompt rows [first, end) of their line
    sung_frames: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    line_first: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    line_end: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))


def augment_tags(tags: str, rng: random.Random, config: LMTrainConfig) -> str:
    """Shuffle and drop tags as training augmentation; the result uses the recommended comma style."""
    items = [t.strip() for t in tags.split(",") if t.strip()]
    if rng.random() < config.all_tags_drop_prob:
        return ""
    items = [t for t in items if rng.random() >= config.tag_drop_prob]
    if config.shuffle_tags:
        rng.shuffle(items)
    return ",".join(items)


class SampleBuilder:
    def __init__(self, tokenizer: TextTokenizer, gen_config: GenerationConfig, num_codebooks: int, context: int):
        self.tokenizer = tokenizer
        self.gen_config = gen_config
        self.k = num_codebooks
        self.context = context

    def prompt_length(self, item: CachedItem) -> int:
        return len(self.tokenizer.encode_tags(item.tags)) + 1 + len(self.tokenizer.encode_lyrics(item.lyrics))

    def build(self, item: CachedItem, tags: str, start: int | None, rng: random.Random | None,
              config: LMTrainConfig, unconditional: bool = False, reference: torch.Tensor | None = None) -> Sample:
        """A sample of `item`: `start` = first frame of the crop, or None to draw the crop with `rng`; `reference`
        fills the reference slot (ignored for unconditional samples, whose slot is the null embedding)."""
        tag_ids = self.tokenizer.encode_tags(tags)
        lyric_ids = self.tokenizer.encode_lyrics(item.lyrics)
        prompt = len(tag_ids) + 1 + len(lyric_ids)
        total = item.codes.shape[1]
        room = self.context - prompt
        if room < 1:
            raise HeartMuLaError(f"item {item.id}: prompt of {prompt} tokens does not fit the context")
        n = min(total, room)
        if start is None:
            draw = rng.random()
            if total <= room or draw < config.start_crop_prob:
                start = 0
            elif draw < config.start_crop_prob + config.end_crop_prob:
                start = total - n
            else:
                start = rng.randint(0, total - n)
        n = min(n, total - start)
        ends = start + n == total
        k = self.k
        length = prompt + n
        tokens = torch.zeros(length, k + 1, dtype=torch.long)
        mask = torch.zeros(length, k + 1, dtype=torch.bool)
        tokens[: len(tag_ids), -1] = torch.tensor(tag_ids)
        tokens[len(tag_ids) + 1 : prompt, -1] = torch.tensor(lyric_ids)
        mask[:prompt, -1] = True
        codes = item.codes[:, start : start + n].t()  # [n, K]
        tokens[prompt:, :k] = codes
        tokens[prompt:, -1] = self.gen_config.empty_id
        mask[prompt:, :k] = True
        targets = torch.full((length,), -100, dtype=torch.long)
        targets[prompt - 1 : prompt - 1 + n] = codes[:, 0]
        if ends:
            targets[length - 1] = self.gen_config.audio_eos_id
        rows = torch.arange(prompt - 1, prompt - 1 + n)
        sample = Sample(tokens, mask, len(tag_ids), targets, rows, codes.clone(), unconditional,
                        None if unconditional else reference)
        if item.timing and not unconditional:
            spans = line_token_spans(self.tokenizer, item.lyrics, item.timing, config.align_unit)
            sample.sung_frames, sample.line_first, sample.line_end = frame_line_targets(
                spans, start, n, FRAME_RATE, lyric_row=len(tag_ids) + 1)
        return sample


def embed_samples(model: HeartMuLa, samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone input [b, L, D] (right-padded) and codebook-0 targets [b, L] of a batch.

    Rows embed as in generation (`HeartMuLa.embed_prompt_rows`): masked column sums; the reference slot holds
    muq_linear(reference), muq_linear(zeros) without one; unconditional samples have the null embedding in every
    text column and in the slot."""
    b, k = len(samples), model.num_codebooks
    device = model.device
    longest = max(len(s.tokens) for s in samples)
    tokens = torch.zeros(b, longest, k + 1, dtype=torch.long)
    mask = torch.zeros(b, longest, k + 1, dtype=torch.bool)
    targets = torch.full((b, longest), -100, dtype=torch.long)
    for i, s in enumerate(samples):  # right padding: causal attention never lets real rows see it
        tokens[i, : len(s.tokens)] = s.tokens
        mask[i, : len(s.tokens)] = s.mask
        targets[i, : len(s.tokens)] = s.c0_targets
    unconditional = torch.tensor([s.unconditional for s in samples])
    hidden = model.embed_prompt_rows(tokens.to(device), mask.to(device), unconditional.to(device),
                                     [s.reference for s in samples], [s.slot for s in samples])
    return hidden, targets.to(device)


def alignment_targets(samples: list[Sample]) -> AlignmentTargets | None:
    """The rows of a batch that predict a sung frame, with their line's prompt rows; None when none is sung."""
    batch = torch.cat([torch.full((len(s.sung_frames),), i) for i, s in enumerate(samples)])
    if not len(batch):
        return None
    return AlignmentTargets(batch, torch.cat([s.frame_rows[s.sung_frames] for s in samples]),
                            torch.cat([s.line_first for s in samples]), torch.cat([s.line_end for s in samples]))


def _on_device(align: AlignmentTargets | None, device: torch.device) -> AlignmentTargets | None:
    if align is None:
        return None
    return AlignmentTargets(align.batch.to(device), align.rows.to(device), align.first.to(device),
                            align.end.to(device))


def _alignment_recorder(model: HeartMuLa, layer: int | None, heads: int) -> AttentionRecorder:
    layers = model.backbone.layers
    index = len(layers) // 2 if layer is None else layer
    if not 0 <= index < len(layers):
        raise HeartMuLaError(f"align layer {layer} does not exist: the backbone has layers 0-{len(layers) - 1}")
    if not 1 <= heads <= layers[index].attn.num_heads:
        raise HeartMuLaError(f"align heads must be 1-{layers[index].attn.num_heads}, got {heads}")
    return AttentionRecorder(layers[index].attn)


def run_transformer(transformer, x: torch.Tensor, positions: torch.Tensor, checkpoint: bool = False) -> torch.Tensor:
    """`transformer(x, positions)` without a cache; `checkpoint` keeps only each layer's input for the backward pass
    and computes the layer again there (gradient checkpointing: activation memory of one layer, not all)."""
    if not checkpoint:
        return transformer(x, positions)
    from torch.utils.checkpoint import checkpoint as recompute

    rope = transformer.rope_rows(positions)
    for layer in transformer.layers:
        x = recompute(layer, x, rope, None, None, use_reentrant=False)
    return transformer.norm(x)


def lm_losses(model: HeartMuLa, samples: list[Sample], decoder_fraction: float,
              generator: torch.Generator | None = None, align_weight: float = 0.0, align_layer: int | None = None,
              align_heads: int = 2, checkpoint: bool = False, ranks: Ranks | None = None) -> tuple[torch.Tensor, dict]:
    """Mean CE of codebook 0 (backbone) + mean CE of codebooks 1..K-1 (local decoder) over a batch, plus
    `align_weight` x the lyric alignment loss of layer `align_layer` (None: the middle one) when it is on.
    `checkpoint`: gradient checkpointing of both transformers (`run_transformer`).

    With `ranks` of several processes, `samples` is the global batch (drawn alike on every rank) and this rank runs
    only its slice: its losses are its share of the global sums times the world size, so that the average that DDP
    takes of the ranks' gradients is the gradient of the global means. The decoder's frames are chosen over the
    global batch, so the choice is the same whatever the number of processes."""
    ranks = ranks or Ranks()
    k = model.num_codebooks
    owner = torch.cat([torch.full((len(s.frame_rows),), i) for i, s in enumerate(samples)])
    rows = torch.cat([s.frame_rows for s in samples])
    codes = torch.cat([s.frame_codes for s in samples])
    if decoder_fraction < 1.0:  # the local decoder trains on a random subset of the frames
        keep = max(1, round(decoder_fraction * len(rows)))
        chosen = torch.randperm(len(rows), generator=generator)[:keep]
        owner, rows, codes = owner[chosen], rows[chosen], codes[chosen]
    c0_count = sum(int((s.c0_targets != -100).sum()) for s in samples)
    decoder_count = len(rows) * (k - 1)
    sung_count = sum(len(s.sung_frames) for s in samples)
    mine = owner % ranks.world == ranks.rank
    device = model.device
    owner, rows, codes = (owner[mine] // ranks.world).to(device), rows[mine].to(device), codes[mine].to(device)
    samples = ranks.slice(samples)

    hidden, targets = embed_samples(model, samples)
    align = _on_device(alignment_targets(samples), device) if align_weight > 0 else None
    recorder = _alignment_recorder(model, align_layer, align_heads) if align is not None else None
    try:
        out = run_transformer(model.backbone, hidden, torch.arange(hidden.shape[1], device=device), checkpoint)
    finally:
        if recorder is not None:
            recorder.remove()
    c0_sum = F.cross_entropy(model.codebook0_head(out).flatten(0, 1), targets.flatten(), ignore_index=-100,
                             reduction="sum")
    states = out[owner, rows]  # [N, D]: the state that predicted each frame's codebook 0
    offsets = model.config.audio_vocab_size * torch.arange(k - 1, device=device)
    previous = model.audio_embeddings(codes[:, : k - 1] + offsets)  # [N, K-1, D]: emb of c0..c(K-2)
    decoder_in = model.projection(torch.cat([states[:, None], previous], dim=1))  # [N, K, Ddec]
    decoded = run_transformer(model.decoder, decoder_in, torch.arange(k, device=device), checkpoint)
    logits = torch.einsum("nkd,kdv->nkv", decoded[:, 1:], model.audio_head)  # codebook i from position i
    decoder_sum = F.cross_entropy(logits.flatten(0, 1), codes[:, 1:].flatten(), reduction="sum")
    c0_loss = c0_sum * (ranks.world / max(1, c0_count))
    decoder_loss = decoder_sum * (ranks.world / max(1, decoder_count))
    total = c0_loss + decoder_loss
    parts = {"c0": float(c0_loss.detach()), "dec": float(decoder_loss.detach())}
    if recorder is not None:  # a mean over the sung rows: this rank's share of the global mean
        share = len(align.batch) * ranks.world / max(1, sung_count)
        align_loss = line_attention_loss(recorder.attention, recorder.inputs, align, align_heads) * share
        total = total + align_weight * align_loss
        parts["align"] = float(align_loss.detach())
    elif align_weight > 0 and ranks.distributed:
        parts["align"] = 0.0  # every rank logs the same keys (mean_across_ranks)
    return total, parts


def new_model(preset: str, text_vocab: int, codebook_size: int, num_codebooks: int, seed: int) -> HeartMuLa:
    if preset not in LM_PRESETS:
        raise HeartMuLaError(f"unknown LM preset {preset!r}; choose one of {', '.join(LM_PRESETS)}")
    spec = LM_PRESETS[preset]
    config = HeartMuLaConfig(
        backbone_flavor=f"{preset}-backbone", decoder_flavor=f"{preset}-decoder", text_vocab_size=text_vocab,
        audio_vocab_size=codebook_size + AUDIO_SPECIALS, audio_num_codebooks=num_codebooks,
        backbone_config=dict(spec["backbone"]), decoder_config=dict(spec["decoder"]),
    )
    return HeartMuLa(config).init_weights(seed)


def count_parameters(model: HeartMuLa) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class LMTrainReport:
    steps: int
    resumed_from: int
    parameters: int
    items: int
    skipped_items: list[str] = field(default_factory=list)
    first_loss: float | None = None
    last_loss: float | None = None
    validation: list[dict] = field(default_factory=list)


def _save_state(out: Path, model_dir: Path, model: HeartMuLa, optimizer, step: int, config: LMTrainConfig,
                ranks: Ranks) -> None:
    """Rank 0 writes the whole model and optimizer state. Under FSDP every rank calls this (the shards are gathered
    first); otherwise only rank 0 does."""
    if config.fsdp and ranks.distributed:
        weights, optimizer_state = full_state(model, optimizer)
        tensors = {f"{name}::{slot}": value for name, slots in optimizer_state.items()
                   for slot, value in slots.items() if isinstance(value, torch.Tensor)}
    else:
        weights, tensors = model.state_dict(), optimizer_tensors(model, optimizer)
    if ranks.is_main:
        save_state_dict(weights, model_dir)
        model.config.save(model_dir / CONFIG_FILE)
        write_training_state(out, tensors, step, config)


def _learning_rate(step: int, config: LMTrainConfig) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    floor = config.min_lr_ratio
    return config.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def _prepare_tokenizer(out: Path, items: list[CachedItem], config: LMTrainConfig,
                       init: LMFiles | None = None) -> TextTokenizer:
    path = out / TOKENIZER_FILE
    if init is not None:  # a fine-tuned model keeps the text embeddings, so the tokenizer that indexes them
        with atomic_output(path) as tmp:
            shutil.copyfile(init.tokenizer, tmp)
    elif not path.is_file():
        if config.tokenizer:
            source = Path(config.tokenizer)
            if not source.is_file():
                raise HeartMuLaError(f"tokenizer file {source} does not exist")
            shutil.copyfile(source, path)
        else:
            tokenizer = train_bpe_tokenizer(prompt_texts([i.tags for i in items], [i.lyrics for i in items]),
                                            vocab_size=config.vocab_size)
            with atomic_output(path) as tmp:
                tokenizer.save(str(tmp))
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(path))
    bos, eos = raw.token_to_id(BOS), raw.token_to_id(EOS)
    if bos is None or eos is None:
        raise HeartMuLaError(f"tokenizer {path} lacks the special tokens {BOS} and {EOS}")
    return TextTokenizer(raw, bos, eos)


def _recorded_init(data_path: Path, init: LMFiles | None) -> str | None:
    """The model a fine-tuning run started from: named when it starts, kept from the record when it resumes."""
    if init is not None:
        return str(init.model_dir.resolve())
    if data_path.is_file():
        return json.loads(data_path.read_text(encoding="utf-8")).get("init_from")
    return None


@torch.no_grad()
def validation_loss(model: HeartMuLa, builder: SampleBuilder, items: list[CachedItem], config: LMTrainConfig,
                    batch_size: int, losses: Callable | None = None) -> dict:
    """Deterministic: each item from its start, its own tags, all frames through the decoder, no dropout.
    `losses(samples, decoder_fraction)`: the step module of a sharded model (every rank computes the same
    validation); `lm_losses` of `model` by default.

    val_loss has the reference slot empty (comparable with runs without references); when references are trained,
    val_ref_loss is the same loss over the items that have a CLAP embedding, with the song's own one in the slot."""
    model.eval()
    referenced = [item for item in items if item.reference is not None] if config.reference_prob > 0 else []
    result = {}
    for prefix, use_reference in (("val", False), ("val_ref", True)):
        if use_reference:
            if not referenced:
                continue
            items = referenced
        totals = {"c0": 0.0, "dec": 0.0}
        for i in range(0, len(items), batch_size):
            chunk = items[i : i + batch_size]
            samples = [builder.build(item, item.tags, 0, None, config,
                                     reference=item.reference if use_reference else None) for item in chunk]
            _, parts = (losses or functools.partial(lm_losses, model))(samples, 1.0)
            for key in totals:
                totals[key] += parts[key] * len(chunk)
        part = {f"{prefix}_{k}": round(v / max(1, len(items)), 4) for k, v in totals.items()}
        result.update(part, **{f"{prefix}_loss": round(part[f"{prefix}_c0"] + part[f"{prefix}_dec"], 4)})
    model.train()
    return result


def _log_step(log_path: Path, record: dict, bar) -> None:
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")
    if bar is not None:
        bar.update(1)
        bar.set_postfix(loss=record["loss"], c0=record["c0"], dec=record["dec"],
                        **({"val": record["val_loss"]} if "val_loss" in record else {}),
                        **({"val_ref": record["val_ref_loss"]} if "val_ref_loss" in record else {}))


def _check_codec_of_run(out: Path, cache: Path, codec: dict) -> None:
    """A run in `out` continues only on codes of the codec it started with."""
    data_path = out / DATA_FILE
    if data_path.is_file():
        recorded = json.loads(data_path.read_text(encoding="utf-8"))
        if recorded["codec_fingerprint"] != codec["fingerprint"]:
            raise HeartMuLaError(f"{out} was trained on codes of codec {recorded['codec_fingerprint']}, but {cache} "
                                 f"holds codes of codec {codec['fingerprint']}; use a new --out folder")


def _starting_model(config: LMTrainConfig, model_dir: Path, codec: dict):
    """(the model to continue: the run's own or the one `init_from` names, or None for a new one; the located
    `init_from` files or None). Checked before anything is written: a refused start adds nothing to --out."""
    resuming = (model_dir / CONFIG_FILE).is_file()
    init = None
    if config.init_from is not None and not resuming:
        if config.tokenizer:
            raise HeartMuLaError("a fine-tuned model keeps the tokenizer of the model it starts from: give --from "
                                 "or --tokenizer, not both")
        init = locate_lm(config.init_from, config.version)
    if not (resuming or init is not None):
        return None, None
    source = model_dir if resuming else init.model_dir
    model = HeartMuLa.from_pretrained(source)  # float32 whatever the stored dtype
    model.audio_head.data = model.audio_head.data.contiguous()  # undo the inference layout for training
    advice = "use a new --out folder" if resuming else "fine-tune on a cache made with that model's codec"
    if model.config.audio_vocab_size != codec["codebook_size"] + AUDIO_SPECIALS:
        raise HeartMuLaError(f"{source} has an audio vocabulary of {model.config.audio_vocab_size}, the "
                             f"cache's codec {codec['codebook_size']} codes; {advice}")
    if model.num_codebooks != codec["num_codebooks"]:
        raise HeartMuLaError(f"{source} predicts {model.num_codebooks} codebooks, the cache's codec has "
                             f"{codec['num_codebooks']}; {advice}")
    return model, init


def _check_references(cache: Path, items: list, model: HeartMuLa) -> None:
    references = [i for i in items if i.reference is not None]
    if any(i.reference.numel() != model.config.muq_dim for i in references):
        raise HeartMuLaError(f"{cache} holds CLAP embeddings of {references[0].reference.numel()} dimensions but the "
                             f"model's reference slot takes {model.config.muq_dim}: re-tokenize with a CLAP model "
                             "made for it (--clap DIR), or with --no-clap into a new cache")


def _write_training_data(out: Path, cache: Path, index: dict, config: LMTrainConfig, init, train_items: list,
                         val_items: list, skipped: list[str]) -> None:
    """What the checkpoint was trained on (licenses travel with the data)."""
    data_path = out / DATA_FILE
    codec = index["codec"]
    with atomic_output(data_path) as tmp:
        tmp.write_text(json.dumps({
            "cache": str(cache.resolve()), "codec": codec, "codec_fingerprint": codec["fingerprint"],
            "train_items": len(train_items), "val_items": len(val_items), "skipped_long_prompts": skipped,
            # the CLAP model whose embeddings the reference slot learned: use it to embed reference audio at
            # generation time (stream --reference-audio --clap DIR)
            "clap": index.get("clap"), "reference_prob": config.reference_prob,
            "init_from": _recorded_init(data_path, init),
            "train_items_with_reference": sum(i.reference is not None for i in train_items)},
            indent=1, ensure_ascii=False))


def _optimizer(model: HeartMuLa, config: LMTrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on the matrices other than the embeddings."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embedding" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=config.learning_rate, betas=(0.9, 0.95))


def _drop_log_after(log_path: Path, step: int) -> None:
    """Steps logged after the last checkpoint are trained again: drop their lines."""
    if not log_path.is_file():
        return
    kept = [line for line in log_path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line)["step"] <= step]
    with atomic_output(log_path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _batch_samples(builder: SampleBuilder, train_items: list, weights: list[int], rng: random.Random,
                   config: LMTrainConfig) -> list:
    """One step's training samples: songs drawn by length, tags augmented, some unconditional (CFG), some with
    their reference embedding."""
    samples = []
    for item in rng.choices(train_items, weights=weights, k=config.batch_size):
        unconditional = rng.random() < config.uncond_prob
        tags = augment_tags(item.tags, rng, config)
        reference = None
        # Drawn only where a reference is possible: on caches without embeddings the batches ignore reference_prob.
        if not unconditional and item.reference is not None and rng.random() < config.reference_prob:
            reference = item.reference
        samples.append(builder.build(item, tags, None, rng, config, unconditional, reference))
    return samples


def _optimizer_step(model: HeartMuLa, optimizer, loss: torch.Tensor, config: LMTrainConfig) -> float:
    """Returns the gradient norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = full_value(torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip))
    optimizer.step()
    return float(grad_norm)


def _train_step(step_losses, model: HeartMuLa, optimizer, samples: list[Sample], step: int,
                generator: torch.Generator, config: LMTrainConfig, ranks: Ranks, where: Placement) -> dict:
    """One optimizer step on a batch; returns its log record (losses averaged over the ranks)."""
    began = time.perf_counter()
    lr = _learning_rate(step, config)
    for group in optimizer.param_groups:
        group["lr"] = lr
    with where.autocast():
        loss, parts = step_losses(samples, config.decoder_fraction, generator, config.align_weight,
                                  config.align_layer, config.align_heads, ranks=ranks)
    grad_norm = _optimizer_step(model, optimizer, loss, config)
    parts = mean_across_ranks({"loss": float(loss.detach()), **parts})
    return {"step": step + 1, **{k: round(v, 4) for k, v in parts.items()}, "lr": round(lr, 7),
            "grad_norm": round(grad_norm, 3), "frames": sum(len(s.frame_rows) for s in samples),
            "seconds": round(time.perf_counter() - began, 2),
            "references": sum(s.reference is not None for s in samples)}


def _usable_items(builder: SampleBuilder, train_items: list, val_items: list, config: LMTrainConfig):
    """(training items, validation items, ids of training items left out): those whose prompt leaves at least
    `min_frames` frames of the context."""
    skipped = [i.id for i in train_items if config.context - builder.prompt_length(i) < config.min_frames]
    train_items = [i for i in train_items if i.id not in set(skipped)]
    val_items = [i for i in val_items if config.context - builder.prompt_length(i) >= config.min_frames]
    if not train_items:
        raise HeartMuLaError(f"every item's prompt leaves fewer than {config.min_frames} frames in a context of "
                             f"{config.context}; raise --context")
    return train_items, val_items, skipped


def _cache_items(cache: Path, out: Path, config: LMTrainConfig) -> tuple[dict, list, list]:
    """(the cache's index, its training items, its first `val_items` validation items); `out` made."""
    index, items = load_cache(cache)
    out.mkdir(parents=True, exist_ok=True)
    _check_codec_of_run(out, cache, index["codec"])
    train_items = [i for i in items if i.split == "train"]
    val_items = [i for i in items if i.split == "val"][: config.val_items]
    if not train_items:
        raise HeartMuLaError(f"{cache} holds no items of the train split")
    return index, train_items, val_items


def _validate_into(record: dict, report: LMTrainReport, model: HeartMuLa, builder: SampleBuilder, val_items: list,
                   config: LMTrainConfig, where: Placement, losses=None) -> None:
    with where.autocast():
        val = validation_loss(model, builder, val_items, config, config.batch_size, losses)
    record.update(val)
    report.validation.append({"step": record["step"], **val})


def _model_and_tokenizer(out: Path, model_dir: Path, train_items: list, codec: dict, config: LMTrainConfig, ranks):
    """(model, tokenizer, generation config, `init_from` files or None) of the run, the generation config saved."""
    model, init = _starting_model(config, model_dir, codec)
    with main_rank_first():  # the other ranks read the tokenizer that rank 0 trained or copied
        tokenizer = _prepare_tokenizer(out, train_items, config, init)
    gen_config = GenerationConfig(text_bos_id=tokenizer.bos_id, text_eos_id=tokenizer.eos_id,
                                  audio_eos_id=codec["codebook_size"] + 1, empty_id=0)
    if model is None:
        model = new_model(config.preset, tokenizer.vocab_size, codec["codebook_size"], codec["num_codebooks"],
                          config.seed)
    if tokenizer.vocab_size > model.config.text_vocab_size:
        raise HeartMuLaError(f"tokenizer has {tokenizer.vocab_size} tokens, the model {model.config.text_vocab_size}")
    if ranks.is_main:
        gen_config.save(out / GEN_CONFIG_FILE)
    if config.context > model.config.backbone.max_seq_len:
        raise HeartMuLaError(f"--context {config.context} exceeds the backbone's {model.config.backbone.max_seq_len}")
    return model, tokenizer, gen_config, init


def train_lm(cache: str | os.PathLike, out: str | os.PathLike, config: LMTrainConfig | None = None,
             progress: bool = True) -> LMTrainReport:
    """Train (or resume) a HeartMuLa model in `out` on the token cache `cache`."""
    config = config or LMTrainConfig()
    if config.threads:
        torch.set_num_threads(config.threads)
    if not 0.0 <= config.reference_prob <= 1.0:
        raise HeartMuLaError(f"--reference-prob must lie in [0, 1], got {config.reference_prob}")
    if config.align_unit not in ALIGN_UNITS:
        raise HeartMuLaError(f"--align-unit {config.align_unit!r}: choose one of {', '.join(ALIGN_UNITS)}")
    where = placement(config.device, config.precision)
    ranks = current_ranks()  # several processes under torchrun: see heartmula.train.distributed
    ranks.check_batch(config.batch_size)
    cache, out = Path(cache), Path(out)
    index, train_items, val_items = _cache_items(cache, out, config)
    codec = index["codec"]
    model_dir = out / f"HeartMuLa-oss-{config.version}"
    model, tokenizer, gen_config, init = _model_and_tokenizer(out, model_dir, train_items, codec, config, ranks)
    _check_references(cache, train_items + val_items, model)
    builder = SampleBuilder(tokenizer, gen_config, model.num_codebooks, config.context)
    train_items, val_items, skipped = _usable_items(builder, train_items, val_items, config)
    if ranks.is_main:
        _write_training_data(out, cache, index, config, init, train_items, val_items, skipped)

    # FSDP turns the parameters into shards: the optimizer is built on them, after sharding
    model.to(where.device)
    step_losses = data_parallel(model, lm_losses, ranks, fully_sharded=config.fsdp, bfloat16=where.mixed)
    optimizer = _optimizer(model, config)
    start_step = load_training_state(out, model, optimizer)
    report = LMTrainReport(config.steps, start_step, count_parameters(model), len(train_items), skipped)
    rng = random.Random(config.seed * 1_000_003 + start_step)
    generator = torch.Generator().manual_seed(config.seed + start_step)
    # Longer songs are drawn more often: every frame of the corpus is about equally likely to be seen.
    weights = [i.codes.shape[1] for i in train_items]

    bar = None
    if progress and ranks.is_main:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, initial=start_step, desc="train lm", unit="step")
    model.train()
    log_path = out / LOG_FILE
    if ranks.is_main:
        _drop_log_after(log_path, start_step)
    for step in range(start_step, config.steps):
        samples = _batch_samples(builder, train_items, weights, rng, config)
        record = _train_step(step_losses, model, optimizer, samples, step, generator, config, ranks, where)
        if report.first_loss is None:
            report.first_loss = record["loss"]
        report.last_loss = record["loss"]
        last_step = step + 1 == config.steps
        every_rank = ranks.is_main or config.fsdp  # sharded: validation and saving are collectives
        if every_rank and val_items and (last_step or (step + 1) % config.eval_every == 0):
            _validate_into(record, report, model, builder, val_items, config, where,
                           step_losses if config.fsdp else None)
        if ranks.is_main:
            _log_step(log_path, record, bar)
        if every_rank and (last_step or (step + 1) % config.save_every == 0):
            model.eval()
            _save_state(out, model_dir, model, optimizer, step + 1, config, ranks)
            model.train()
    if bar is not None:
        bar.close()
    if (ranks.is_main or config.fsdp) and start_step >= config.steps:  # nothing trained: still write the model
        _save_state(out, model_dir, model, optimizer, start_step, config, ranks)
    model.eval()
    barrier()  # every rank returns once rank 0 has written the last checkpoint
    return report
