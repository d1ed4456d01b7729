"""Which LM and codec a song command uses: the ones named, the codec shipped beside an official checkpoint, or the
embedded defaults that ship inside the package (heartmula/defaults/lm and heartmula/defaults/codec).

Resolved before anything heavy loads, so a wrong folder fails in a second, not after minutes of generation."""

from __future__ import annotations

import os
from pathlib import Path

from heartmula.clap import load_clap
from heartmula.codec.pretrained import DEFAULT_CODEC_DIR, OFFICIAL_FOLDER, locate_codec
from heartmula.errors import HeartMuLaError
from heartmula.lm.pretrained import load_generator, locate_lm
from heartmula.nn import native

DEFAULT_LM_DIR = Path(__file__).resolve().parent / "defaults" / "lm"


def default_lm_installed() -> bool:
    return (DEFAULT_LM_DIR / "config.json").is_file()


def resolve_lm(model: str | os.PathLike | None, version: str) -> Path:
    """The LM checkpoint root or folder; None: the embedded default."""
    if model is None:
        if not default_lm_installed():
            raise HeartMuLaError("this installation ships no default model: pass --model ROOT_OR_DIR "
                                 "(`heartmula model init DIR` writes a random-weight model for trying the pipeline)")
        model = DEFAULT_LM_DIR
    locate_lm(model, version)
    return Path(model)


def resolve_codec(codec: str | os.PathLike | None, model: Path) -> Path:
    """An explicit codec; else HeartCodec-oss/ beside the LM (the official layout); else, for the embedded LM, the
    embedded codec (its tokens are what it was trained on)."""
    if codec is not None:
        return locate_codec(codec)
    for candidate in (model, model.parent):
        if (candidate / OFFICIAL_FOLDER).is_dir():
            return locate_codec(candidate)
    if model.resolve() == DEFAULT_LM_DIR:
        return locate_codec(None)
    raise HeartMuLaError(f"no {OFFICIAL_FOLDER}/ beside {model}: pass --codec PATH")


def int8_by_default(model_path: str | os.PathLike, dtype: str = "float32", device: str = "cpu") -> bool:
    """Whether `load_lm` quantises when not told: for the embedded default LM in float32 on a CPU where the native
    decoding kernels (`heartmula.nn.native`) cannot be used, yes: there int8 decodes faster than torch's float32
    products and its next-code distributions barely move (`bench/lm_int8.py` measures both). With the kernels,
    float32 decodes faster than int8. Other checkpoints run in the precision asked for, as upstream."""
    return (Path(model_path).resolve() == DEFAULT_LM_DIR and dtype == "float32" and str(device).startswith("cpu")
            and native.kernels() is None)


def load_lm(model_path: str | os.PathLike, version: str = "3B", dtype: str = "float32", device: str = "cpu",
            int8: bool | None = None, lora: str | os.PathLike | None = None, lora_scale: float = 1.0,
            quant: str | None = None):
    """`load_generator`, with FBGEMM's int8 weight-only linear layers when `int8` says so (None: `int8_by_default`)
    and a LoRA adapter merged into the weights first when `lora` names one; or the native kernels' int8 / int4
    weights when `quant` says so or the folder holds them (heartmula.lm.quantized)."""
    if quant is not None and int8:
        raise HeartMuLaError("--int8 and --quant exclude each other: choose one")
    weights = quant
    if quant is None and (int8_by_default(model_path, dtype, device) if int8 is None else int8):
        weights = "int8-fbgemm"
    return load_generator(model_path, version, dtype, device, lora, lora_scale, weights=weights)


def clap_reference(slot_dim: int, reference_audio: tuple, clap=None):
    """A HeartCLAP audio embedding of (audio [C, N], rate) for an LM's reference-audio slot of `slot_dim` inputs
    (`model.config.muq_dim`); `clap`: a loaded HeartCLAP, default the shipped one (the embedded LM was trained with
    its embeddings). Returns a float32 tensor [slot_dim]."""
    import numpy as np
    import torch

    if clap is None:
        clap = load_clap()
    audio, rate = reference_audio
    vector = torch.from_numpy(np.asarray(clap.embed_audio(np.asarray(audio, dtype=np.float32), rate)))
    if vector.numel() != slot_dim:
        raise HeartMuLaError(f"the CLAP model embeds audio in {vector.numel()} dimensions but this LM's reference "
                             f"slot takes {slot_dim}: use a CLAP model made for it")
    return vector.float()


__all__ = ["DEFAULT_CODEC_DIR", "DEFAULT_LM_DIR", "clap_reference", "default_lm_installed", "int8_by_default",
           "load_lm", "resolve_codec", "resolve_lm"]
