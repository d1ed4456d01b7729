"""HeartCLAP on real recordings: what it claims to hear in folders of known instrumental music, and retrieval among
real tracks for the tags their sources vouch for.

- False positives: the share of tracks of instrumental sources with a vocal tag (male or female vocal) at >= 0.5,
  and with a language tag at >= 0.5, gated on the voice (what `heartmula tag` prints) and ungated.
- Retrieval: for every tag other than "instrumental" that some but not all sources carry (e.g. `=instrumental,
  electronic` on one folder and `=instrumental,classical` on another), the single-tag English prompt ranks all
  real tracks; relevant: the tracks of the sources with that tag. R@1/5/10, mAP@10 and ROC-AUC beside the random
  ranking.
"""

from __future__ import annotations

import numpy as np

from heartmula.clap.data import embed_items, load_items
from heartmula.clap.prompts import known_tags, tag_categories, tags_prompt
from heartmula.clap.real_music import INSTRUMENTAL, RealSource, source_rows
from heartmula.clap.tagging import VOICE_TAGS, tag_probabilities
from heartmula.eval.clap_metrics import random_retrieval_baseline, retrieval_metrics, roc_auc

THRESHOLD = 0.5


def language_tags() -> list[str]:
    return [t for t in known_tags() if tag_categories()[t] == "language"]


def false_positive_rates(probs: np.ndarray, tags: list[str], threshold: float = THRESHOLD) -> dict:
    """Shares of songs [songs, tags] with any vocal / language tag at >= threshold, and the mean top scores."""
    vocal = probs[:, [tags.index(t) for t in VOICE_TAGS]].max(axis=1)
    language = probs[:, [tags.index(t) for t in language_tags()]].max(axis=1)
    return {"vocal_rate": float(np.mean(vocal >= threshold)), "language_rate": float(np.mean(language >= threshold)),
            "vocal_mean": float(vocal.mean()), "language_mean": float(language.mean())}


def real_retrieval(model, audio: np.ndarray, track_tags: list[frozenset[str]]) -> dict:
    """Single-tag text->audio retrieval among real tracks, for tags some tracks have and others lack."""
    tags = sorted({t for s in track_tags for t in s} - {INSTRUMENTAL})
    tags = [t for t in tags if 0 < sum(t in s for s in track_tags) < len(track_tags)]
    if not tags:
        return {}
    text = model.embed_text([tags_prompt([t], "en") for t in tags])
    relevant = np.array([[t in s for s in track_tags] for t in tags])
    similarity = text @ audio.T
    out = {t: {**retrieval_metrics(similarity[i : i + 1], relevant[i : i + 1]),
               "roc_auc": roc_auc(similarity[i], relevant[i]), "relevant": int(relevant[i].sum()),
               "random": random_retrieval_baseline(relevant[i : i + 1])} for i, t in enumerate(tags)}
    return out


def evaluate_real_music(model, sources: list[RealSource], cache_dir, progress: bool = True) -> dict:
    """False-positive rates per instrumental source and overall, and real-track retrieval (see module doc)."""
    rows = [row for source in sources for row in source_rows(source, split="real")]
    items, skipped = load_items(rows, model, cache_dir, progress)
    source_of = {row["id"]: row["source"] for row in rows}
    audio = embed_items(model, items)
    tags = known_tags()
    gated = tag_probabilities(model, audio, tags, gate_languages=True)
    ungated = tag_probabilities(model, audio, tags, gate_languages=False)
    instrumental = np.array([INSTRUMENTAL in it.tags for it in items])
    report: dict = {"tracks": len(items), "skipped": skipped, "threshold": THRESHOLD, "sources": {}}
    for source in sources:
        mask = np.array([source_of[it.id] == source.name for it in items])
        if not mask.any():
            continue
        entry = {"tracks": int(mask.sum()), "tags": list(source.tags),
                 "instrumental_mean": float(gated[mask, tags.index(INSTRUMENTAL)].mean())}
        if INSTRUMENTAL in source.tags:
            entry["gated"] = false_positive_rates(gated[mask], tags)
            entry["ungated"] = false_positive_rates(ungated[mask], tags)
        report["sources"][source.name] = entry
    if instrumental.any():
        report["instrumental_tracks"] = int(instrumental.sum())
        report["gated"] = false_positive_rates(gated[instrumental], tags)
        report["ungated"] = false_positive_rates(ungated[instrumental], tags)
        report["instrumental_tag_rate"] = float(np.mean(gated[instrumental, tags.index(INSTRUMENTAL)] >= THRESHOLD))
    report["retrieval"] = real_retrieval(model, audio, [it.tags for it in items])
    return report
