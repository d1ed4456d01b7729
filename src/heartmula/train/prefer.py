"""Preference tuning of a HeartMuLa LM with DPO on its own songs (`heartmula train prefer`, alias `dpo`).

One round:
  1. sample K songs per training prompt from the current policy (base + adapter merged at load, the real path)
     and decode them;
  2. score each song with the rewards of `heartmula.eval.preference` (tag, tempo, drums, voice), each z-scored
     among the prompt's K songs and summed with its weight;
  3. pair the best with the worst song of a prompt (and the second best with the second worst when K >= 4);
  4. train with the DPO loss  -log sigmoid(beta * ((log pi(c) - log pi(r)) - (log ref(c) - log ref(r))))
     where log pi is the song's log-likelihood (codebook 0 from the backbone, codebooks 1-7 from the local decoder)
     under the policy and ref the frozen base: the LoRA model with its adapter switched off, or a frozen copy when
     the whole model trains.
Everything lives in OUT: the adapter (PEFT layout; or OUT/policy, a checkpoint root, for the full model), the
optimizer state, OUT/rounds/<n>/ (the round's codes and rewards, so a resumed run never samples again) and
prefer_log.jsonl (each reward separately, per round; DPO loss, margins and accuracy per step). Running again with
the same OUT resumes; a larger --rounds continues.
"""

from __future__ import annotations

import copy
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

from heartmula.clap import load_clap
from heartmula.errors import HeartMuLaError
from heartmula.eval.preference import REWARDS, evaluate_pipeline, song_rewards
from heartmula.eval.report_prompts import PROMPTS, Prompt
from heartmula.files import atomic_output
from heartmula.lm.generation import SamplingParams
from heartmula.lm.lora import ADAPTER_WEIGHTS, DEFAULT_PARTS, DEFAULT_TARGETS
from heartmula.lm.model import HeartMuLa
from heartmula.lm.pretrained import GEN_CONFIG_FILE, TOKENIZER_FILE
from heartmula.pipeline import HeartMuLaPipeline
from heartmula.song_models import resolve_codec
from heartmula.train.lm import LMTrainConfig, Sample, SampleBuilder, embed_samples
from heartmula.train.lora import attach_lora, load_frozen_base, save_adapter, trainable_parameters
from heartmula.train.state import load_training_state, save_training_state
from heartmula.train.token_cache import CachedItem

LOG_FILE = "prefer_log.jsonl"
STATE_JSON = "prefer_state.json"
POLICY_DIR = "policy"


@dataclass
class PreferConfig:
    rounds: int = 3
    songs_per_prompt: int = 4  # K
    seconds: float = 8.0  # length of every sampled song
    epochs: int = 2  # passes over a round's pairs
    pair_batch: int = 4  # pairs per optimiser step
    beta: float = 0.1
    learning_rate: float = 5e-4
    lora: bool = True  # False: tune every parameter against a frozen copy
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    parts: tuple[str, ...] = DEFAULT_PARTS
    weights: dict = field(default_factory=lambda: {"tag": 1.0, "tempo": 1.0, "drums": 0.5, "voice": 0.5})
    min_margin: float = 0.5  # weighted z-score gap below which a pair is not used
    cfg_scale: float = 1.5
    version: str = "3B"
    codec: str | None = None
    seed: int = 0
    threads: int | None = None


@dataclass
class ScoredSong:
    prompt: int  # index into the prompt list
    seed: int
    codes: np.ndarray  # [K, frames]
    rewards: dict


# --- prompts -----------------------------------------------------------------------------------------------------
STYLE_SOUNDS = {  # style -> (instruments with drums, instruments without), in the corpus' tag vocabulary
    "pop": ("synthesizer,bass,drums", "electric piano,strings"),
    "rock": ("electric guitar,bass,drums", "electric guitar,bass"),
    "electronic": ("synthesizer,synth bass,drums", "synthesizer,synth bass"),
    "folk": ("acoustic guitar,flute,bass,drums", "acoustic guitar,flute"),
    "ballad": ("piano,bass,drums", "piano,strings"),
    "classical": ("strings,drums", "violin,viola,cello,strings"),
    "hymn": ("organ,drums", "organ"),
}
MOODS = {"slow": ("calm", "sad", "peaceful"), "moderate": ("happy", "romantic"), "fast": ("energetic", "uplifting")}
LYRICS = ("[verse]\nwalking down the road tonight\nsinging to the stars so bright",
          "[verse]\nthe rain is falling on the town\nwe sing until the sun goes down")


def training_prompts(count: int = 24, seed: int = 0) -> list[Prompt]:
    """Tag prompts drawn over styles, slow/fast tempo (against each style's habit too), drums or none, some with
    lyrics; written like the corpus' tags (style, instruments, mood, tempo, vocal)."""
    rng = random.Random(seed)
    prompts = []
    for i in range(count):
        style = rng.choice(sorted(STYLE_SOUNDS))
        tempo = ("slow", "fast")[i % 2]
        drums = rng.random() < 0.5
        sung = i % 4 == 3
        tags = [style, STYLE_SOUNDS[style][0 if drums else 1], rng.choice(MOODS[tempo]), tempo,
                "female vocal,english" if sung else "instrumental"]
        prompts.append(Prompt(f"train-{i:02d}", "en" if sung else None, ",".join(tags), LYRICS[i % 2] if sung else ""))
    return prompts


def held_out_prompts() -> list[Prompt]:
    """The quality report's fixed prompts (`heartmula.eval.report.PROMPTS`), never trained on."""
    return list(PROMPTS)


# --- pairs -------------------------------------------------------------------------------------------------------
def combined_scores(rewards: list[dict], weights: dict) -> np.ndarray:
    """Each reward z-scored among one prompt's songs (rewards that are missing or all equal count 0), weighted."""
    total = np.zeros(len(rewards))
    for name in REWARDS:
        values = [r.get(name) for r in rewards]
        if any(v is None or not math.isfinite(v) for v in values):
            continue
        values = np.array(values, dtype=np.float64)
        spread = values.std()
        if spread > 1e-9:
            total += weights.get(name, 0.0) * (values - values.mean()) / spread
    return total


def preference_pairs(songs: list[ScoredSong], weights: dict, min_margin: float) -> list[tuple[int, int]]:
    """(chosen, rejected) song indices: per prompt best vs worst, and second best vs second worst when K >= 4."""
    pairs = []
    for prompt in sorted({s.prompt for s in songs}):
        members = [i for i, s in enumerate(songs) if s.prompt == prompt]
        scores = combined_scores([songs[i].rewards for i in members], weights)
        order = [members[j] for j in np.argsort(-scores)]
        ranked = dict(zip(members, scores))
        for rank in range(len(order) // 4 + 1 if len(order) >= 2 else 0):
            chosen, rejected = order[rank], order[-1 - rank]
            if chosen != rejected and ranked[chosen] - ranked[rejected] >= min_margin:
                pairs.append((chosen, rejected))
    return pairs


# --- log-likelihoods and the loss ---------------------------------------------------------------------------------
def song_samples(builder: SampleBuilder, prompts: list[Prompt], songs: list[ScoredSong]) -> list[Sample]:
    """Training rows of each song under its prompt; no EOS target (the songs were cut at a fixed length)."""
    config = LMTrainConfig(context=builder.context)
    samples = []
    for song in songs:
        prompt = prompts[song.prompt]
        item = CachedItem(prompt.id, torch.from_numpy(song.codes).long(), prompt.lyrics, prompt.tags, None, "train")
        sample = builder.build(item, prompt.tags, 0, None, config)
        sample.c0_targets[len(sample.tokens) - 1] = -100
        samples.append(sample)
    return samples


def sequence_logprobs(model: HeartMuLa, samples: list[Sample]) -> torch.Tensor:
    """log p(song | prompt) [b]: codebook 0 over every frame from the backbone, codebooks 1..K-1 from the decoder."""
    k = model.num_codebooks
    hidden, targets = embed_samples(model, samples)
    out = model.backbone(hidden, torch.arange(hidden.shape[1]))
    c0 = -F.cross_entropy(model.codebook0_head(out).transpose(1, 2), targets, ignore_index=-100, reduction="none")
    batch_index = torch.cat([torch.full((len(s.frame_rows),), i) for i, s in enumerate(samples)])
    states = out[batch_index, torch.cat([s.frame_rows for s in samples])]
    codes = torch.cat([s.frame_codes for s in samples])
    offsets = model.config.audio_vocab_size * torch.arange(k - 1)
    previous = model.audio_embeddings(codes[:, : k - 1] + offsets)
    decoded = model.decoder(model.projection(torch.cat([states[:, None], previous], dim=1)), torch.arange(k))
    logits = torch.einsum("nkd,kdv->nkv", decoded[:, 1:], model.audio_head)
    frame_lp = -F.cross_entropy(logits.transpose(1, 2), codes[:, 1:], reduction="none").sum(dim=1)
    decoder_lp = torch.zeros(len(samples), dtype=frame_lp.dtype).index_add(0, batch_index, frame_lp)
    return c0.sum(dim=1) + decoder_lp


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float) -> tuple[torch.Tensor, dict]:
    """Mean DPO loss over pairs, with the implicit reward margin and the share of pairs ranked right."""
    margin = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    loss = -F.logsigmoid(beta * margin).mean()
    return loss, {"margin": float(margin.detach().mean()), "accuracy": float((margin > 0).float().mean())}


# --- one run -----------------------------------------------------------------------------------------------------
class PolicyState:
    """The trained model and its frozen reference: LoRA (adapter off = reference) or a full model and a copy."""

    def __init__(self, base, out: Path, config: PreferConfig):
        self.files, model, self.tokenizer, self.gen_config = load_frozen_base(base, config.version)
        self.base_model, self.out, self.config = model, out, config
        if config.lora:
            self.model = attach_lora(model, out, config.rank, config.alpha, config.dropout, config.targets,
                                     config.parts)
            self.network = model  # the HeartMuLa inside the peft model, its adapters attached
            self.reference = None
        else:
            self.reference = copy.deepcopy(model).requires_grad_(False)  # the starting model, on every resume
            policy = out / POLICY_DIR / f"HeartMuLa-oss-{config.version}"
            if policy.is_dir():
                model = HeartMuLa.from_pretrained(policy)
                model.audio_head.data = model.audio_head.data.contiguous()
            self.model = self.network = model.requires_grad_(True)
        self.builder = SampleBuilder(self.tokenizer, self.gen_config, model.num_codebooks,
                                     model.config.backbone.max_seq_len)

    @torch.no_grad()
    def reference_logprobs(self, samples: list[Sample]) -> torch.Tensor:
        self.network.eval()
        if self.reference is not None:
            return torch.cat([sequence_logprobs(self.reference, [s]) for s in samples])
        with self.model.disable_adapter():
            return torch.cat([sequence_logprobs(self.network, [s]) for s in samples])

    def save(self) -> None:
        if self.config.lora:
            save_adapter(self.model, self.out, self.base_model)
            return

        root = self.out / POLICY_DIR
        self.network.save_pretrained(root / f"HeartMuLa-oss-{self.config.version}")
        for source, name in ((self.files.tokenizer, TOKENIZER_FILE), (self.files.gen_config, GEN_CONFIG_FILE)):
            if source is not None:
                (root / name).write_bytes(Path(source).read_bytes())

    def sampling_pipeline(self, base):
        """The current policy as `heartmula generate` loads it (merged adapter, native kernels)."""
        self.save()
        if self.config.lora:
            return HeartMuLaPipeline.from_pretrained(base, version=self.config.version, codec=self.config.codec,
                                                     device="cpu", lora=self.out)
        codec = self.config.codec or _codec_of(base)
        return HeartMuLaPipeline.from_pretrained(self.out / POLICY_DIR, version=self.config.version, codec=codec,
                                                 device="cpu")


def _codec_of(base) -> str:
    return str(resolve_codec(None, Path(base)))


def sample_round(pipe, prompts: list[Prompt], config: PreferConfig, round_index: int, clap,
                 progress: bool = False) -> list[ScoredSong]:
    """K songs per prompt from `pipe`, decoded and scored; seeds differ per round."""
    songs = []
    for index, prompt in enumerate(prompts):
        seeds = [config.seed + 100_000 * round_index + config.songs_per_prompt * index + j
                 for j in range(config.songs_per_prompt)]
        requests = pipe.requests([prompt.lyrics] * len(seeds), prompt.tags, seeds)
        codes = pipe.generate_codes(requests, SamplingParams(cfg_scale=config.cfg_scale), config.seconds,
                                    config.seconds)
        for song_codes, seed in zip(codes, seeds):
            audio, rate = pipe.decode(song_codes, seed)
            songs.append(ScoredSong(index, seed, song_codes, song_rewards(audio, rate, prompt, clap)))
        if progress:
            print(f"round {round_index}: sampled prompt {index + 1}/{len(prompts)}", flush=True)
    return songs


def save_round(folder: Path, songs: list[ScoredSong]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_output(folder / "codes.npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, *[s.codes for s in songs])
    with atomic_output(folder / "songs.json") as tmp:  # written last: its presence marks a complete round
        tmp.write_text(json.dumps([{"prompt": s.prompt, "seed": s.seed, "rewards": s.rewards} for s in songs]))


def load_round(folder: Path) -> list[ScoredSong] | None:
    if not (folder / "songs.json").is_file():
        return None
    rows = json.loads((folder / "songs.json").read_text())
    with np.load(folder / "codes.npz") as codes:
        return [ScoredSong(r["prompt"], r["seed"], codes[f"arr_{i}"], r["rewards"]) for i, r in enumerate(rows)]


def reward_summary(songs: list[ScoredSong], pairs: list[tuple[int, int]]) -> dict:
    """Per reward: the mean over the round's songs, and the mean chosen-minus-rejected gap of the pairs."""
    summary = {}
    for name in REWARDS:
        values = [s.rewards[name] for s in songs if s.rewards.get(name) is not None]
        gaps = [songs[c].rewards[name] - songs[r].rewards[name] for c, r in pairs
                if songs[c].rewards.get(name) is not None and songs[r].rewards.get(name) is not None]
        summary[name] = {"mean": float(np.mean(values)) if values else None,
                         "pair_gap": float(np.mean(gaps)) if gaps else None}
    return summary


def _train_pairs(state: PolicyState, optimizer, samples, pairs, config: PreferConfig, rng: random.Random,
                 log, step: int) -> int:
    paired = sorted({i for pair in pairs for i in pair})
    reference = torch.zeros(len(samples))
    reference[paired] = state.reference_logprobs([samples[i] for i in paired])
    state.network.train()
    for _ in range(config.epochs):
        order = list(pairs)
        rng.shuffle(order)
        for start in range(0, len(order), config.pair_batch):
            batch = order[start : start + config.pair_batch]
            chosen, rejected = [c for c, _ in batch], [r for _, r in batch]
            logprobs = sequence_logprobs(state.network, [samples[i] for i in chosen + rejected])
            loss, parts = dpo_loss(logprobs[: len(batch)], logprobs[len(batch) :], reference[chosen],
                                   reference[rejected], config.beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in state.model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            step += 1
            log({"step": step, "dpo_loss": round(float(loss.detach()), 4), **parts})
    state.network.eval()
    return step


def _trim_log(path: Path, rounds: int, step: int) -> None:
    """Drop the records of a round that was interrupted: it runs again from its start."""
    if not path.is_file():
        return
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [r for r in records if r.get("round", -1) < rounds and r.get("step", 0) <= step]
    with atomic_output(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")


def train_prefer(base: str | os.PathLike, out: str | os.PathLike, config: PreferConfig | None = None,
                 prompts: list[Prompt] | None = None, progress: bool = True) -> dict:
    """Run (or resume) preference rounds on `prompts` (default: `training_prompts()`); returns the last state."""
    config = config or PreferConfig()
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.songs_per_prompt < 2 or config.rounds < 1 or config.beta <= 0:
        raise HeartMuLaError("preference tuning needs --songs-per-prompt >= 2, --rounds >= 1 and --beta > 0")
    prompts = prompts or training_prompts()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = PolicyState(base, out, config)
    params = [p for p in state.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    step = load_training_state(out, state.model, optimizer)
    recorded = json.loads((out / STATE_JSON).read_text()) if (out / STATE_JSON).is_file() else {"round": 0}
    rng = random.Random(config.seed + recorded["round"])
    _trim_log(out / LOG_FILE, recorded["round"], step)

    def log(record: dict) -> None:
        with open(out / LOG_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    for round_index in range(recorded["round"], config.rounds):
        began = time.perf_counter()
        folder = out / "rounds" / f"{round_index:03d}"
        songs = load_round(folder)
        if songs is None:
            songs = sample_round(state.sampling_pipeline(base), prompts, config, round_index, load_clap(), progress)
            save_round(folder, songs)
        sampled = time.perf_counter() - began
        pairs = preference_pairs(songs, config.weights, config.min_margin)
        log({"round": round_index, "songs": len(songs), "pairs": len(pairs), "rewards": reward_summary(songs, pairs),
             "sampling_seconds": round(sampled, 1)})
        if pairs:
            step = _train_pairs(state, optimizer, song_samples(state.builder, prompts, songs), pairs, config, rng,
                                log, step)
        state.save()
        save_training_state(out, state.model, optimizer, step, config)
        with atomic_output(out / STATE_JSON) as tmp:
            tmp.write_text(json.dumps({"round": round_index + 1, "step": step, "config": asdict(config),
                                       "base": str(Path(base).resolve()), "trainable": trainable_parameters(
                                           state.model)}, indent=1))
        recorded = {"round": round_index + 1, "step": step}
    if not (out / ADAPTER_WEIGHTS).is_file() and config.lora:
        state.save()
    return recorded


def evaluate_against_base(base: str | os.PathLike, out: str | os.PathLike, config: PreferConfig, seeds: list[int],
                          prompts: list[Prompt] | None = None) -> dict:
    """Held-out prompts (default: the quality report's) generated by the base and by the tuned model with the same
    seeds; the rewards' measures and the judges for both (`heartmula.eval.preference.evaluate_pipeline`)."""
    prompts = prompts or held_out_prompts()
    out = Path(out)
    tuned = dict(lora=out) if config.lora else dict(model=out / POLICY_DIR)
    results = {}
    for name, options in (("base", {}), ("tuned", tuned)):
        model = options.pop("model", base)
        codec = config.codec if config.codec or config.lora else _codec_of(base)
        pipe = HeartMuLaPipeline.from_pretrained(model, version=config.version, codec=codec, device="cpu", **options)
        results[name] = evaluate_pipeline(pipe, prompts, seeds, config.seconds, load_clap(), config.cfg_scale)
    return results
