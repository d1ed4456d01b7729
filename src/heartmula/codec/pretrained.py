"""Finding and loading codec folders; random-weight presets in the official layout."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch

from heartmula.checkpoint import parse_dtype
from heartmula.codec.config import (
    ConvNetConfig,
    HeartCodecConfig,
    PhoneticConfig,
    SpectralConfig,
    VoiceConfig,
    tiny_config,
)
from heartmula.codec.model import CONFIG_FILE, HeartCodec
from heartmula.errors import HeartMuLaError

OFFICIAL_FOLDER = "HeartCodec-oss"


# The codec trained in this project and shipped with it (see its MODEL_CARD.md); used when no path is given.
DEFAULT_CODEC_DIR = Path(__file__).resolve().parent.parent / "defaults" / "codec"


def locate_codec(path: str | os.PathLike | None = None) -> Path:
    """The codec folder for an official root (ROOT/HeartCodec-oss/) or a codec folder itself; None: the shipped
    default codec."""
    if path is None:
        if not (DEFAULT_CODEC_DIR / CONFIG_FILE).is_file():
            raise HeartMuLaError("this installation ships no default codec: pass a codec folder or checkpoint root")
        return DEFAULT_CODEC_DIR
    path = Path(path)
    if not path.is_dir():
        raise HeartMuLaError(f"codec path {path} is not a folder")
    if (path / CONFIG_FILE).is_file() and not (path / OFFICIAL_FOLDER).is_dir():
        return path
    candidates = [path / OFFICIAL_FOLDER, *sorted(path.glob(f"{OFFICIAL_FOLDER}*"), reverse=True)]
    for folder in candidates:
        if (folder / CONFIG_FILE).is_file():
            return folder
    raise HeartMuLaError(
        f"{path} holds neither {OFFICIAL_FOLDER}/ nor a {CONFIG_FILE}: pass the checkpoint root or a codec folder"
    )


def load_codec(
    path: str | os.PathLike | None = None, dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu"
) -> HeartCodec:
    return HeartCodec.from_pretrained(locate_codec(path), dtype=parse_dtype(dtype), device=device)


def bench_config() -> HeartCodecConfig:
    """The official geometry scaled down ~1/30 in compute so a 2-core CPU can benchmark the decode modes."""
    return HeartCodecConfig(num_attention_heads=6, attention_head_dim=64, num_layers=6, num_layers_2=2,
                            init_channel=16).validate()


def small_direct_config() -> HeartCodecConfig:
    """A small trainable codec with a direct decoder and an encoder (fast on CPU)."""
    return HeartCodecConfig(
        dim=256, codebook_size=1024, codebook_dim=32, latent_hidden_dim=32, out_channels=64, in_channels=384,
        init_channel=8, decoder_type="direct", direct_decoder=ConvNetConfig(hidden_dim=256, num_blocks=8),
        code_encoder=ConvNetConfig(hidden_dim=256, num_blocks=6),
    ).validate()


def small_16k_config() -> HeartCodecConfig:
    """small-direct at 16 kHz: a third of the waveform work, so a shared 2-core CPU can train it in an hour."""
    config = small_direct_config()
    config.sample_rate = 16000
    config.downsample_factors, config.downsample_kernel_sizes = [2, 2, 4, 4, 5], [4, 4, 8, 8, 10]
    config.upsample_factors, config.upsample_kernel_sizes = [5, 4, 4, 2, 2], [10, 8, 8, 4, 4]
    return config.validate()


def default_24k_config() -> HeartCodecConfig:
    """24 kHz mono, 8 x 1024 codes at 12.5 Hz, direct decoder, spectral (iSTFT) waveform codec with a free phase.
    Every layer runs at 100 Hz or slower, so it trains on a shared CPU and decodes far faster than real time."""
    return HeartCodecConfig(
        dim=256, codebook_size=1024, codebook_dim=32, num_quantizers=8, latent_hidden_dim=64, out_channels=64,
        in_channels=384, sample_rate=24000, decoder_type="direct", waveform_codec="istft",
        direct_decoder=ConvNetConfig(hidden_dim=256, num_blocks=6, kernel_size=3),
        code_encoder=ConvNetConfig(hidden_dim=256, num_blocks=4, kernel_size=3),
        spectral=SpectralConfig(n_fft=960, hop_length=240, hidden_dim=192, num_blocks=6, kernel_size=3),
    ).validate()


def harmonic_24k_config() -> HeartCodecConfig:
    """The shipped default: default-24k with harmonic synthesis (semitone sinusoids + noise bands, see
    codec/spectral.py), which carries pitch from the first training steps."""
    config = default_24k_config()
    config.spectral.synthesis = "harmonic"
    return config.validate()


def tiny_harmonic_config() -> HeartCodecConfig:
    """tiny-spectral with harmonic synthesis (three octaves of semitones, 8 noise bands)."""
    config = tiny_spectral_config()
    config.spectral.synthesis, config.spectral.analysis_fft = "harmonic", 384
    config.spectral.lowest_midi, config.spectral.highest_midi, config.spectral.noise_bands = 48, 84, 8
    return config.validate()


def tiny_spectral_config() -> HeartCodecConfig:
    """A spectral codec tests build in milliseconds (4.8 kHz, 4 x 64 codes)."""
    return HeartCodecConfig(
        dim=32, codebook_size=64, codebook_dim=8, num_quantizers=4, latent_hidden_dim=16, out_channels=16,
        in_channels=64, sample_rate=4800, decoder_type="direct", waveform_codec="istft",
        direct_decoder=ConvNetConfig(hidden_dim=32, num_blocks=2, kernel_size=3),
        code_encoder=ConvNetConfig(hidden_dim=32, num_blocks=1, kernel_size=3),
        spectral=SpectralConfig(n_fft=192, hop_length=48, hidden_dim=32, num_blocks=2, kernel_size=3),
    ).validate()


def phonetic_24k_config() -> HeartCodecConfig:
    """harmonic-24k with the voice branch and phonetic features (Whisper base) in the encoder: the codes keep the
    sung words (codec/phonetic.py). Decoding costs what the default codec's does; encoding also runs Whisper."""
    config = harmonic_24k_config()
    config.spectral.voice = VoiceConfig()
    config.phonetic = PhoneticConfig()
    return config.validate()


def tiny_phonetic_config() -> HeartCodecConfig:
    """tiny-harmonic with a small voice branch and 8-wide phonetic features (tests pass their own features)."""
    config = tiny_harmonic_config()
    config.spectral.voice = VoiceConfig(hidden_dim=16, num_blocks=1, frame_blocks=1, kernel_size=3, bands=4,
                                        max_harmonics=4)
    config.phonetic = PhoneticConfig(feature_dim=8)
    return config.validate()


def codec_with_phonetic(codec: HeartCodec, phonetic: PhoneticConfig | None = None) -> HeartCodec:
    """A copy of a spectral codec whose encoder also reads phonetic features; their projection starts at zero,
    so the copy encodes exactly as `codec` does until it is trained. A codec that reads them is returned as is."""
    if codec.config.phonetic is not None:
        return codec
    config = replace(codec.config, phonetic=phonetic or PhoneticConfig()).validate()
    model = HeartCodec(config).init_weights()
    missing, _ = model.load_state_dict(codec.state_dict(), strict=False)
    if any(not name.startswith(("scalar_model.encoder.phonetic_in.", "phonetic_head.")) for name in missing):
        raise HeartMuLaError(f"cannot extend this codec with phonetic features (missing {missing})")
    model.scalar_model.encoder.phonetic_in.weight.data.zero_()
    model.scalar_model.encoder.phonetic_in.bias.data.zero_()
    return model.eval()


PRESETS = {
    "tiny": tiny_config,
    "tiny-direct": lambda: tiny_config("direct", with_encoder=True),
    "bench": bench_config,
    "official": lambda: HeartCodecConfig().validate(),
    "small-direct": small_direct_config,
    "small-16k": small_16k_config,
    "default-24k": default_24k_config,
    "tiny-spectral": tiny_spectral_config,
    "harmonic-24k": harmonic_24k_config,
    "tiny-harmonic": tiny_harmonic_config,
    "phonetic-24k": phonetic_24k_config,
    "tiny-phonetic": tiny_phonetic_config,
}


def write_random_codec(folder: str | os.PathLike, preset: str = "tiny", seed: int = 0,
                       max_shard_bytes: int | None = None) -> Path:
    if preset not in PRESETS:
        raise HeartMuLaError(f"unknown codec preset {preset!r}; choose one of {', '.join(PRESETS)}")
    model = HeartCodec(PRESETS[preset]()).init_weights(seed)
    model.save_pretrained(folder, max_shard_bytes=max_shard_bytes)
    return Path(folder)
