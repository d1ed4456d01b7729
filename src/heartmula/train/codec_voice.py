"""Train a spectral codec's singing-voice branch (`heartmula.codec.voice`) by regression on WORLD parameters.

For every manifest item the mix is encoded by the codec and decoded to the latent the decoder sees at generation
time (codes -> direct decoder), and the item's vocal stem (instrumentals: silence) is analysed by WORLD (DIO +
StoneMask f0, CheapTrick envelope, D4C aperiodicity) every STFT hop. The targets per decoder frame are the f0, a
voiced flag, and the harmonic (envelope x (1 - aperiodicity)) and noise (envelope x aperiodicity) powers in the
branch's log-mel bands, which is what WORLD's own synthesis renders. Only the branch learns: the codes, and any
LM trained on them, stay valid.

With `train_codes` the whole code path learns instead: mix segments go through encoder -> RVQ -> direct decoder
(`heartmula.train.codec.training_losses`, its music losses kept) and the branch's regression loss on that latent
reaches back through the codes (straight-through), so the codes themselves learn to carry the singing (the words
and their language), which the mix losses alone leave to the accompaniment. Codes change: re-tokenize the corpus
and retrain the LM after it.

With `phonetic` (and `train_codes`) the encoder also reads phonetic features (`heartmula.codec.phonetic`: the
embedded Whisper encoder's, cached per item with the mix), and codebook 0 is distilled towards them: a linear head
on its straight-through vector is scored by cosine distance to the features at the code rate, so the first
codebook, the one the LM's backbone predicts, carries the words.

With `freeze_codes` (and `train_codes`) the codec stays as it is and only the branch learns, from the mix (or stem)
through the frozen encoder and codes to the decoded latent: every song keeps its codes, so an LM trained on them
stays valid, and the branch learns from the latent that decoding gives it (with phonetic features, which the
cached-latent mode above cannot compute).

Layout of --out: `features/<id>.npz` (the cached inputs and targets, `features-audio/` with `train_codes`: the
mix instead of the latent, `features-phonetic/` with `phonetic`: the mix and its phonetic features; resumable),
the codec folder itself
(config.json with `spectral.voice`, weights; it loads as a codec at every checkpoint), `train_state.*`, and
`train_log.jsonl`.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from heartmula.audio import load_audio, resample
from heartmula.codec.config import LATENT_PER_CODE, PhoneticConfig, VoiceConfig
from heartmula.codec.model import HeartCodec
from heartmula.codec.phonetic import (
    code_rate,
    distillation_loss,
    load_whisper_features,
    phonetic_features,
    whisper_folder,
)
from heartmula.codec.pretrained import codec_with_phonetic
from heartmula.codec.voice import LOG_F0_SCALE, LOG_POWER_SCALE, VoiceDecoder, band_centres_mel, hz_to_mel
from heartmula.data.singing import load_pyworld
from heartmula.errors import HeartMuLaError
from heartmula.files import atomic_output
from heartmula.manifest import read_manifest
from heartmula.train.codec import CodecTrainConfig, audio_files, training_losses, update_codebooks
from heartmula.train.device import Placement, placement
from heartmula.train.state import load_training_state, save_training_state

LOG_FILE = "train_log.jsonl"
FEATURES = "features"
AUDIO_FEATURES = "features-audio"
PHONETIC_FEATURES = "features-phonetic"
PHONETIC_OF = {"mix": "phonetic", "vocals": "phonetic_vocals"}  # cached input -> its phonetic features
# Music losses of `train_codes`: those the default codec's joint stages trained with (its MODEL_CARD), so the mix
# keeps sounding as it did while the voice loss reshapes the codes. The codebooks of a trained codec follow the
# encoder slowly and none is re-seeded: with a few segments per step, a rare but meaningful code looks dead.
JOINT_CODEC_LOSSES = CodecTrainConfig(mel_weight=1.0, pitch_weight=1.0, wave_weight=0.0, spread_weight=0.0,
                                      end_to_end=True, autoencoder_weight=1.0, latent_weight=1.0,
                                      commitment_weight=0.25, token_audio_weight=1.0, codebook_decay=0.999,
                                      dead_code_every=0)
# log(1e-12): WORLD's envelope of digital silence. Targets and predictions below this floor count as silence.
LOG_POWER_FLOOR = -27.6
F0_RANGE = (70.0, 1000.0)  # sung voices, bass to soprano high notes
MIN_ANALYSIS_RATE = 16000  # WORLD's D4C crashes on audio sampled much lower (seen at 4.8 kHz): upsample first


@dataclass
class VoiceTrainConfig:
    steps: int = 3000
    batch_size: int = 16
    segment_frames: int = 64  # latent frames per training segment (2.56 s at 25 Hz)
    learning_rate: float = 1e-3
    final_lr_fraction: float = 0.1
    seconds_per_item: float = 60.0  # of each item, from its start
    threads: int = 2
    eval_every: int = 250
    seed: int = 0
    voice: VoiceConfig | None = None  # None: the branch sizes of VoiceConfig()
    train_codes: bool = False  # train encoder, codebooks and decoder with the branch (codes change)
    # train_codes: keep the whole codec and train only the voice branch, on the latent the decoder predicts from the
    # codes (the codes and the music stay the same, so an LM trained on the codes stays valid)
    freeze_codes: bool = False
    voice_weight: float = 1.0  # train_codes: the voice loss against the codec's music losses
    voiced_envelope_weight: float = 0.0  # the harmonic envelope's L1 on voiced frames only, added to the voice loss
    phonetic: bool = False  # train_codes: the encoder reads phonetic features (Whisper), codebook 0 is distilled
    distill_weight: float = 1.0  # phonetic: the distillation loss of codebook 0
    phonetic_model: str = "base"  # phonetic: an embedded Whisper model's name or a transformers Whisper folder
    max_minutes: float | None = None  # stop (with a checkpoint) after this much time; run again to resume
    stem_fraction: float = 0.0  # train_codes: share of segments whose input is the vocal stem alone, not the mix
    autoencoder_weight: float = 1.0  # train_codes: the music losses of the latent autoencoder (0 skips that pass)
    exclude_ids: tuple[str, ...] = ()  # manifest items never trained on (e.g. the songs a benchmark measures)
    # train_codes: instrumental recordings (files or folders) trained on beside the corpus (voice target: silence),
    # drawn for `extra_share` of the segments, minus files whose path contains an `extra_exclude` string
    extra_audio: tuple[str, ...] = ()
    extra_exclude: tuple[str, ...] = ()
    extra_share: float = 0.2
    device: str = "auto"  # auto, cpu, cuda or cuda:N (heartmula.train.device)
    precision: str = "auto"  # float32, or bfloat16 mixed precision; auto: bfloat16 on CUDA, float32 on the CPU


# --- targets ------------------------------------------------------------------------------------------------------
def band_log_power(power: np.ndarray, analysis_rate: int, sample_rate: int, bands: int) -> np.ndarray:
    """A power spectrum [frames, bins over 0..analysis_rate / 2] as the log of the mean power of the bins nearest
    each band centre of a `sample_rate` codec (the mean of the logs would under-state a band whose power is uneven,
    e.g. noise). Bins above the codec's Nyquist frequency are left out."""
    bins_hz = torch.linspace(0, analysis_rate / 2, power.shape[1], dtype=torch.float64)
    nearest = np.abs(hz_to_mel(bins_hz).numpy()[:, None] - band_centres_mel(bands, sample_rate).numpy()[None])
    nearest = np.where(bins_hz.numpy() <= sample_rate / 2, nearest.argmin(axis=1), -1)
    out = np.full((power.shape[0], bands), LOG_POWER_FLOOR, dtype=np.float32)
    for band in range(bands):
        members = nearest == band
        if members.any():
            out[:, band] = np.log(np.maximum(power[:, members].mean(axis=1), 1e-12))
        elif band:
            out[:, band] = out[:, band - 1]
    return out


def voice_targets(vocals: np.ndarray | None, frames: int, sample_rate: int, hop: int, n_fft: int,
                  bands: int) -> dict[str, np.ndarray]:
    """WORLD parameters of a mono stem for decoder frames 0..frames-1 (frame j is centred on sample
    j * hop + n_fft / 2); `vocals` None: an instrumental, all silence."""
    silent = {"f0": np.zeros(frames, np.float32),
              "harmonic": np.full((frames, bands), LOG_POWER_FLOOR, np.float32),
              "noise": np.full((frames, bands), LOG_POWER_FLOOR, np.float32)}
    if vocals is None or not np.any(np.abs(vocals) > 1e-4):
        return silent

    world = load_pyworld()
    rate = max(sample_rate, MIN_ANALYSIS_RATE)
    x = np.ascontiguousarray(resample(vocals[None].astype(np.float32), sample_rate, rate)[0], dtype=np.float64)
    period_ms = 1000.0 * hop / sample_rate
    f0, times = world.dio(x, rate, f0_floor=F0_RANGE[0], f0_ceil=F0_RANGE[1], frame_period=period_ms)
    f0 = world.stonemask(x, f0, times, rate)
    envelope = world.cheaptrick(x, f0, times, rate)
    aperiodicity = world.d4c(x, f0, times, rate)
    shift = (n_fft // 2) // hop  # WORLD frame i is centred on sample i * hop
    rows = np.clip(np.arange(frames) + shift, 0, len(f0) - 1)
    return {"f0": f0[rows].astype(np.float32),
            "harmonic": band_log_power(envelope[rows] * (1 - aperiodicity[rows]), rate, sample_rate, bands),
            "noise": band_log_power(envelope[rows] * aperiodicity[rows], rate, sample_rate, bands)}


def _item_features(job: tuple) -> str:
    """Worker: one manifest row -> features/<id>.npz (skipped when present). Returns the id."""
    row, codec_dir, out_dir, seconds, bands, store_audio, phonetic_model = job
    path = Path(out_dir) / f"{row['id']}.npz"
    if path.is_file():
        return row["id"]
    torch.set_num_threads(1)
    codec = _worker_codec(codec_dir)
    rate, spectral = codec.sample_rate, codec.config.spectral
    mix, _ = load_audio(row["audio"], sample_rate=rate, channels=1)
    hop = codec.config.samples_per_code
    length = min(mix.shape[1], int(seconds * rate)) // hop * hop
    if length == 0:
        raise HeartMuLaError(f"{row['audio']} is shorter than one code frame")
    vocals = None
    if row.get("vocals"):
        vocals = load_audio(row["vocals"], sample_rate=rate, channels=1)[0][0, :length]
        vocals = np.pad(vocals, (0, length - len(vocals)))
    if store_audio:  # the model input is the mix itself (16-bit)
        inputs = {"mix": (np.clip(mix[0, :length], -1, 1) * 32767).astype(np.int16)}
        frames = length // spectral.hop_length
        if vocals is not None:  # a second input: the stem alone (`stem_fraction`)
            inputs["vocals"] = (np.clip(vocals, -1, 1) * 32767).astype(np.int16)
        if phonetic_model is not None:
            for key, audio in (("mix", mix[:, :length]), ("vocals", None if vocals is None else vocals[None])):
                if audio is not None:
                    inputs[PHONETIC_OF[key]] = cached_phonetic_features(phonetic_model, audio, rate,
                                                                        codec.config.samples_per_latent)
    else:
        with torch.no_grad():
            codes = torch.from_numpy(codec.encode(mix[:, :length], rate))
            latent = codec.direct_latent(codes[None])[0]  # [L, C]: what decoding from codes gives
        inputs = {"latent": latent.numpy().astype(np.float16)}
        frames = latent.shape[0] * (codec.config.samples_per_latent // spectral.hop_length)
    targets = voice_targets(vocals, frames, rate, spectral.hop_length, spectral.n_fft, bands)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **inputs, **targets)
    return row["id"]


def cached_phonetic_features(model: str, audio: np.ndarray, rate: int, samples_per_latent: int) -> np.ndarray:
    """[latent frames, feature_dim] float16: the phonetic features of mono audio [1, S] (a mix or a stem; S a
    multiple of `samples_per_latent`), as the codec's encoder reads them."""
    features = phonetic_features(load_whisper_features(model), torch.from_numpy(audio[None].astype(np.float32)),
                                 rate, samples_per_latent)
    return features[0].t().numpy().astype(np.float16)


_CODEC: dict = {}


def _worker_codec(folder: str) -> HeartCodec:
    if folder not in _CODEC:
        _CODEC[folder] = HeartCodec.from_pretrained(folder)
    return _CODEC[folder]


def build_features(rows: list[dict], codec_dir: Path, out: Path, seconds: float, bands: int, workers: int,
                   progress: bool, store_audio: bool = False, phonetic_model: str | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(row, str(codec_dir), str(out), seconds, bands, store_audio, phonetic_model) for row in rows
            if not (out / f"{row['id']}.npz").is_file()]
    if not jobs:
        return
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(rows), initial=len(rows) - len(jobs), desc="voice features", unit="item")
    with get_context("spawn").Pool(workers) if workers > 1 else nullcontext() as pool:
        for _ in (pool.imap_unordered(_item_features, jobs) if pool is not None else map(_item_features, jobs)):
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()


# --- training -----------------------------------------------------------------------------------------------------
def load_features(folder: Path, ids: list[str]) -> list[dict[str, np.ndarray]]:
    """Cached items; 16-bit audio and float16 phonetic features stay as they are (half the memory of float32)."""
    compact = ("mix", "vocals", *PHONETIC_OF.values())
    items = []
    for item_id in ids:
        with np.load(folder / f"{item_id}.npz") as data:
            items.append({k: data[k] if k in compact else data[k].astype(np.float32) for k in data.files})
    return items


def sample_segments(items, count: int, frames: int, repeat: int, rng: np.random.Generator, samples_per_frame=None,
                    start_multiple: int = 1, stem_fraction: float = 0.0, weights: np.ndarray | None = None):
    """`count` random windows of `frames` latent frames (starting at a multiple of `start_multiple`) -> (inputs,
    targets [B, frames * repeat]). Inputs: the cached latent [B, C, frames], or with `samples_per_frame` the mix
    [B, 1, frames * samples_per_frame] in [-1, 1]; with `stem_fraction`, that share of the windows of sung items
    takes the vocal stem instead of the mix. Items are drawn alike, or by `weights`. Items with phonetic features
    add those of the input to the targets as "phonetic" [B, feature_dim, frames] (the window's, at 25 Hz)."""
    key, unit = ("mix", samples_per_frame) if samples_per_frame else ("latent", 1)
    names = ("f0", "harmonic", "noise", "phonetic") if "phonetic" in items[0] else ("f0", "harmonic", "noise")
    inputs, targets = [], {k: [] for k in names}
    for _ in range(count):
        item = items[rng.integers(len(items)) if weights is None else rng.choice(len(items), p=weights)]
        source = "vocals" if stem_fraction and "vocals" in item and rng.random() < stem_fraction else key
        starts = max(1, (len(item[key]) // unit - frames) // start_multiple + 1)
        start = int(rng.integers(0, starts)) * start_multiple
        value = item[source][start * unit: (start + frames) * unit]
        inputs.append(np.pad(value, [(0, frames * unit - len(value))] + [(0, 0)] * (value.ndim - 1)))
        for name in targets:
            per = 1 if name == "phonetic" else repeat
            stored = PHONETIC_OF.get(source, name) if name == "phonetic" else name
            value = item[stored][start * per: (start + frames) * per]
            pad = [(0, frames * per - len(value))] + [(0, 0)] * (value.ndim - 1)
            targets[name].append(np.pad(value, pad, constant_values=LOG_POWER_FLOOR if name not in ("f0", "phonetic")
                                        else 0.0))
    targets = {k: torch.from_numpy(np.stack(v)) for k, v in targets.items()}
    if "phonetic" in targets:
        targets["phonetic"] = targets["phonetic"].float().transpose(1, 2)
    if samples_per_frame:
        return torch.from_numpy(np.stack(inputs).astype(np.float32) / 32767)[:, None], targets
    return torch.from_numpy(np.stack(inputs)).transpose(1, 2), targets


def voice_losses(predicted: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """L1 of the envelopes (both clamped at the silence floor), voicing cross-entropy, and log-f0 L1 where voiced;
    the L1s in the head's units (divided by its output scales), so that no term drowns the others."""
    voiced = target["f0"] > 0
    losses = {"voicing": F.binary_cross_entropy_with_logits(predicted["voicing"], voiced.float())}
    log_f0 = torch.log(target["f0"].clamp_min(1.0))
    f0_error = (predicted["log_f0"] - log_f0).abs() / LOG_F0_SCALE
    losses["f0"] = (f0_error * voiced).sum() / voiced.sum().clamp_min(1)
    for key in ("harmonic", "noise"):
        error = (predicted[key].clamp_min(LOG_POWER_FLOOR) - target[key].clamp_min(LOG_POWER_FLOOR)).abs()
        losses[key] = error.mean() / LOG_POWER_SCALE
        if key == "harmonic":  # where it is heard: the voiced frames (`bench/voice_oracle.py`)
            voiced_error = (error * voiced[..., None]).sum() / (voiced.sum() * error.shape[-1]).clamp_min(1)
            losses["harmonic_voiced"] = voiced_error / LOG_POWER_SCALE
    return losses


def weighted_voice_loss(losses: dict[str, torch.Tensor], config: VoiceTrainConfig) -> torch.Tensor:
    """The voice loss to optimise: every term once, the voiced frames' harmonic envelope x its weight."""
    return sum(v * (config.voiced_envelope_weight if k == "harmonic_voiced" else 1.0) for k, v in losses.items())


def codec_with_voice(codec: HeartCodec, voice: VoiceConfig, seed: int) -> HeartCodec:
    """A copy of `codec` whose spectral decoder has a fresh voice branch (other weights shared)."""
    config = codec.config
    if config.waveform_codec != "istft" or config.spectral.synthesis != "harmonic":
        raise HeartMuLaError("the voice branch needs a spectral codec with harmonic synthesis (preset harmonic-24k)")
    new_config = replace(config, spectral=replace(config.spectral, voice=voice))
    torch.manual_seed(seed)  # the branch's initial weights
    model = HeartCodec(new_config)
    model.load_state_dict(codec.state_dict(), strict=False)
    return model.eval()


def _extra_rows(config: VoiceTrainConfig) -> list[dict]:
    """Manifest-like rows (no vocals) for the extra instrumental recordings."""
    if not config.extra_audio:
        return []
    if not config.train_codes:
        raise HeartMuLaError("extra recordings train the codes: use --extra-audio with --train-codes")

    files = audio_files(list(config.extra_audio), tuple(config.extra_exclude))
    return [{"id": "extra-" + "_".join(f.stem.split()), "audio": str(f), "vocals": None, "split": "train"}
            for f in files]


def _source_codec(codec_dir, config: VoiceTrainConfig) -> HeartCodec:
    """The codec to train: `codec_dir` with a fresh branch, or (train_codes, no branch sizes given) with its own;
    with `phonetic`, extended to read phonetic features."""
    codec = HeartCodec.from_pretrained(codec_dir)
    if not (config.train_codes and config.voice is None and codec.config.spectral.voice is not None):
        codec = codec_with_voice(codec, config.voice or VoiceConfig(), config.seed)
    if not config.phonetic:
        return codec

    width = json.loads((whisper_folder(config.phonetic_model) / "config.json").read_text())["d_model"]
    return codec_with_phonetic(codec, PhoneticConfig(model=config.phonetic_model, feature_dim=width))


def decoded_latent(codec: HeartCodec, audio: torch.Tensor, phonetic: torch.Tensor | None = None) -> torch.Tensor:
    """The latent [B, L, D] that `encode -> decode` decodes from the codes of `audio` [B, 1, N]."""
    vq = codec.flow_matching.vq_embed
    _, quantized, _ = vq.quantize(codec.code_encoder(codec.audio_to_latent(audio, phonetic)))
    condition = codec.flow_matching.cond_feature_emb(vq.project_out(quantized))
    return codec.direct_decoder(condition.repeat_interleave(LATENT_PER_CODE, dim=1))


def _predict(codec: HeartCodec, inputs: torch.Tensor, config: VoiceTrainConfig, phonetic=None):
    """(voice parameters, music loss or None, codes, residuals) for a batch: from cached latents, or with
    `train_codes` from the mix through the code path (`phonetic`: the mix's phonetic features [B, D, L]). With
    phonetic features the music loss includes the distillation of codebook 0 (logged as "distill")."""
    voice = codec.scalar_model.decoder.voice
    if not config.train_codes:
        return voice.parameters_from_latent(inputs), None, None, None
    if config.freeze_codes:
        with torch.no_grad():
            predicted = decoded_latent(codec, inputs, phonetic)
        return voice.parameters_from_latent(predicted.transpose(1, 2)), None, None, None
    decoder = codec.scalar_model.decoder
    decoder.render_voice = False
    try:
        losses = replace(JOINT_CODEC_LOSSES, autoencoder_weight=config.autoencoder_weight)
        music, parts, codes, residuals, predicted = training_losses(codec, inputs, losses, phonetic)
    finally:
        decoder.render_voice = True
    if phonetic is not None:
        distill = codebook0_distillation(codec, codes, residuals, phonetic)
        music = music + config.distill_weight * distill
        parts["distill"] = float(distill.detach())
    return voice.parameters_from_latent(predicted.transpose(1, 2)), (music, parts), codes, residuals


def codebook0_distillation(codec: HeartCodec, codes: torch.Tensor, residuals: list[torch.Tensor],
                           phonetic: torch.Tensor) -> torch.Tensor:
    """Cosine distance between the phonetic head's reading of codebook 0 and the phonetic features at the code
    rate. Codebook 0's vector passes its gradient straight through to the encoder (the EMA codebook then follows
    the encoder), as in Mimi's distillation of its semantic codebook."""
    first = residuals[0]  # [B, T, codebook_dim]: what codebook 0 quantises
    chosen = codec.flow_matching.vq_embed.layers[0].codebook[codes[..., 0]]
    straight_through = first + (chosen - first).detach()
    return distillation_loss(codec.phonetic_head(straight_through), code_rate(phonetic))


def _on_device(batch, device: torch.device):
    """A batch of `sample_segments` (inputs, {name: targets}) on `device`."""
    inputs, target = batch
    return inputs.to(device), {name: value.to(device) for name, value in target.items()}


def _train_step(codec: HeartCodec, trained: torch.nn.Module, optimizer, params, batch, step: int,
                config: VoiceTrainConfig, generator: torch.Generator, where: Placement) -> dict:
    """One optimiser step on a batch from `sample_segments`; returns the log record."""
    began = time.perf_counter()
    trained.train()
    inputs, target = _on_device(batch, where.device)
    with where.autocast():
        predicted, music, codes, residuals = _predict(codec, inputs, config, target.get("phonetic"))
        losses = voice_losses(predicted, target)
        loss = weighted_voice_loss(losses, config)
        if music is not None:
            loss = music[0] + config.voice_weight * loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    record = {"step": step + 1, "loss": round(loss.item(), 4), **{k: round(v.item(), 4) for k, v in losses.items()}}
    if music is not None:
        record.update({k: round(music[1][k], 4) for k in ("token_mel", "mel", "latent_mse", "distill")
                       if k in music[1]})
        record["codes_used"] = update_codebooks(codec, codes, residuals, step, JOINT_CODEC_LOSSES, generator)
    record["seconds"] = round(time.perf_counter() - began, 3)
    return record


@torch.no_grad()
def _validate(codec: HeartCodec, batch, config: VoiceTrainConfig, where: Placement) -> dict:
    """Validation losses of the codec (in eval mode) on a fixed batch."""
    inputs, target = _on_device(batch, where.device)
    with where.autocast():
        predicted, music, _, _ = _predict(codec, inputs, config, target.get("phonetic"))
        record = {k: round(float(v), 4) for k, v in voice_losses(predicted, target).items()}
    if music is not None:
        record.update({k: round(music[1][k], 4) for k in ("token_mel", "distill") if k in music[1]})
    return record


def _check_resumable(out: Path, config: VoiceTrainConfig) -> None:
    """A run in `out` resumes only with the options it started with."""
    state = out / "train_state.json"
    if not state.is_file():
        return
    earlier = json.loads(state.read_text())["config"]
    for option in ("train_codes", "phonetic", "freeze_codes"):
        if earlier.get(option, False) != getattr(config, option):
            raise HeartMuLaError(f"{out} holds a run {'without' if getattr(config, option) else 'with'} "
                                 f"--{option.replace('_', '-')}: resume it the same way, or choose another --out")


def _codec_to_train(out: Path, codec_dir, config: VoiceTrainConfig) -> HeartCodec:
    """The codec of an earlier run in `out`, or the one `_source_codec` makes of `codec_dir`."""
    if (out / "config.json").is_file():
        codec = HeartCodec.from_pretrained(out)
        if codec.config.spectral.voice is None:
            raise HeartMuLaError(f"{out} holds a codec without a voice branch: choose another --out")
    else:
        codec = _source_codec(codec_dir, config)
    if config.train_codes and (codec.config.decoder_type != "direct" or not codec.can_encode):
        raise HeartMuLaError("--train-codes needs a codec with a direct decoder and a code encoder")
    return codec


def _training_items(train_rows: list[dict], val_rows: list[dict], codec_dir, codec: HeartCodec, out: Path,
                    config: VoiceTrainConfig, progress: bool):
    """(training items, validation items, the training items' sampling weights or None): their features computed
    once into `out`, the extra recordings' included."""
    bands = codec.scalar_model.decoder.voice.config.bands
    features = out / (PHONETIC_FEATURES if config.phonetic else AUDIO_FEATURES if config.train_codes else FEATURES)
    phonetic_model = codec.config.phonetic.model if config.phonetic else None
    build_features(train_rows + val_rows, Path(codec_dir), features, config.seconds_per_item, bands,
                   config.threads, progress, store_audio=config.train_codes, phonetic_model=phonetic_model)
    extra_rows = _extra_rows(config)
    if extra_rows:
        build_features(extra_rows, Path(codec_dir), features, config.seconds_per_item, bands, config.threads,
                       progress, store_audio=True, phonetic_model=phonetic_model)
    train_items = load_features(features, [r["id"] for r in train_rows + extra_rows])
    weights = None
    if extra_rows:
        weights = np.array([(1 - config.extra_share) / len(train_rows)] * len(train_rows)
                           + [config.extra_share / len(extra_rows)] * len(extra_rows))
    return train_items, load_features(features, [r["id"] for r in val_rows]), weights


def _set_learning_rate(optimizer, step: int, config: VoiceTrainConfig) -> None:
    """A 20-step warm-up, then a cosine down to `final_lr_fraction` of the rate."""
    cosine = 0.5 * (1 + np.cos(np.pi * step / max(1, config.steps)))
    for group in optimizer.param_groups:
        group["lr"] = config.learning_rate * min(1.0, (step + 1) / 20) * (
            config.final_lr_fraction + (1 - config.final_lr_fraction) * cosine)


def _save_checkpoint(codec: HeartCodec, trained, optimizer, out: Path, step: int, config: VoiceTrainConfig,
                     record: dict, val_batch, where: Placement) -> None:
    """Validate (into `record`) and save the codec and the training state after `step` steps."""
    codec.eval()
    if val_batch is not None:
        record["val"] = _validate(codec, val_batch, config, where)
    codec.save_pretrained(out)
    save_training_state(out, trained, optimizer, step, config)


def train_voice(manifest: str | os.PathLike, codec_dir: str | os.PathLike, out: str | os.PathLike,
                config: VoiceTrainConfig | None = None, progress: bool = True) -> dict:
    """Train (or resume) the voice branch of the codec in `codec_dir` (with `train_codes`: the whole code path with
    it); `out` becomes a codec folder with it."""
    config = config or VoiceTrainConfig()
    where = placement(config.device, config.precision)
    out = Path(out)
    torch.set_num_threads(max(1, config.threads))
    torch.manual_seed(config.seed)
    rows = [r for r in read_manifest(manifest) if r["id"] not in config.exclude_ids]
    train_rows = [r for r in rows if r["split"] == "train"]
    val_rows = [r for r in rows if r["split"] == "val"]
    if not train_rows:
        raise HeartMuLaError(f"{manifest} has no train items")
    if config.phonetic and not config.train_codes:
        raise HeartMuLaError("phonetic features train the codes: use --phonetic with --train-codes")
    if config.freeze_codes and not config.train_codes:
        raise HeartMuLaError("--freeze-codes keeps the codes of --train-codes: use them together")
    _check_resumable(out, config)
    codec = _codec_to_train(out, codec_dir, config)
    voice: VoiceDecoder = codec.scalar_model.decoder.voice
    trained: torch.nn.Module = codec if config.train_codes and not config.freeze_codes else voice
    train_items, val_items, weights = _training_items(train_rows, val_rows, codec_dir, codec, out, config, progress)
    codec.to(where.device)

    params = [p for p in trained.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.01)
    start = load_training_state(out, trained, optimizer)
    if trained is codec and start == 0:
        codec.flow_matching.vq_embed.resync_ema()
    rng = np.random.default_rng(config.seed + start)
    generator = torch.Generator().manual_seed(config.seed + start)
    repeat = voice.repeat
    # with the mix as input, segments start on code frames: what `encode` sees
    segments = {"samples_per_frame": codec.config.samples_per_latent, "start_multiple": LATENT_PER_CODE} \
        if config.train_codes else {}
    val_batch = sample_segments(val_items, 32, config.segment_frames, repeat, np.random.default_rng(1), **segments) \
        if val_items else None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, initial=start, desc="train voice", unit="step")
    record: dict = {}
    began_run = time.monotonic()
    for step in range(start, config.steps):
        _set_learning_rate(optimizer, step, config)
        batch = sample_segments(train_items, config.batch_size, config.segment_frames, repeat, rng, **segments,
                                stem_fraction=config.stem_fraction, weights=weights)
        record = _train_step(codec, trained, optimizer, params, batch, step, config, generator, where)
        out_of_time = config.max_minutes is not None and time.monotonic() - began_run > 60 * config.max_minutes
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps or out_of_time:
            _save_checkpoint(codec, trained, optimizer, out, step + 1, config, record, val_batch, where)
        with open(out / LOG_FILE, "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=record["loss"])
        if out_of_time:
            break
    if bar is not None:
        bar.close()
    return {"steps": record.get("step", start), "resumed_from": start, "last": record,
            "train_items": len(train_items), "val_items": len(val_items), "config": asdict(config)}
