"""HeartCLAP: multilingual music <-> text embeddings, zero-shot tagging, tag adherence and a music library index.

    from heartmula.clap import load_clap, tag_similarity
    model = load_clap()                                  # the shipped default (src/heartmula/defaults/clap)
    audio_vec = model.embed_file("song.flac")            # [512], normalised: also the LM's reference-audio vector
    text_vecs = model.embed_text(["slow sad piano", "慢速悲伤的钢琴"])
    score = tag_similarity("song.flac", "pop,piano,happy")  # cosine in [-1, 1]
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from heartmula.clap.config import HeartCLAPConfig
from heartmula.clap.model import HeartCLAP
from heartmula.clap.prompts import known_tags, tags_prompt
from heartmula.clap.tagging import tag_probabilities
from heartmula.errors import HeartMuLaError

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "defaults" / "clap"

__all__ = ["HeartCLAP", "HeartCLAPConfig", "DEFAULT_MODEL_DIR", "load_clap", "tag_similarity", "tag_scores",
           "audio_embedding", "tags_embedding", "known_tags", "tags_prompt"]

_LOADED: dict[str, HeartCLAP] = {}


def load_clap(path: str | os.PathLike | None = None, device: str = "cpu") -> HeartCLAP:
    """A HeartCLAP model folder (default: the shipped checkpoint), loaded once per process."""
    folder = Path(path) if path is not None else DEFAULT_MODEL_DIR
    key = f"{folder.resolve()}@{device}"
    if key not in _LOADED:
        _LOADED[key] = HeartCLAP.from_pretrained(folder, device=device)
    return _LOADED[key]


def _audio_embedding(model: HeartCLAP, audio, sample_rate: int | None) -> np.ndarray:
    if isinstance(audio, (str, os.PathLike)):
        return model.embed_file(audio)
    if sample_rate is None:
        raise HeartMuLaError("tag_similarity() got raw audio without sample_rate; pass sample_rate=... or a path")
    return model.embed_audio(np.asarray(audio, dtype=np.float32), sample_rate)


def _tag_list(tags: str | list[str]) -> list[str]:
    if isinstance(tags, str):
        tags = tags.split(",")
    return [t.split(":")[0].strip() for t in tags if t.strip()]  # "jazz:0.7" weights are not part of the text


def tag_similarity(audio, tags: str | list[str], sample_rate: int | None = None, model: HeartCLAP | None = None,
                   language: str = "en") -> float:
    """How well audio matches a tag prompt: the cosine between the song's audio embedding and the embedding of its
    tags written as a list (`tags_prompt(tags, language)`), in [-1, 1]. `audio` is a path or a [channels, samples]
    / [samples] array with `sample_rate`. Compare scores from the same model only (each checkpoint has its own
    scale); `eval clap` reports what matching and random tags score on the held-out corpus."""
    model = model or load_clap()
    return float(audio_embedding(audio, sample_rate, model) @ tags_embedding(tags, model, language))


def audio_embedding(audio, sample_rate: int | None = None, model: HeartCLAP | None = None) -> np.ndarray:
    """The normalised audio embedding [dim] of a path or a [channels, samples] / [samples] array with
    `sample_rate` (what `tag_similarity` compares; embed once to compare one song with many tag prompts)."""
    return _audio_embedding(model or load_clap(), audio, sample_rate)


def tags_embedding(tags: str | list[str], model: HeartCLAP | None = None, language: str = "en") -> np.ndarray:
    """The normalised text embedding [dim] of a tag prompt, as `tag_similarity` writes it."""
    return (model or load_clap()).embed_text(tags_prompt(_tag_list(tags), language))[0]


def tag_scores(audio, tags: list[str] | None = None, sample_rate: int | None = None,
               model: HeartCLAP | None = None, language: str = "en", gate_languages: bool = True
               ) -> list[tuple[str, float]]:
    """Zero-shot tagging: (tag, probability) for every tag (default: the tag vocabulary), most likely first.

    The probability is the sigmoid of the cosine under the scale and bias learned by the per-tag training loss, so
    0.5 is the model's own yes/no line (calibrated on the training corpus' tags; other tags are ranked usefully
    but their probabilities are rougher). Language tags are gated on the voice: p(language | voice) * p(voice)
    (`heartmula.clap.tagging`); `gate_languages=False` gives the ungated score."""
    model = model or load_clap()
    tags = list(tags) if tags else known_tags()
    vector = _audio_embedding(model, audio, sample_rate)
    probability = tag_probabilities(model, vector[None], tags, language, gate_languages)[0]
    return sorted(zip(tags, probability.tolist()), key=lambda x: -x[1])
