"""Train HeartCLAP contrastively on corpus manifests (`heartmula data build` / `heartmula data import`).

Per step, on a batch of distinct songs:
    clip_i   = a random `clip_seconds` window of song i (log-mel + chroma from a feature cache, random gain)
    prompt_i = a description of song i: a random subset of its tags (tag masking), in a random language and
               sentence frame, sometimes with a lyrics line; or, rarely, a lyrics line alone
    loss     = multi-positive InfoNCE, both directions: prompt i is a correct match for every clip whose tags
               include all the tags the prompt states (a masked prompt "slow, piano" fits many songs), plus
             + tag_weight * a sigmoid loss between each clip and single-tag prompts of the whole tag vocabulary
               (what zero-shot tagging and tag adherence use)
             + align_weight * a cross-lingual loss: `align_prompts` of the step's tag sets, each written in all five
               languages with one sentence frame, are pulled onto their mean direction (1 - cosine). The frozen
               encoder puts translations near each other but not on top of each other; the language-specific rest
               decides which of many similar songs come first, so queries in different languages disagreed.
Only the audio tower and the text projection learn; the sentence encoder stays frozen.

One output folder holds everything: the model (config.json + model.safetensors, loadable at any time), the
optimiser state (`train_state.pt`, tensors only, read with weights_only=True), the log (`train_log.jsonl`, with
held-out retrieval metrics every `eval_every` steps) and the feature cache (`features/`). Running the same command
again resumes from the last save; the random stream of step n depends only on (seed, n).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from heartmula.clap.config import HeartCLAPConfig
from heartmula.clap.data import Item, embed_items, load_items
from heartmula.clap.model import HeartCLAP
from heartmula.clap.prompts import LANGUAGES, known_tags, normalise_tag, tag_categories, tags_prompt, training_prompt
from heartmula.clap.real_music import parse_source, source_rows
from heartmula.clap.tagging import tag_probabilities
from heartmula.errors import HeartMuLaError
from heartmula.eval.clap_metrics import retrieval_metrics
from heartmula.eval.clap_real import false_positive_rates
from heartmula.files import atomic_output
from heartmula.manifest import parse_tags, read_manifest
from heartmula.train.clap_augment import AugmentConfig, augment_batch, mean_power, mix_voice
from heartmula.train.device import placement, to_cpu
from heartmula.train.distributed import (
    barrier,
    current_ranks,
    data_parallel,
    gather_with_grad,
    in_batch_order,
    main_rank_first,
    mean_across_ranks,
    sum_across_ranks,
)

STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.jsonl"
DATA_FILE = "training_data.json"
FEATURE_DIR = "features"
HELD_OUT_SPLITS = ("val", "test")
# What a vocal stem tells about its song: who sings and in which language (nothing of genre, instruments or key).
VOICE_CATEGORIES = ("vocal", "language")
# Logit of pairs whose match the labels cannot settle (kept out of the softmax; finite so that 0 * logit stays 0).
IGNORED_LOGIT = -1e4


@dataclass
class ClapTrainConfig:
    preset: str = "default"  # "default" or "tiny" (tests)
    steps: int = 3000
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    tag_weight: float = 0.5
    keep_tags: float = 0.7  # probability that a tag stays in a training prompt
    lyrics_rate: float = 0.1
    align_weight: float = 4.0  # cross-lingual alignment of projected prompts (0 turns it off)
    align_prompts: int = 12  # tag sets per step written in all five languages for the alignment loss
    # Train the text projection only, against fixed whole-song audio embeddings (computed once, kept in the run
    # folder): a cheap stage on top of a trained model, e.g. to add the alignment loss on a busy machine.
    text_only: bool = False
    gain_jitter: float = 1.0  # random offset of the log-mel (natural-log units, ~4.3 dB each)
    eval_every: int = 100
    save_every: int = 50
    max_minutes: float | None = None  # stop (and save) after this much wall time; rerun to continue
    seed: int = 0
    # Real recordings (`FOLDER` or `FOLDER=tag,tag`, default tag "instrumental"; heartmula.clap.real_music): a
    # `real_share` of each batch are their clips, a `mix_share` are their clips with a corpus vocal stem on top
    # (the voice's tags: vocal gender and language). `eval_real` sources are scored in the log, never trained on.
    real_sources: tuple[str, ...] = ()
    eval_real: tuple[str, ...] = ()
    real_share: float = 0.15
    mix_share: float = 0.15
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    device: str = "auto"  # auto, cpu, cuda or cuda:N (heartmula.train.device; under torchrun cuda:LOCAL_RANK)
    precision: str = "auto"  # float32, or bfloat16 mixed precision; auto: bfloat16 on CUDA, float32 on the CPU


def crop(item: Item, frames: int, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    total = item.mel.shape[1]
    if total <= frames:
        pad = frames - total
        return (np.pad(item.mel, ((0, 0), (0, pad)), constant_values=math.log(1e-6)),
                np.pad(item.chroma, ((0, 0), (0, pad))))
    start = rng.randrange(total - frames + 1)
    return item.mel[:, start : start + frames], item.chroma[:, start : start + frames]


def positives(prompt_tags: list[frozenset[str]], items: list[Item]) -> torch.Tensor:
    """[prompts, clips] bool: prompt i fits clip j if j is its own song or j has every tag prompt i states."""
    n = len(items)
    pos = torch.eye(n, dtype=torch.bool)
    for i, stated in enumerate(prompt_tags):
        if stated:
            for j, item in enumerate(items):
                pos[i, j] |= stated <= item.tags
    return pos


def unknown_pairs(prompt_tags: list[frozenset[str]], items: list[Item]) -> torch.Tensor:
    """[prompts, clips] bool: pairs the clip's labels cannot settle. A clip whose tags cover only some categories
    (`Item.known`: a real recording known to be instrumental) neither fits nor misses a prompt whose tags in those
    categories it has but that also states tags of other categories ("instrumental, piano")."""
    categories = tag_categories()
    out = torch.zeros(len(prompt_tags), len(items), dtype=torch.bool)
    for j, item in enumerate(items):
        if item.known is None:
            continue
        for i, stated in enumerate(prompt_tags):
            settled = {t for t in stated if categories.get(t) in item.known}
            out[i, j] = i != j and settled <= item.tags and len(settled) < len(stated)
    return out


def tag_targets(items: list[Item], vocabulary: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """([clips, tags] labels, [clips, tags] weights): a tag of a category the clip's labels do not cover has weight
    0 (unknown, not absent)."""
    categories = tag_categories()
    labels = torch.tensor([[t in it.tags for t in vocabulary] for it in items], dtype=torch.float32)
    weights = torch.tensor([[it.known is None or categories.get(t) in it.known for t in vocabulary]
                            for it in items], dtype=torch.float32)
    return labels, weights


def multi_positive_nce(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a uniform target over the positives, rows and columns."""
    target = pos.float()
    rows = -(target / target.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    cols = -(target / target.sum(0, keepdim=True) * F.log_softmax(logits, dim=0)).sum(0).mean()
    return (rows + cols) / 2


def cross_lingual_spread(text: torch.Tensor) -> torch.Tensor:
    """Mean (1 - cosine) between each prompt's normalised embeddings [prompts, languages, dim] and their mean
    direction: 0 when every language lands on the same point."""
    centre = F.normalize(text.mean(dim=1, keepdim=True), dim=-1)
    return (1.0 - (text * centre).sum(dim=-1)).mean()


def aligned_prompts(tag_sets: list[frozenset[str]], rng: random.Random, count: int) -> list[str]:
    """`count` of the tag sets (tagless lyrics prompts left out), each in every language with one shared
    sentence-frame index: [count * len(LANGUAGES)] prompts, language-major within each tag set."""
    stated = [sorted(s) for s in tag_sets if s]
    chosen = rng.sample(stated, min(count, len(stated)))
    out = []
    for tags in chosen:
        template = rng.randrange(4)
        out += [tags_prompt(tags, lang, template) for lang in LANGUAGES]
    return out


def voice_row(row: dict) -> dict | None:
    """A manifest row's vocal stem as a row of its own: tagged with the song's vocal and language tags only."""
    if not row.get("vocals"):
        return None
    categories = tag_categories()
    tags = [t for t in parse_tags(row.get("tags") or "") if categories.get(normalise_tag(t)) in VOICE_CATEGORIES]
    return {"id": f"{row['id']}.vocals", "audio": row["vocals"], "tags": ",".join(tags), "lyrics": row.get("lyrics"),
            "known": list(VOICE_CATEGORIES), "split": row["split"]}


def mixed_item(backing: Item, voice: Item, frames: int, rng: random.Random, augment: AugmentConfig) -> Item:
    """A crop of `voice` (the loudest of three tries, so that it is sung) over a crop of `backing`."""
    back = crop(backing, frames, rng)
    sung = max((crop(voice, frames, rng) for _ in range(3)), key=lambda c: mean_power(c[0].astype(np.float32)))
    mel, chroma = mix_voice(back, sung, rng.uniform(*augment.voice_db))
    return Item(f"{voice.id}+{backing.id}", voice.tags, voice.tag_list, voice.lyrics, mel.astype(np.float16),
                chroma.astype(np.float16), voice.known)


def step_items(pools: dict[str, list[Item]], batch: int, frames: int, rng: random.Random,
               config: ClapTrainConfig) -> list[Item]:
    """The step's clips: corpus songs, real recordings (`real_share`) and voices over real backing (`mix_share`)."""
    real, voices = pools.get("real", []), pools.get("voices", [])
    n_real = min(len(real), round(batch * config.real_share)) if real else 0
    n_mix = round(batch * config.mix_share) if real and voices else 0
    chosen = rng.sample(pools["corpus"], min(len(pools["corpus"]), batch - n_real - n_mix))
    chosen += rng.sample(real, n_real)
    chosen += [mixed_item(rng.choice(real), rng.choice(voices), frames, rng, config.augment) for _ in range(n_mix)]
    return chosen


def real_pools(rows: list[dict], model: HeartCLAP, config: ClapTrainConfig, cache_dir: Path,
               progress: bool) -> tuple[dict, list]:
    """Feature-cached real recordings (training and held-out) and corpus vocal stems, with the skipped files."""
    pools, skipped = {}, []
    for name, sources, split in (("real", config.real_sources, "train"), ("eval_real", config.eval_real, "real")):
        if sources:
            real_rows = [r for s in sources for r in source_rows(parse_source(s), split)]
            pools[name], more = load_items(real_rows, model, cache_dir, progress)
            skipped += more
    if config.real_sources and config.mix_share > 0:
        voices = [v for v in map(voice_row, rows) if v and v["split"] == "train" and v["tags"]]
        pools["voices"], more = load_items(voices, model, cache_dir, progress)
        skipped += more
    return pools, skipped


def real_metrics(model: HeartCLAP, items: list[Item]) -> dict:
    """Gated vocal / language false-positive rates on held-out real instrumental recordings."""
    audio = embed_items(model, items)
    rates = false_positive_rates(tag_probabilities(model, audio, known_tags()), known_tags())
    return {f"real_{k}": v for k, v in rates.items()}


def held_out_metrics(model: HeartCLAP, items: list[Item]) -> dict:
    """Tag-prompt retrieval on held-out songs: the full tag list as a query, in English and in every language."""
    audio = embed_items(model, items)
    relevant = np.array([[a.tags == b.tags for b in items] for a in items])
    out = {}
    mean_r10 = []
    texts = model.embed_text([tags_prompt(it.tag_list, lang) for lang in LANGUAGES for it in items])
    for i, lang in enumerate(LANGUAGES):
        text = texts[i * len(items) : (i + 1) * len(items)]
        t2a = retrieval_metrics(text @ audio.T, relevant)
        mean_r10.append(t2a["R@10"])
        if lang == "en":
            out.update({f"t2a_{k}": v for k, v in t2a.items()})
            out.update({f"a2t_{k}": v for k, v in retrieval_metrics(audio @ text.T, relevant.T).items()})
    out["t2a_R@10_5lang"] = float(np.mean(mean_r10))
    by_prompt = torch.from_numpy(texts).view(len(LANGUAGES), len(items), -1).transpose(0, 1)
    out["xl_spread"] = float(cross_lingual_spread(by_prompt))
    return out


def _lr(step: int, config: ClapTrainConfig) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _fixed_audio_embeddings(model: HeartCLAP, items: list[Item], out: Path) -> torch.Tensor:
    """Whole-song embeddings of the training songs under the (frozen) audio tower, cached in the run folder so that a
    resumed text-only run does not embed the corpus again."""
    path = out / "fixed_audio.npz"
    ids = np.array([it.id for it in items])
    if path.is_file():
        with np.load(path, allow_pickle=False) as data:
            if data["ids"].tolist() == ids.tolist():
                return torch.from_numpy(data["vectors"])
    vectors = embed_items(model, items).astype(np.float32)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, ids=ids, vectors=vectors)
    return torch.from_numpy(vectors)


def _save(model: HeartCLAP, optimizer, step: int, out: Path) -> None:
    """The model and the optimizer state, as CPU tensors whatever the training device."""
    model.save_pretrained(out)
    with atomic_output(out / STATE_FILE) as tmp:
        torch.save({"step": torch.tensor(step), "optimizer": to_cpu(optimizer.state_dict())}, tmp)


def _log(out: Path, record: dict) -> None:
    with (out / LOG_FILE).open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _model_and_optimizer(out: Path, config: ClapTrainConfig, model_config: HeartCLAPConfig | None,
                         device: torch.device):
    """The model on `device` (resumed from `out` when it holds one), its optimiser and the step to continue
    from."""
    resumed_from = 0
    if (out / "config.json").is_file():
        model = HeartCLAP.from_pretrained(out)
    else:
        if model_config is None:
            model_config = HeartCLAPConfig.tiny() if config.preset == "tiny" else HeartCLAPConfig()
        torch.manual_seed(config.seed)
        model = HeartCLAP(model_config)
    model.to(device).train()
    if config.text_only:
        model.audio.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    if (out / STATE_FILE).is_file():
        state = torch.load(out / STATE_FILE, weights_only=True, map_location="cpu")  # moved to the parameters
        saved_sizes = [len(group["params"]) for group in state["optimizer"]["param_groups"]]
        if saved_sizes == [len(group["params"]) for group in optimizer.param_groups]:
            optimizer.load_state_dict(state["optimizer"])
        # else: a new stage trains other parameters (--text-only after joint training): its moments start fresh
        resumed_from = int(state["step"])
    return model, optimizer, resumed_from


def _write_training_data(out: Path, manifests, rows, pools: dict, skipped: list, vocabulary, config,
                         frame_rate: float) -> None:
    hours = {name: sum(it.mel.shape[1] for it in items) / frame_rate / 3600 for name, items in pools.items()}
    (out / DATA_FILE).write_text(json.dumps({
        "manifests": [str(m) for m in manifests], "train_items": len(pools["corpus"]),
        "held_out_items": len(pools["held"]), "skipped": skipped, "tags": vocabulary,
        "train_config": asdict(config), "licenses": sorted({r["license"] for r in rows}),
        "train_hours": sum(r["duration"] for r in rows if r["split"] == "train") / 3600,
        "real_tracks": len(pools.get("real", [])), "real_hours": hours.get("real", 0.0),
        "vocal_stems": len(pools.get("voices", [])), "eval_real_tracks": len(pools.get("eval_real", [])),
    }, indent=1, ensure_ascii=False), encoding="utf-8")


def _step_loss(model: HeartCLAP, chosen: list[Item], vocabulary: list[str], rng: random.Random, step: int,
               config: ClapTrainConfig, fixed_audio: torch.Tensor | None, row_of: dict) -> tuple[torch.Tensor, dict]:
    """The training loss of one step's clips and its parts."""
    frames = model.config.clip_frames
    device = model.logit_scale.device
    crops = [crop(it, frames, rng) for it in chosen]
    mel = torch.from_numpy(np.stack([c[0] for c in crops]).astype(np.float32))
    mel += torch.tensor([rng.uniform(-config.gain_jitter, config.gain_jitter) for _ in chosen])[:, None, None]
    if config.augment.rate > 0:
        mel = augment_batch(mel, rng, model.config, config.augment)
    mel, chroma = mel.to(device), torch.from_numpy(np.stack([c[1] for c in crops]).astype(np.float32)).to(device)
    prompts = [training_prompt(it.tag_list, it.lyrics, rng, config.keep_tags, config.lyrics_rate)
               for it in chosen]
    tag_language = rng.choice(LANGUAGES)
    tag_prompts = [tags_prompt([t], tag_language, rng.randrange(4)) for t in vocabulary]
    # Its own seeded stream, so the batches are the same whether the alignment is on or off.
    align = (aligned_prompts([s for _, s in prompts], random.Random(f"align-{config.seed}-{step}"),
                             config.align_prompts) if config.align_weight > 0 else [])
    if fixed_audio is None:  # each rank embeds its slice of the clips; the loss sees the whole batch
        ranks = current_ranks()
        mine = model.audio_embedding(mel[ranks.rank :: ranks.world], chroma[ranks.rank :: ranks.world])
        audio = in_batch_order(gather_with_grad(mine), ranks)
    else:
        audio = fixed_audio[[row_of[it.id] for it in chosen]]
    # One call to the sentence encoder per step: each call has a fixed cost well above that of a sentence.
    sentences = model.encode_sentences([p for p, _ in prompts] + tag_prompts + align)
    text = model.text_embedding(sentences[: len(prompts)])
    scale = model.logit_scale.clamp(max=math.log(100.0)).exp()
    stated = [s for _, s in prompts]
    logits = (scale * text @ audio.T).masked_fill(unknown_pairs(stated, chosen).to(device), IGNORED_LOGIT)
    contrastive = multi_positive_nce(logits, positives(stated, chosen).to(device))
    tag_text = model.text_embedding(sentences[len(prompts) : len(prompts) + len(tag_prompts)])
    labels, weights = (t.to(device) for t in tag_targets(chosen, vocabulary))
    tag_loss = F.binary_cross_entropy_with_logits(scale * audio @ tag_text.T + model.tag_bias, labels,
                                                  weight=weights, reduction="sum") / weights.sum().clamp(min=1.0)
    loss = contrastive + config.tag_weight * tag_loss
    spread = torch.zeros((), device=device)
    if align:
        aligned = model.text_embedding(sentences[len(prompts) + len(tag_prompts) :])
        spread = cross_lingual_spread(aligned.view(-1, len(LANGUAGES), aligned.shape[-1]))
        loss = loss + config.align_weight * spread
    return loss, {"contrastive": contrastive.item(), "tag": tag_loss.item(), "spread": spread.item(),
                  "scale": scale.item()}


def _training_pools(rows: list[dict], model: HeartCLAP, config: ClapTrainConfig, out: Path,
                    progress: bool) -> tuple[dict, list]:
    """The items of every pool (`corpus`, `held` and the real-audio ones of `real_pools`) and the rows passed over;
    rank 0 writes the feature cache, the others read it."""
    cache_dir = Path(os.environ.get("HEARTMULA_CLAP_FEATURES", out / FEATURE_DIR))
    train_rows = [r for r in rows if r["split"] == "train"]
    held_rows = [r for r in rows if r["split"] in HELD_OUT_SPLITS]
    with main_rank_first():
        train_items, skipped = load_items(train_rows, model, cache_dir, progress)
        held_items, held_skipped = load_items(held_rows, model, cache_dir, progress)
        pools, real_skipped = real_pools(rows, model, config, cache_dir, progress)
    pools.update(corpus=train_items, held=held_items)
    if len(train_items) < 2:
        raise HeartMuLaError(f"only {len(train_items)} usable training songs (tagged and readable); need >= 2")
    return pools, skipped + held_skipped + real_skipped


def _optimizer_step(model: HeartCLAP, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()


def _log_and_save(model: HeartCLAP, optimizer, out: Path, config: ClapTrainConfig, record: dict, pools: dict,
                  started: float) -> bool:
    """Rank 0 evaluates (every `eval_every` steps and at the end), logs `record` and saves (every `save_every`
    steps, at the end, and when out of time). Returns whether time is up, the same on every rank."""
    ranks, step = current_ranks(), record["step"]
    if ranks.is_main and (step % config.eval_every == 0 or step == config.steps):
        record.update(held_out_metrics(model, pools["held"]) if pools["held"] else {})
        record.update(real_metrics(model, pools["eval_real"]) if pools.get("eval_real") else {})
        model.train()
    if ranks.is_main:
        _log(out, record)
    # every rank stops at the same step: rank 0's clock decides
    out_of_time = bool(sum_across_ranks(torch.tensor(ranks.is_main and config.max_minutes is not None
                                                     and time.time() - started > 60 * config.max_minutes)))
    if ranks.is_main and (step % config.save_every == 0 or step == config.steps or out_of_time):
        _save(model, optimizer, step, out)
    return out_of_time


def train_clap(
    manifests: list[str | os.PathLike], out: str | os.PathLike, config: ClapTrainConfig | None = None,
    progress: bool = True, model_config: HeartCLAPConfig | None = None,
) -> dict:
    from tqdm import tqdm

    config = config or ClapTrainConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [row for m in manifests for row in read_manifest(m)]
    if not any(r["split"] == "train" for r in rows):
        raise HeartMuLaError("the manifests have no rows with split 'train'; build a corpus with `heartmula data "
                             "build` or import songs with `heartmula data import`")
    where = placement(config.device, config.precision)
    model, optimizer, resumed_from = _model_and_optimizer(out, config, model_config, where.device)
    ranks = current_ranks()  # several processes under torchrun: see heartmula.train.distributed
    progress = progress and ranks.is_main

    pools, skipped = _training_pools(rows, model, config, out, progress)
    train_items, held_items = pools["corpus"], pools["held"]
    vocabulary = sorted({t for it in train_items + pools.get("real", []) for t in it.tags})
    if ranks.is_main:
        _write_training_data(out, manifests, rows, pools, skipped, vocabulary, config,
                             model.config.sample_rate / model.config.hop_length)

    with main_rank_first():
        fixed_audio = _fixed_audio_embeddings(model, train_items, out).to(where.device) if config.text_only else None
    row_of = {it.id: i for i, it in enumerate(train_items)}
    batch = min(config.batch_size, len(train_items))
    ranks.check_batch(batch)
    # --text-only leaves the audio tower out of the step
    step_loss = data_parallel(model, _step_loss, ranks, find_unused_parameters=True)
    started = time.time()
    step = resumed_from
    first_loss = last_loss = None
    bar = tqdm(total=config.steps, initial=step, desc="train clap", disable=not progress)
    while step < config.steps:
        rng = random.Random(config.seed * 1_000_003 + step)
        chosen = step_items(pools, batch, model.config.clip_frames, rng, config)
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, config)
        with where.autocast():
            loss, parts = step_loss(chosen, vocabulary, rng, step, config, fixed_audio, row_of)
        _optimizer_step(model, optimizer, loss)
        step += 1
        parts = mean_across_ranks({"loss": loss.item(), **parts})  # the same on every rank: the loss is global
        last_loss = parts.pop("loss")
        first_loss = last_loss if first_loss is None else first_loss
        bar.update(1)
        bar.set_postfix(loss=f"{last_loss:.3f}")
        record = {"step": step, "loss": last_loss, **parts, "lr": _lr(step - 1, config),
                  "elapsed_s": round(time.time() - started, 1)}
        if _log_and_save(model, optimizer, out, config, record, pools, started):
            break
    bar.close()
    if step == resumed_from and ranks.is_main:  # nothing to do: still write a loadable model
        model.save_pretrained(out)
    barrier()  # every rank returns once rank 0 has written the last checkpoint
    return {"steps": step, "resumed_from": resumed_from, "first_loss": first_loss, "last_loss": last_loss,
            "train_items": len(train_items), "held_out_items": len(held_items), "skipped": skipped}
