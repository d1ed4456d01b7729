"""Which LM and codec a song command uses: the ones named, the codec shipped beside an official checkpoint, or the
embedded defaults that ship inside the package (heartmula/defaults/lm and heartmula/defaults/codec).

Resolved before anything heavy loads, so a wrong folder fails in a second, not after minutes of generation."""

from __future__ import annotations

import os
from pathlib import Path

from heartmula.codec.pretrained import DEFAULT_CODEC_DIR, OFFICIAL_FOLDER, locate_codec
from heartmula.errors import HeartMuLaError
from heartmula.lm.pretrained import locate_lm

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


__all__ = ["DEFAULT_CODEC_DIR", "DEFAULT_LM_DIR", "default_lm_installed", "resolve_codec", "resolve_lm"]
