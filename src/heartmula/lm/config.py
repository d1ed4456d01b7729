"""HeartMuLa configuration: the official config.json fields, flavor names, and the size extension."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from heartmula.checkpoint import check_field_types, read_config_file, read_json, split_config, write_json
from heartmula.errors import HeartMuLaError
from heartmula.nn.transformer import TransformerConfig


def llama_sizes(layers, heads, kv_heads, dim, ffn, max_seq_len) -> dict:
    """The fields of a Llama-3 style `TransformerConfig` (RoPE base 500k with scaling 32, norm eps 1e-5)."""
    return dict(num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, embed_dim=dim, intermediate_dim=ffn,
                max_seq_len=max_seq_len, rope_base=500_000.0, scale_factor=32.0, norm_eps=1e-5)


# The official flavor names and the numbers they stand for.
FLAVORS: dict[str, TransformerConfig] = {
    "llama-3B": TransformerConfig(**llama_sizes(28, 24, 8, 3072, 8192, 8192)),
    "llama-300M": TransformerConfig(**llama_sizes(3, 8, 4, 3072, 8192, 2048)),
    "llama-400M": TransformerConfig(**llama_sizes(4, 8, 4, 3072, 8192, 2048)),
    "llama-7B": TransformerConfig(**llama_sizes(32, 32, 8, 4096, 14336, 8192)),
}

# Smaller geometries (backbone, local decoder) for training from scratch, tests and benchmarks. The local decoder
# reads one frame's codebooks, so a short context is all it needs.
GEOMETRIES: dict[str, dict] = {
    # A model a test builds in milliseconds.
    "tiny": dict(backbone=llama_sizes(2, 4, 2, 64, 128, 2048), decoder=llama_sizes(1, 4, 2, 64, 128, 16)),
    # ~20M parameters with a 1024-code codec: sized to decode faster than real time on a small CPU
    # (`bench/lm_train_presets_decode.py`).
    "small": dict(backbone=llama_sizes(6, 6, 2, 384, 1024, 4096), decoder=llama_sizes(2, 6, 2, 384, 1024, 16)),
    # The decoding benchmarks' ~36M geometry: backbone 8 x 512 (8 heads / 2 KV), FFN 1408; decoder 2 layers.
    "bench-36m": dict(backbone=llama_sizes(8, 8, 2, 512, 1408, 8192), decoder=llama_sizes(2, 8, 2, 512, 1408, 16)),
}

_TRANSFORMER_FIELDS = (
    "num_layers", "num_heads", "num_kv_heads", "embed_dim", "intermediate_dim", "max_seq_len", "rope_base",
    "scale_factor", "norm_eps",
)


def _transformer_config(flavor: str, explicit: dict | None) -> TransformerConfig:
    if explicit:
        unknown = set(explicit) - set(_TRANSFORMER_FIELDS) - {"head_dim"}
        if unknown:
            raise HeartMuLaError(f"unknown transformer config fields {sorted(unknown)}")
        missing = [k for k in _TRANSFORMER_FIELDS[:6] if k not in explicit]
        if missing:
            raise HeartMuLaError(f"transformer config lacks {missing}")
        check_field_types(TransformerConfig.__dataclass_fields__, explicit, "transformer config")
        try:
            return TransformerConfig(**explicit)
        except ValueError as exc:
            raise HeartMuLaError(f"transformer config: {exc}") from None
    if flavor not in FLAVORS:
        raise HeartMuLaError(f"unknown model flavor {flavor!r}; known: {', '.join(FLAVORS)}")
    return FLAVORS[flavor]


@dataclass
class HeartMuLaConfig:
    backbone_flavor: str = "llama-3B"
    decoder_flavor: str = "llama-300M"
    text_vocab_size: int = 128256
    audio_vocab_size: int = 8197
    audio_num_codebooks: int = 8
    muq_dim: int = 512
    # Project extension (not upstream): explicit sizes that override the flavor numbers.
    backbone_config: dict | None = None
    decoder_config: dict | None = None
    extra: dict = field(default_factory=dict, repr=False)  # other config.json keys, written back unchanged

    @property
    def backbone(self) -> TransformerConfig:
        return _transformer_config(self.backbone_flavor, self.backbone_config)

    @property
    def decoder(self) -> TransformerConfig:
        return _transformer_config(self.decoder_flavor, self.decoder_config)

    @classmethod
    def from_dict(cls, data: dict) -> HeartMuLaConfig:
        known, extra = split_config(data, cls.__dataclass_fields__, "heartmula")
        config = cls(**known, extra=extra)
        config.backbone, config.decoder  # noqa: B018 - validate the sizes now, not at first use
        return config

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> HeartMuLaConfig:
        return read_config_file(Path(path), cls.from_dict)

    def to_dict(self) -> dict:
        data = {"model_type": "heartmula", **self.extra}
        data.update({k: v for k, v in asdict(self).items() if k != "extra" and v is not None})
        return data

    def save(self, path: str | os.PathLike) -> None:
        write_json(Path(path), self.to_dict())


@dataclass
class GenerationConfig:
    """gen_config.json of the official release."""

    text_bos_id: int = 128000
    text_eos_id: int = 128001
    audio_eos_id: int = 8193
    empty_id: int = 0
    # Not in the official file: the lyrics guidance scale a model is made to be sampled with (see
    # heartmula.lm.generation); None keeps upstream's single guidance of tags and lyrics together.
    lyrics_scale: float | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> GenerationConfig:
        data = read_json(path)
        if not isinstance(data, dict):
            raise HeartMuLaError(f"{path} must hold a JSON object of generation settings")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        check_field_types(cls.__dataclass_fields__, known, str(path))
        return cls(**known)

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, {k: v for k, v in asdict(self).items() if v is not None})  # an official file stays as it was
