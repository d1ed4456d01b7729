"""Zero-shot tag probabilities, with language tags gated on the presence of a voice.

A tag's probability is the sigmoid of the cosine between the audio embedding and the single-tag prompt under the
scale and bias learned by the per-tag training loss, so 0.5 is the model's own yes/no line.

A language can only be heard in a voice. The model scores a language tag as if a voice were present (a song's
language tag is only ever trained on sung songs), so the reported probability is
    p(language) = p(language | voice) * p(voice),    p(voice) = max(p(male vocal), p(female vocal))
and an instrumental piece gets no language even when its sound resembles music sung in that language.
"""

from __future__ import annotations

import numpy as np
import torch

from heartmula.clap.prompts import normalise_tag, tag_categories, tags_prompt

VOICE_TAGS = ("male vocal", "female vocal")


def raw_tag_probabilities(model, audio_vectors: np.ndarray, tags: list[str], language: str = "en") -> np.ndarray:
    """[songs, tags] probabilities from normalised audio embeddings [songs, dim], each tag scored on its own."""
    text = model.embed_text([tags_prompt([t], language) for t in tags])
    cosine = torch.from_numpy(np.atleast_2d(audio_vectors) @ text.T)
    scale = model.logit_scale.detach().cpu().clamp(max=float(np.log(100.0))).exp()
    return torch.sigmoid(scale * cosine + model.tag_bias.detach().cpu()).numpy()


def is_language_tag(tag: str) -> bool:
    return tag_categories().get(normalise_tag(tag)) == "language"


def tag_probabilities(model, audio_vectors: np.ndarray, tags: list[str], language: str = "en",
                      gate_languages: bool = True) -> np.ndarray:
    """[songs, tags] probabilities; language tags multiplied by the voice probability when `gate_languages`."""
    tags = list(tags)
    gated = [j for j, t in enumerate(tags) if is_language_tag(t)] if gate_languages else []
    if not gated:
        return raw_tag_probabilities(model, audio_vectors, tags, language)
    probs = raw_tag_probabilities(model, audio_vectors, tags + list(VOICE_TAGS), language)
    voice = probs[:, len(tags):].max(axis=1, keepdims=True)
    probs = probs[:, : len(tags)].copy()
    probs[:, gated] *= voice
    return probs
