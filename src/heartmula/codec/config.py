"""HeartCodec configuration: the official config.json fields plus this project's extensions.

Official fields keep their upstream names and defaults, so an official `HeartCodec-oss/config.json` loads as is.
Extensions (all optional, absent from official files):
- `decoder_type`: "flow_matching" (the official DiT + Euler solver) or "direct" (a small convolutional net that maps
  the code embedding straight to the latent: no iterative solver, fast on CPU);
- `direct_decoder`: sizes of that net; `code_encoder`: sizes of the trainable audio -> codes mapping;
- `waveform_codec`: "sq" (the official scalar-quantised waveform codec) or "istft" (codec/spectral.py: mono, layers
  at the STFT frame rate, inverse-STFT output; sized by the `spectral` section);
- `phonetic`: the spectral encoder also reads a pre-trained speech encoder's features (codec/phonetic.py), so the
  codes carry the sung words.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from heartmula.checkpoint import check_field_types, read_config_file, split_config, write_json
from heartmula.constants import FRAME_RATE
from heartmula.errors import HeartMuLaError

CODE_RATE_HZ = FRAME_RATE  # code frames per second
LATENT_PER_CODE = 2  # the condition is upsampled x2: 25 latent frames per second
DECODER_TYPES = ("flow_matching", "direct")
WAVEFORM_CODECS = ("sq", "istft")


def config_section(cls, data: dict | None, what: str):
    """A config.json section as its dataclass (None stays None); unknown fields are an error, not ignored."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise HeartMuLaError(f"the {what} section must be a JSON object, not {data!r}")
    unknown = set(data) - set(cls.__dataclass_fields__)
    if unknown:
        raise HeartMuLaError(f"unknown {what} fields {sorted(unknown)}")
    check_field_types(cls.__dataclass_fields__, data, what)
    return cls(**data)


@dataclass
class ConvNetConfig:
    """A stack of residual 1-D conv blocks (used by the direct decoder and the code encoder)."""

    hidden_dim: int = 512
    num_blocks: int = 6
    kernel_size: int = 3
    # Direct decoder only: latent frames (25 Hz) an output frame may see ahead. None = centred convolutions (sees
    # as far ahead as back); 0 .. kernel_size-1 = causal residual blocks after an input conv that looks this far
    # ahead, so streaming needs only ceil(lookahead / 2) code frames of right context.
    lookahead: int | None = None

    @classmethod
    def from_dict(cls, data: dict | None) -> ConvNetConfig | None:
        return config_section(cls, data, "conv-net config")

    def __post_init__(self):
        if self.lookahead is not None and not 0 <= self.lookahead < self.kernel_size:
            raise HeartMuLaError(f"conv-net lookahead must be 0 .. {self.kernel_size - 1} (kernel_size - 1), "
                                 f"got {self.lookahead}")


@dataclass
class VoiceConfig:
    """Sizes of the spectral codec's singing-voice branch (codec/voice.py)."""

    hidden_dim: int = 192
    num_blocks: int = 6  # residual conv blocks at the latent rate (25 Hz)
    frame_blocks: int = 2  # and after them at the STFT frame rate (100 Hz)
    kernel_size: int = 5
    bands: int = 32  # log-mel bands of the harmonic and of the noise envelope
    max_harmonics: int = 48  # of f0, each rendered while below the Nyquist frequency

    def __post_init__(self):
        if not (1 <= self.num_blocks <= 8 and 0 <= self.frame_blocks <= 8 and self.bands >= 2):
            raise HeartMuLaError("voice config: num_blocks 1-8, frame_blocks 0-8 and at least 2 bands")

    @classmethod
    def from_dict(cls, data: dict | None) -> VoiceConfig | None:
        return config_section(cls, data, "voice config")


@dataclass
class SpectralConfig:
    """Sizes of the spectral waveform codec (codec/spectral.py)."""

    n_fft: int = 960
    hop_length: int = 240
    hidden_dim: int = 256
    num_blocks: int = 6
    kernel_size: int = 5
    # "free": the decoder predicts a log-magnitude and a phase per STFT bin. "harmonic": it predicts the amplitudes
    # of fixed sinusoids, one per equal-tempered semitone from lowest_midi to highest_midi, plus the gains of
    # noise_bands mel-spaced noise bands; the encoder then reads log energies of the same semitones and bands from
    # an analysis_fft-point STFT (long enough to resolve low notes).
    synthesis: str = "free"
    lowest_midi: int = 28
    highest_midi: int = 108
    noise_bands: int = 48
    analysis_fft: int = 2048
    # An optional singing-voice branch (harmonic synthesis only): vocoder parameters predicted from the latent
    # and rendered into the same frames, for sung words the semitone sinusoids cannot carry.
    voice: VoiceConfig | None = None

    def __post_init__(self):
        if isinstance(self.voice, dict):
            self.voice = VoiceConfig.from_dict(self.voice)

    @classmethod
    def from_dict(cls, data: dict | None) -> SpectralConfig | None:
        return config_section(cls, data, "spectral codec config")


@dataclass
class PhoneticConfig:
    """Phonetic features the spectral encoder reads beside its own analysis (codec/phonetic.py)."""

    # The speech encoder: an embedded Whisper model name of heartmula.transcribe ("base"), or a transformers
    # Whisper folder. Its last encoder layer (50 frames/s) is averaged to the latent rate (25 frames/s).
    model: str = "base"
    feature_dim: int = 512  # width of its features (Whisper base: 512)

    def __post_init__(self):
        if self.feature_dim < 1:
            raise HeartMuLaError("phonetic feature_dim must be at least 1")

    @classmethod
    def from_dict(cls, data: dict | None) -> PhoneticConfig | None:
        return config_section(cls, data, "phonetic config")


@dataclass
class HeartCodecConfig:
    # residual vector quantiser
    dim: int = 512
    codebook_size: int = 8192
    decay: float = 0.9
    commitment_weight: float = 1.0
    threshold_ema_dead_code: int = 2
    use_cosine_sim: bool = False
    codebook_dim: int = 32
    num_quantizers: int = 8
    # flow-matching DiT
    attention_head_dim: int = 64
    in_channels: int = 1024
    norm_type: str = "ada_norm_single"
    num_attention_heads: int = 24
    num_layers: int = 24
    num_layers_2: int = 6
    out_channels: int = 256
    # scalar-quantised (SQ) waveform codec
    num_bands: int = 1
    sample_rate: int = 48000
    causal: bool = True
    num_samples: int = 2
    downsample_factors: list[int] = field(default_factory=lambda: [3, 4, 4, 4, 5])
    downsample_kernel_sizes: list[int] = field(default_factory=lambda: [6, 8, 8, 8, 10])
    upsample_factors: list[int] = field(default_factory=lambda: [5, 4, 4, 4, 3])
    upsample_kernel_sizes: list[int] = field(default_factory=lambda: [10, 8, 8, 8, 6])
    latent_hidden_dim: int = 128
    default_kernel_size: int = 7
    delay_kernel_size: int = 5
    init_channel: int = 64
    res_kernel_size: int = 7
    # project extensions (absent from official files)
    decoder_type: str = "flow_matching"
    direct_decoder: ConvNetConfig | None = None
    code_encoder: ConvNetConfig | None = None
    waveform_codec: str = "sq"
    spectral: SpectralConfig | None = None
    phonetic: PhoneticConfig | None = None
    extra: dict = field(default_factory=dict, repr=False)  # other config.json keys, written back unchanged

    def __post_init__(self):
        if isinstance(self.direct_decoder, dict):
            self.direct_decoder = ConvNetConfig.from_dict(self.direct_decoder)
        if isinstance(self.code_encoder, dict):
            self.code_encoder = ConvNetConfig.from_dict(self.code_encoder)
        if isinstance(self.spectral, dict):
            self.spectral = SpectralConfig.from_dict(self.spectral)
        if isinstance(self.phonetic, dict):
            self.phonetic = PhoneticConfig.from_dict(self.phonetic)

    # --- derived sizes ----------------------------------------------------------------------------------------
    @property
    def latent_dim(self) -> int:
        """Width of one latent frame: the channels of all stereo halves side by side (2 x 128 officially)."""
        return self.out_channels

    @property
    def audio_channels(self) -> int:
        return self.out_channels // self.latent_hidden_dim

    @property
    def samples_per_latent(self) -> int:
        if self.waveform_codec == "istft":
            return self.sample_rate // 25
        hop = self.num_samples
        for factor in self.upsample_factors:
            hop *= factor
        return hop

    @property
    def samples_per_code(self) -> int:
        return self.samples_per_latent * LATENT_PER_CODE

    def validate(self) -> HeartCodecConfig:
        if self.decoder_type not in DECODER_TYPES:
            raise HeartMuLaError(f"codec decoder_type {self.decoder_type!r} is not one of {DECODER_TYPES}")
        if self.num_bands != 1:
            raise HeartMuLaError("only num_bands = 1 codecs are supported (as in the official release)")
        if self.out_channels % self.latent_hidden_dim:
            raise HeartMuLaError(
                f"out_channels {self.out_channels} must be a multiple of latent_hidden_dim {self.latent_hidden_dim}"
            )
        if self.decoder_type == "flow_matching":
            if self.norm_type != "ada_norm_single":
                raise HeartMuLaError(f"codec norm_type {self.norm_type!r} is not supported (ada_norm_single only)")
            if self.in_channels != 2 * self.out_channels + self.dim:
                raise HeartMuLaError(
                    f"in_channels {self.in_channels} must equal 2 * out_channels + dim "
                    f"({2 * self.out_channels + self.dim}): noisy latent, in-context latent and condition"
                )
        elif self.direct_decoder is None:
            raise HeartMuLaError("decoder_type 'direct' needs a direct_decoder section in config.json")
        if self.waveform_codec not in WAVEFORM_CODECS:
            raise HeartMuLaError(f"codec waveform_codec {self.waveform_codec!r} is not one of {WAVEFORM_CODECS}")
        if self.phonetic is not None and self.waveform_codec != "istft":
            raise HeartMuLaError("phonetic features need the spectral waveform codec (waveform_codec 'istft')")
        if self.waveform_codec == "istft":
            if self.spectral is None:
                raise HeartMuLaError("waveform_codec 'istft' needs a spectral section in config.json")
            if self.audio_channels != 1:
                raise HeartMuLaError("the istft waveform codec is mono: out_channels must equal latent_hidden_dim")
            if self.sample_rate % 25 or (self.sample_rate // 25) % self.spectral.hop_length:
                raise HeartMuLaError(f"the spectral hop {self.spectral.hop_length} must divide the "
                                     f"{self.sample_rate // 25} samples of a 25 Hz latent frame")
            if self.spectral.n_fft < self.spectral.hop_length:
                raise HeartMuLaError("the spectral n_fft must be at least the hop length")
            if self.spectral.synthesis not in ("free", "harmonic"):
                raise HeartMuLaError(f"spectral synthesis {self.spectral.synthesis!r} is not 'free' or 'harmonic'")
            top = 440.0 * 2 ** ((self.spectral.highest_midi - 69) / 12)
            if self.spectral.synthesis == "harmonic" and not (
                    0 < self.spectral.lowest_midi < self.spectral.highest_midi and top < self.sample_rate / 2):
                raise HeartMuLaError("harmonic synthesis needs 0 < lowest_midi < highest_midi below the Nyquist rate")
            if self.spectral.voice is not None and self.spectral.synthesis != "harmonic":
                raise HeartMuLaError("the voice branch (spectral.voice) needs spectral synthesis 'harmonic'")
            return self
        if self.samples_per_latent * 25 != self.sample_rate:
            raise HeartMuLaError(
                f"the SQ decoder makes {self.samples_per_latent} samples per latent frame, which is not "
                f"{self.sample_rate} Hz at 25 latent frames per second"
            )
        return self

    # --- files ------------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict) -> HeartCodecConfig:
        known, extra = split_config(data, cls.__dataclass_fields__, "heartcodec")
        return cls(**known, extra=extra).validate()

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> HeartCodecConfig:
        return read_config_file(Path(path), cls.from_dict)

    def to_dict(self) -> dict:
        data = {"model_type": "heartcodec", **self.extra}
        for key, value in asdict(self).items():
            if key == "extra" or value is None:
                continue
            if (key, value) in (("decoder_type", "flow_matching"), ("waveform_codec", "sq")):
                continue  # keep official files byte-identical in spirit: no extension keys unless used
            if isinstance(value, dict):  # sections: unset options (None) are left out too
                value = {k: v for k, v in value.items() if v is not None}
            data[key] = value
        return data

    def save(self, path: str | os.PathLike) -> None:
        write_json(Path(path), self.to_dict())


def tiny_config(decoder_type: str = "flow_matching", with_encoder: bool = False) -> HeartCodecConfig:
    """A codec a test builds and runs in milliseconds: official structure and latent width (upstream hard-codes
    256), tiny widths, and a 4.8 kHz SQ codec (192 samples per latent frame) so its waveform stage is cheap."""
    config = HeartCodecConfig(
        dim=32, codebook_size=64, codebook_dim=8, attention_head_dim=8, num_attention_heads=2, num_layers=2,
        num_layers_2=1, in_channels=2 * 256 + 32, out_channels=256, latent_hidden_dim=128, init_channel=2,
        sample_rate=4800, downsample_factors=[3, 2, 2, 2, 4], downsample_kernel_sizes=[6, 4, 4, 4, 8],
        upsample_factors=[4, 2, 2, 2, 3], upsample_kernel_sizes=[8, 4, 4, 4, 6], decoder_type=decoder_type,
    )
    if decoder_type == "direct":
        config.direct_decoder = ConvNetConfig(hidden_dim=32, num_blocks=2, kernel_size=3)
    if with_encoder:
        config.code_encoder = ConvNetConfig(hidden_dim=32, num_blocks=1, kernel_size=3)
    return config.validate()
