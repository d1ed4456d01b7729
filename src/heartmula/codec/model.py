"""HeartCodec: codes [8, T] at 12.5 Hz <-> stereo 48 kHz audio.

    codes -> flow_matching.vq_embed (RVQ sum) -> cond_feature_emb -> x2 -> condition at 25 Hz
          -> flow matching (DiT + Euler) or the direct decoder -> latent [T25, 256] = 2 channels x 128
          -> scalar_model.decoder (per channel) -> audio [2, T25 * 1920]
    audio -> scalar_model.encoder (per channel) -> latent -> code_encoder -> RVQ -> codes      (encode)

Loads the official `HeartCodec-oss` folder unchanged (single or sharded safetensors; weight norm folded at load;
the RVQ's EMA buffers loaded too, though decoding ignores them).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from heartmula.audio import mix_channels, resample
from heartmula.checkpoint import check_model_folder, load_state_dict, save_state_dict
from heartmula.codec.config import HeartCodecConfig
from heartmula.codec.convnets import CodeEncoder, DirectDecoder
from heartmula.codec.decoding import DecodeOptions, StreamingDecoder, decode
from heartmula.codec.flow import FlowMatching
from heartmula.codec.phonetic import load_whisper_features, phonetic_features
from heartmula.codec.spectral import SpectralModel
from heartmula.codec.sq_codec import ScalarModel, fold_weight_norm, unfold_weight_norm, weight_normed_names
from heartmula.errors import HeartMuLaError

CONFIG_FILE = "config.json"


class HeartCodec(nn.Module):
    def __init__(self, config: HeartCodecConfig):
        super().__init__()
        self.config = config.validate()
        self.flow_matching = FlowMatching(config)
        self.scalar_model = SpectralModel(config) if config.waveform_codec == "istft" else ScalarModel(config)
        if config.decoder_type == "direct":
            self.direct_decoder = DirectDecoder(config.dim, config.latent_dim, config.direct_decoder)
        if config.code_encoder is not None:
            self.code_encoder = CodeEncoder(config.latent_dim, config.dim, config.code_encoder)
        if config.phonetic is not None:
            # Training only (distillation of codebook 0 towards the phonetic features); decoding never reads it.
            self.phonetic_head = nn.Linear(config.codebook_dim, config.phonetic.feature_dim)

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def dtype(self) -> torch.dtype:
        return self.flow_matching.cond_feature_emb.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.flow_matching.cond_feature_emb.weight.device

    @property
    def can_encode(self) -> bool:
        return hasattr(self, "code_encoder")

    # --- pieces of the pipeline --------------------------------------------------------------------------------
    def condition(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, 8, T] -> condition [B, 2T, dim]."""
        return self.flow_matching.condition(codes.to(self.device))

    def latent_to_audio(self, latent: torch.Tensor, cache: dict | None = None, snap: bool = True) -> torch.Tensor:
        """latent [B, L, C*128] -> audio [B, C, L * 1920]. Each stereo half of a frame is one mono latent.

        `snap=False` skips the SQ grid rounding (training rounds with a straight-through gradient itself)."""
        b, length, _ = latent.shape
        channels = self.config.audio_channels
        per_channel = latent.reshape(b, length, channels, -1).permute(0, 2, 3, 1).reshape(b * channels, -1, length)
        audio = self.scalar_model.decode(per_channel, cache, snap=snap)
        return audio.reshape(b, channels, -1)

    def flush_audio(self, cache: dict, batch: int = 1) -> torch.Tensor:
        channels = self.config.audio_channels
        audio = self.scalar_model.flush_decoder(cache, batch * channels, self.dtype, self.device)
        return audio.reshape(batch, channels, -1)

    def audio_to_latent(self, audio: torch.Tensor, phonetic: torch.Tensor | None = None) -> torch.Tensor:
        """audio [B, C, samples] (a multiple of 1920) -> tanh latent [B, samples / 1920, C*128].

        A codec with a `phonetic` section also reads phonetic features [B, feature_dim, L] (codec/phonetic.py);
        when they are not given, its speech encoder computes them from `audio`."""
        b, channels, samples = audio.shape
        if self.config.phonetic is None:
            latent = self.scalar_model.encode(audio.reshape(b * channels, 1, samples))  # [B*C, 128, L]
        else:
            if phonetic is None:
                phonetic = self.phonetic_features(audio)
            latent = self.scalar_model.encode(audio, phonetic)  # the spectral codec is mono: C = 1
        return latent.reshape(b, channels, latent.shape[1], -1).permute(0, 3, 1, 2).reshape(b, latent.shape[-1], -1)

    def phonetic_features(self, audio: torch.Tensor) -> torch.Tensor:
        """audio [B, 1, samples] -> the speech encoder's features [B, feature_dim, samples / samples_per_latent]."""
        extract = load_whisper_features(self.config.phonetic.model)
        return phonetic_features(extract, audio, self.sample_rate, self.config.samples_per_latent)

    def latent_to_codes(self, latent: torch.Tensor) -> torch.Tensor:
        """tanh latent [B, 2T, C*128] -> codes [B, 8, T]."""
        if not self.can_encode:
            raise HeartMuLaError(
                "this codec has no trained encoder (code_encoder): the official release ships only the decoder; "
                "train one with `heartmula train codec` or use a codec folder that has one"
            )
        codes, _, _ = self.flow_matching.vq_embed.quantize(self.code_encoder(latent))
        return codes.transpose(1, 2)

    @torch.no_grad()
    def encode_tensor(self, audio: torch.Tensor) -> torch.Tensor:
        """audio [C, samples] at the codec rate -> codes [8, T] (T = ceil(samples / 3840), the tail zero-padded)."""
        hop = self.config.samples_per_code
        samples = audio.shape[-1]
        padded = -(-samples // hop) * hop
        audio = torch.nn.functional.pad(audio.to(self.device, self.dtype), (0, padded - samples))
        return self.latent_to_codes(self.audio_to_latent(audio[None]))[0]

    def encode(self, audio, sample_rate: int) -> np.ndarray:
        """audio [channels, samples] (numpy or tensor, any rate; mono is duplicated) -> codes int64 [8, T]."""
        audio = np.asarray(audio, dtype=np.float32)
        audio = audio[None] if audio.ndim == 1 else audio
        if audio.shape[-1] == 0:
            raise HeartMuLaError("cannot encode empty audio")
        audio = resample(mix_channels(audio, self.config.audio_channels), sample_rate, self.sample_rate)
        return self.encode_tensor(torch.from_numpy(audio)).cpu().numpy().astype(np.int64)

    def decode(self, codes, options=None, noise=None, **option_overrides) -> tuple[np.ndarray, int]:
        """codes [8, T] (numpy or tensor) -> (audio float32 [channels, T * 3840], sample rate).

        `options`: a DecodeOptions, or keyword overrides such as mode="compat", steps=10, seed=1.
        """
        if options is None:
            options = DecodeOptions(**option_overrides)
        audio = decode(self, codes, options, noise)
        return audio.numpy().astype(np.float32, copy=False), self.sample_rate

    def stream(self, **kwargs):
        """A StreamingDecoder over this codec (push codes, get audio chunks)."""
        return StreamingDecoder(self, **kwargs)

    def direct_latent(self, codes: torch.Tensor) -> torch.Tensor:
        return self.direct_decoder(self.condition(codes))

    # --- weights ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self, seed: int = 0, std: float = 0.02) -> HeartCodec:
        """Fresh random weights (tests, benchmarks, the start of training); codebooks unit-scale."""
        generator = torch.Generator().manual_seed(seed)
        for name, tensor in self.state_dict().items():
            if name.endswith("initted"):
                tensor.fill_(True)
            elif name.endswith("cluster_size"):
                tensor.fill_(1.0)
            elif name.endswith(("norm.weight", ".activation.weight", "activation1.weight", "activation2.weight")):
                tensor.fill_(0.25 if "activation" in name else 1.0)
            elif name.endswith("._codebook.embed") or name.endswith("embed_avg"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
            elif tensor.dim() >= 2 and "scalar_model" in name:
                fan_in = tensor[0].numel() if "up_conv" not in name else tensor.shape[0] * tensor.shape[2]
                tensor.copy_(torch.randn(tensor.shape, generator=generator) / fan_in**0.5)
            elif name.endswith(".bias"):
                tensor.zero_()
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)
        return self

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict in the official naming (weight-normed layers as g / v pairs)."""
        return unfold_weight_norm(self.state_dict(), weight_normed_names(self))

    @classmethod
    def expected_shapes(cls, config: HeartCodecConfig) -> dict[str, tuple[int, ...]]:
        with torch.device("meta"):
            model = cls(config)
        return {name: tuple(t.shape) for name, t in model.official_state_dict().items()}

    @classmethod
    def check_folder(cls, folder: str | os.PathLike) -> HeartCodec:
        """Check a codec folder without reading any weights: config.json, then every tensor's name, shape and
        dtype against the codec it describes (official naming). Returns that codec on the meta device."""
        return check_model_folder(folder, "HeartCodec", HeartCodecConfig.from_file, cls,
                                  lambda m: m.official_state_dict())

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> HeartCodec:
        model = cls.check_folder(folder)
        # Fold weight norm in float32 before casting, so a bfloat16 model folds as exactly as a float32 one.
        state = fold_weight_norm(load_state_dict(folder, dtype=torch.float32, device=device))
        state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
        model.load_state_dict(state, assign=True, strict=True)
        return model.eval()

    def save_pretrained(self, folder: str | os.PathLike, max_shard_bytes: int | None = None) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_state_dict(self.official_state_dict(), folder, max_shard_bytes=max_shard_bytes)
        self.config.save(folder / CONFIG_FILE)
