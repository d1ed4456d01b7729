"""Train a HeartCodec end to end on recordings: SQ autoencoder, code encoder (audio -> RVQ codes) and the direct
decoder (codes -> latent), so that encode -> decode round-trips.

Per step, on a batch of random stereo segments x:
    z      = SQ encoder(x)                                       tanh latent, 25 Hz
    x_sq   = SQ decoder(round9(z) with straight-through grads)   loss: multi-resolution STFT + mel + L1 (autoencoder)
    codes  = RVQ(code_encoder(z))                                 codebooks follow EMAs of their residuals
    z_code = direct decoder(condition(codes))                     loss: MSE to z (detached) + commitment
    x_code = SQ decoder(z_code)                                   loss: the same audio losses (what encode -> decode
                                                                  produces)
With the spectral waveform codec (waveform_codec "istft") there is no SQ grid to round to, and the waveform L1 is
usually switched off (its phase is free, so only magnitudes are matched).
Inputs: audio files, folders, or corpus manifest.jsonl files (their `split: train` rows). The training audio (up
to `clip_seconds` from each file, 16-bit) is cached in the output folder, so resuming does not decode it again.
The official EMA buffers of the RVQ (embed_avg, cluster_size) are the codebook training state. Everything lives in
one output folder (a loadable codec + `train_state.safetensors` + `train_state.json` + `train_log.jsonl`); running
again with the same folder resumes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from heartmula.audio import load_audio
from heartmula.codec.config import LATENT_PER_CODE
from heartmula.codec.model import CONFIG_FILE, HeartCodec
from heartmula.codec.pretrained import PRESETS
from heartmula.codec.sq_codec import round_with_straight_through
from heartmula.errors import HeartMuLaError
from heartmula.eval.codec_metrics import mel_distance, multi_resolution_stft_distance
from heartmula.files import atomic_output
from heartmula.train.device import Placement, placement
from heartmula.train.distributed import (
    barrier,
    current_ranks,
    data_parallel,
    gather,
    main_rank_first,
    mean_across_ranks,
)
from heartmula.train.state import load_training_state, save_training_state

AUDIO_CACHE = "train_audio.npz"
LOG_FILE = "train_log.jsonl"
DATA_FILE = "training_data.json"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".m4a", ".aac")


@dataclass
class CodecTrainConfig:
    preset: str = "small-direct"
    steps: int = 2000
    batch_size: int = 6
    segment_frames: int = 16  # code frames per training segment (16 = 1.28 s)
    learning_rate: float = 5e-4
    codebook_decay: float = 0.99
    dead_code_every: int = 25  # steps between re-seeding unused codes
    latent_weight: float = 10.0
    commitment_weight: float = 0.25
    autoencoder_weight: float = 1.0  # audio losses of the waveform autoencoder alone (no codes)
    token_audio_weight: float = 1.0  # audio loss through the codes: decoder and token path trained end to end
    spread_weight: float = 5.0  # keeps the latent spread over the SQ grid (see latent_spread_penalty)
    latent_std: float = 0.35
    max_minutes: float = 20.0  # audio kept in memory for training
    clip_seconds: float | None = None  # at most this much of each file (a random excerpt), so many files fit
    wave_weight: float = 1.0  # waveform L1 (0 for the spectral codec: its phase is free)
    mel_weight: float = 0.0  # log-mel L1 (the metric's mel distance) on both audio paths
    pitch_weight: float = 0.0  # harmonic codec: L1 of the encoder's log semitone/band energies, output vs input
    source_weights: list[float] | None = None  # draw probability per input path (None: by audio length)
    end_to_end: bool = False  # audio losses through the codes also train the waveform encoder (straight-through)
    decoder_only: bool = False  # freeze everything that decides the codes (see code_path_modules)
    init_from: str | None = None  # start from this trained codec folder instead of a fresh preset
    decoder_lookahead: int | None = None  # direct decoder look-ahead (latent frames); a change starts it afresh
    final_lr_fraction: float = 1.0  # cosine decay of the learning rate to this fraction at `steps` (1 = constant)
    save_every: int = 100
    seed: int = 0
    threads: int | None = None
    device: str = "auto"  # auto, cpu, cuda or cuda:N (heartmula.train.device; under torchrun cuda:LOCAL_RANK)
    precision: str = "auto"  # float32, or bfloat16 mixed precision; auto: bfloat16 on CUDA, float32 on the CPU


def manifest_audio(manifest: Path, split: str = "train") -> list[Path]:
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [manifest.parent / row["audio"] for row in rows if row.get("split", split) == split and row.get("audio")]


def sourced_audio_files(paths: list[str | os.PathLike], exclude: tuple[str, ...] = ()) -> list[tuple[Path, int]]:
    """(file, index of the input path it came from) for `paths` (files, folders, manifest.jsonl), minus files whose
    path contains an `exclude` string (held-out recordings)."""
    files: list[tuple[Path, int]] = []
    for source, path in enumerate(map(Path, paths)):
        if path.suffix == ".jsonl" and path.is_file():
            found = manifest_audio(path)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        elif path.is_file():
            found = [path]
        else:
            raise HeartMuLaError(f"training audio {path} does not exist")
        files += [(f, source) for f in found if not any(word in str(f) for word in exclude)]
    if not files:
        raise HeartMuLaError("no audio files found for codec training")
    return files


def audio_files(paths: list[str | os.PathLike], exclude: tuple[str, ...] = ()) -> list[Path]:
    return [file for file, _ in sourced_audio_files(paths, exclude)]


def load_corpus(files: list[Path], sample_rate: int, channels: int, max_minutes: float,
                clip_seconds: float | None = None, seed: int = 0, progress: bool = False) -> list[np.ndarray]:
    """Up to `clip_seconds` of each file (a random excerpt, seeded), until `max_minutes` are in memory."""
    budget = int(max_minutes * 60 * sample_rate)
    rng = np.random.default_rng(seed)
    clips = []
    if progress:
        from tqdm import tqdm

        files = tqdm(files, desc="load training audio", unit="file")
    for file in files:
        audio, _ = load_audio(file, sample_rate=sample_rate, channels=channels)
        if clip_seconds is not None and audio.shape[1] > clip_seconds * sample_rate:
            length = int(clip_seconds * sample_rate)
            start = int(rng.integers(0, audio.shape[1] - length))
            audio = audio[:, start: start + length]
        clips.append(audio[:, :budget])
        budget -= clips[-1].shape[1]
        if budget <= 0:
            break
    return clips


def cached_corpus(out: Path, files: list[tuple[Path, int]], codec_config, config,
                  progress: bool) -> tuple[list[np.ndarray], np.ndarray]:
    """(training clips, the input path index of each), read from `out/train_audio.npz` when an earlier run of this
    folder wrote it."""
    cache = out / AUDIO_CACHE
    if cache.is_file():
        with np.load(cache) as data:
            sources = data["sources"]
            return [data[f"clip{i}"].astype(np.float32) / 32767 for i in range(len(sources))], sources
    clips = load_corpus([f for f, _ in files], codec_config.sample_rate, codec_config.audio_channels,
                        config.max_minutes, config.clip_seconds, config.seed, progress)
    sources = np.array([source for _, source in files[: len(clips)]], dtype=np.int64)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(cache) as tmp:
        with open(tmp, "wb") as handle:
            arrays = {f"clip{i}": (np.clip(c, -1, 1) * 32767).astype(np.int16) for i, c in enumerate(clips)}
            np.savez(handle, sources=sources, **arrays)
    return clips, sources


def clip_weights(clips, sources: np.ndarray | None = None, source_weights=None) -> np.ndarray:
    """Probability of drawing from each clip: by length, or, with `source_weights`, first a source (input path)
    with those weights, then a clip of it by length (so a few real recordings are not drowned by a big corpus)."""
    lengths = np.array([c.shape[1] for c in clips], dtype=np.float64)
    if not source_weights or sources is None:
        return lengths / lengths.sum()
    if len(source_weights) <= int(sources.max()):
        raise HeartMuLaError(f"{len(source_weights)} source weights for {int(sources.max()) + 1} training inputs")
    weights = np.zeros_like(lengths)
    for source in np.unique(sources):
        mine = sources == source
        weights[mine] = source_weights[source] * lengths[mine] / lengths[mine].sum()
    return weights / weights.sum()


def sample_batch(clips, batch: int, samples: int, rng: np.random.Generator, weights=None) -> torch.Tensor:
    weights = clip_weights(clips) if weights is None else weights
    out = []
    for _ in range(batch):
        clip = clips[rng.choice(len(clips), p=weights)]
        start = rng.integers(0, max(1, clip.shape[1] - samples))
        piece = clip[:, start: start + samples]
        piece = np.pad(piece, ((0, 0), (0, samples - piece.shape[1])))
        out.append(piece * rng.uniform(0.5, 1.2))  # loudness augmentation
    return torch.from_numpy(np.stack(out).astype(np.float32))


def latent_spread_penalty(latent: torch.Tensor, target_std: float) -> torch.Tensor:
    """Penalise latent channels whose spread falls below `target_std`.

    Early in training the decoder turns latent variation into noise, so the quickest way to lower the loss is to
    shrink the latent; once it is inside +-1/18 the SQ grid rounds it all to zero and the codec carries nothing.
    This hinge only acts below the target, so it does not fight the reconstruction losses afterwards."""
    return F.relu(target_std - latent.std(dim=(0, 1))).mean()


def audio_losses(estimate: torch.Tensor, audio: torch.Tensor, codec: HeartCodec, config: CodecTrainConfig,
                 latent: torch.Tensor | None = None):
    """(multi-resolution STFT distance, mel distance, waveform L1, weighted total).

    With `pitch_weight` (harmonic codecs; `latent` [B, L, D] is what `estimate` was decoded from), the total also
    counts an L1 between log energies from the harmonic encoder's analysis: per semitone, of the decoder's sinusoids
    alone vs the input; per noise band, of the whole output vs the input. Every note weighs the same there, whereas
    the STFT and mel losses are dominated by the many high-frequency bins; and the tones alone must carry the notes:
    scored on the whole output, the decoder settled on noise that matched the band energies and never learned notes
    (seen in training)."""
    stft = multi_resolution_stft_distance(estimate, audio)
    mel = mel_distance(estimate, audio, codec.sample_rate) if config.mel_weight else torch.zeros(())
    wave = (estimate - audio).abs().mean()
    total = stft + config.mel_weight * mel + config.wave_weight * wave
    if config.pitch_weight:
        encoder, decoder = codec.scalar_model.encoder, codec.scalar_model.decoder
        tones = decoder(latent.transpose(1, 2), tones_only=True)[:, 0]
        target = encoder.features(audio[:, 0])
        notes = decoder.tones
        pitch = ((encoder.features(tones)[:, :notes] - target[:, :notes]).abs().mean()
                 + (encoder.features(estimate[:, 0])[:, notes:] - target[:, notes:]).abs().mean())
        total = total + config.pitch_weight * pitch
    return stft, mel, wave, total


def training_losses(codec: HeartCodec, audio: torch.Tensor, config: CodecTrainConfig,
                    phonetic: torch.Tensor | None = None):
    """(weighted total, logged parts, codes, RVQ residuals, the latent the direct decoder predicts from the codes
    [B, L, D]: what `encode -> decode` decodes, so further losses on it train the whole code path).
    `phonetic` [B, feature_dim, L]: cached phonetic features of `audio`, for a codec that reads them."""
    # The SQ decoder was trained on the 19-level grid (and decode snaps to it); the spectral codec has no grid.
    grid = round_with_straight_through if codec.config.waveform_codec == "sq" else (lambda x: x)
    latent = codec.audio_to_latent(audio, phonetic)  # [B, L, D]
    stft = mel = wave = autoencoder = torch.zeros(())
    if config.autoencoder_weight:  # 0 skips the pass (end-to-end training needs only the path through the codes)
        reconstruction = codec.latent_to_audio(grid(latent), snap=False)
        stft, mel, wave, autoencoder = audio_losses(reconstruction, audio, codec, config, grid(latent))

    target = latent.detach()
    features = codec.code_encoder(latent if config.end_to_end else target)
    vq = codec.flow_matching.vq_embed
    codes, quantized, residuals = vq.quantize(features)
    projected = vq.project_in(features)
    straight_through = projected + (quantized - projected).detach()
    condition = codec.flow_matching.cond_feature_emb(vq.project_out(straight_through))
    predicted = codec.direct_decoder(condition.repeat_interleave(LATENT_PER_CODE, dim=1))
    latent_mse = F.mse_loss(predicted, target)
    commitment = F.mse_loss(projected, quantized.detach())
    spread = latent_spread_penalty(latent, config.latent_std)
    total = (config.autoencoder_weight * autoencoder + config.latent_weight * latent_mse
             + config.commitment_weight * commitment + config.spread_weight * spread)
    token_stft = token_mel = torch.zeros(())
    if config.token_audio_weight:
        # What `encode -> decode` will actually produce: the SQ decoder on the latent predicted from the codes.
        through_codes = codec.latent_to_audio(grid(predicted), snap=False)
        token_stft, token_mel, _, token_total = audio_losses(through_codes, audio, codec, config, grid(predicted))
        total = total + config.token_audio_weight * token_total
    parts = {name: float(value.detach()) for name, value in
             (("stft", stft), ("mel", mel), ("wave", wave), ("latent_mse", latent_mse), ("commit", commitment),
              ("latent_std", latent.std(dim=(0, 1)).mean()), ("token_stft", token_stft), ("token_mel", token_mel))}
    return total, parts, codes, residuals, predicted


@torch.no_grad()
def spread_latent(codec: HeartCodec, audio: torch.Tensor, target_std: float = 0.45) -> None:
    """Data-dependent init: scale the encoder's last conv so the latent spans the SQ grid (steps of 1/9).

    A freshly initialised encoder outputs latents of std ~0.04, which the grid rounds to zero: the decoder would
    see nothing and the straight-through gradient would take a long time to spread them out."""
    encoder = codec.scalar_model.encoder
    x = audio.reshape(-1, 1, audio.shape[-1])
    for layer in encoder[:-1]:
        x = layer(x)
    scale = target_std / max(float(encoder[-1](x).std()), 1e-6)
    encoder[-1].weight.mul_(scale)
    encoder[-1].bias.mul_(scale)


def update_codebooks(codec: HeartCodec, codes: torch.Tensor, residuals, step: int, config: CodecTrainConfig,
                     generator: torch.Generator) -> float:
    """The RVQ codebooks' EMA step (dead codes re-seeded every `dead_code_every` steps, never when 0). Returns the
    distinct codes per codebook in this batch, averaged: it falls toward 1 when the codebooks collapse."""
    reseed = config.dead_code_every and step % config.dead_code_every == 0
    codec.flow_matching.vq_embed.ema_update(codes, residuals, decay=config.codebook_decay,
                                            dead_threshold=0.02 if reseed else 0.0, generator=generator)
    return float(np.mean([len(torch.unique(codes[..., i])) for i in range(codes.shape[-1])]))


def code_path_modules(codec: HeartCodec) -> list[nn.Module]:
    """The modules that turn audio into codes. `decoder_only` training freezes them (weights, codebooks, and norm
    statistics through eval mode), so codes made before still mean the same: a language model already trained on
    them keeps working while the decoder goes on improving."""
    return [codec.scalar_model.encoder, codec.code_encoder, codec.flow_matching.vq_embed.layers,
            codec.flow_matching.vq_embed.project_in]


def codec_with_decoder_lookahead(codec: HeartCodec, lookahead: int | None) -> HeartCodec:
    """`codec` with its direct decoder rebuilt, untrained, for another look-ahead; everything else kept (with
    --decoder-only, codes mean what they meant). The same codec when the look-ahead does not change."""
    current = codec.config.direct_decoder
    if lookahead is None or current is None or lookahead == current.lookahead:
        return codec
    config = replace(codec.config, direct_decoder=replace(current, lookahead=lookahead))
    fresh = HeartCodec(config)
    kept = {k: v for k, v in codec.state_dict().items() if not k.startswith("direct_decoder.")}
    fresh.load_state_dict({**fresh.state_dict(), **kept})
    return fresh.eval()


def _set_training_mode(codec: HeartCodec, config: CodecTrainConfig) -> None:
    codec.train()
    if config.decoder_only:
        for module in code_path_modules(codec):
            module.eval()


def _save_state(out: Path, optimizer, step: int, codec: HeartCodec, config: CodecTrainConfig) -> None:
    codec.save_pretrained(out)
    save_training_state(out, codec, optimizer, step, config)


def _codec_to_train(out: Path, config: CodecTrainConfig) -> HeartCodec:
    """The codec of an earlier run in `out`, the one `init_from` names, or a fresh one of `preset`."""
    if (out / CONFIG_FILE).is_file():
        codec = HeartCodec.from_pretrained(out)
    elif config.init_from:
        codec = codec_with_decoder_lookahead(HeartCodec.from_pretrained(config.init_from), config.decoder_lookahead)
    else:
        if config.preset not in PRESETS:
            raise HeartMuLaError(f"unknown codec preset {config.preset!r}")
        preset = PRESETS[config.preset]()
        if config.decoder_lookahead is not None and preset.direct_decoder is not None:
            preset.direct_decoder = replace(preset.direct_decoder, lookahead=config.decoder_lookahead)
        codec = HeartCodec(preset).init_weights(config.seed)
        for layer in codec.flow_matching.vq_embed.layers:
            layer._codebook.cluster_size.zero_()  # every code "dead": the first step seeds them all from data
    if codec.config.decoder_type != "direct" or not codec.can_encode:
        raise HeartMuLaError("codec training needs a preset with a direct decoder and a code encoder")
    if config.pitch_weight and not getattr(codec.scalar_model.encoder, "harmonic", False):
        raise HeartMuLaError("--pitch-weight needs a codec with harmonic synthesis (e.g. preset harmonic-24k)")
    return codec


def _write_training_data(out: Path, files, config: CodecTrainConfig, exclude: tuple[str, ...]) -> None:
    """What the checkpoint was trained on (licenses travel with data)."""
    with atomic_output(out / DATA_FILE) as tmp:
        tmp.write_text(json.dumps({"files": [str(f) for f, _ in files], "source_weights": config.source_weights,
                                   "max_minutes": config.max_minutes,
                                   "clip_seconds": config.clip_seconds, "excluded": list(exclude)}, indent=2))


def _learning_rate(step: int, config: CodecTrainConfig) -> float:
    """A 20-step warm-up, then a cosine down to `final_lr_fraction` of the rate."""
    cosine = 0.5 * (1 + np.cos(np.pi * min(1.0, step / max(1, config.steps))))
    return config.learning_rate * min(1.0, (step + 1) / 20) * (config.final_lr_fraction
                                                                + (1 - config.final_lr_fraction) * cosine)


def _train_step(codec: HeartCodec, step_losses, optimizer, params, audio: torch.Tensor, step: int,
                config: CodecTrainConfig, generator: torch.Generator, where: Placement) -> dict:
    """One optimiser step (and the codebooks' EMA step) on `audio`; returns the log record, the same on every
    rank."""
    for group in optimizer.param_groups:
        group["lr"] = _learning_rate(step, config)
    with where.autocast():
        loss, parts, codes, residuals, _ = step_losses(audio.to(where.device), config)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    parts = mean_across_ranks({"loss": float(loss.detach()), **parts})
    if not config.decoder_only:  # every rank makes the same EMA step from the whole batch's codes
        parts["codes_used"] = update_codebooks(codec, gather(codes), [gather(r) for r in residuals], step, config,
                                               generator)
    parts = {"step": step + 1, **{k: round(v, 5) for k, v in parts.items()}}
    parts["loss"] = round(parts["loss"], 4)
    return parts


def train_codec(audio_paths, out: str | os.PathLike, config: CodecTrainConfig | None = None,
                progress: bool = True, exclude: tuple[str, ...] = ()) -> dict:
    """Train (or resume) a codec in `out`; returns a summary. Audio: files or folders of recordings."""
    config = config or CodecTrainConfig()
    where = placement(config.device, config.precision)
    out = Path(out)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    codec = _codec_to_train(out, config).to(where.device)
    if config.decoder_only:
        for module in code_path_modules(codec):
            module.requires_grad_(False)
    _set_training_mode(codec, config)
    params = [p for p in codec.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, betas=(0.8, 0.99), weight_decay=0.0)
    start_step = load_training_state(out, codec, optimizer)
    if start_step == 0 and config.init_from:
        codec.flow_matching.vq_embed.resync_ema()

    ranks = current_ranks()  # several processes under torchrun: see heartmula.train.distributed
    ranks.check_batch(config.batch_size)
    files = sourced_audio_files(audio_paths, exclude)
    with main_rank_first():  # rank 0 writes the audio cache, the others read it
        clips, sources = cached_corpus(out, files, codec.config, config, progress and ranks.is_main)
    weights = clip_weights(clips, sources, config.source_weights)
    rng = np.random.default_rng(config.seed + start_step)
    generator = torch.Generator().manual_seed(config.seed + start_step)
    samples = config.segment_frames * codec.config.samples_per_code

    if start_step == 0 and codec.config.waveform_codec == "sq":
        spread_latent(codec, sample_batch(clips, 8, samples, np.random.default_rng(config.seed + 1)).to(where.device))

    out.mkdir(parents=True, exist_ok=True)
    if ranks.is_main:
        _write_training_data(out, files, config, exclude)

    # The codec has modules that direct training does not use (the flow-matching estimator).
    step_losses = data_parallel(codec, training_losses, ranks, find_unused_parameters=True)
    bar = None
    if progress and ranks.is_main:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, initial=start_step, desc="train codec", unit="step")
    parts: dict = {}
    first = None
    for step in range(start_step, config.steps):
        began = time.perf_counter()
        audio = ranks.slice(sample_batch(clips, config.batch_size, samples, rng, weights))
        parts = _train_step(codec, step_losses, optimizer, params, audio, step, config, generator, where)
        parts["seconds"] = round(time.perf_counter() - began, 2)
        first = first or parts
        if not ranks.is_main:
            continue
        with open(out / LOG_FILE, "a", encoding="utf-8") as log:
            log.write(json.dumps(parts) + "\n")
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=parts["loss"], stft=parts["stft"], lat=parts["latent_mse"])
        if (step + 1) % config.save_every == 0 or step + 1 == config.steps:
            codec.eval()
            _save_state(out, optimizer, step + 1, codec, config)
            _set_training_mode(codec, config)
    if bar is not None:
        bar.close()
    if start_step >= config.steps and ranks.is_main:
        codec.eval()
        _save_state(out, optimizer, start_step, codec, config)
    codec.eval()
    barrier()  # every rank returns once rank 0 has written the last checkpoint
    return {"steps": config.steps, "resumed_from": start_step, "first": first, "last": parts,
            "files": [str(f) for f, _ in files]}
