"""Statistics of the report: paired win rates, group summaries, per-prompt means, sung-language summaries."""

from __future__ import annotations

import math

import numpy as np

from heartmula.eval.report_prompts import LANGUAGES


def pairwise_win_rate(high: list[float], low: list[float]) -> float | None:
    """P(a value of `high` > a value of `low`) over all pairs, ties counted half (the ROC AUC / common-language
    effect size); 0.5 = no separation. None when a group is empty."""
    high = [x for x in high if x is not None and math.isfinite(x)]
    low = [x for x in low if x is not None and math.isfinite(x)]
    if not high or not low:
        return None
    wins = sum((h > lo) + 0.5 * (h == lo) for h in high for lo in low)
    return wins / (len(high) * len(low))


def paired_summary(own: list[float], other: list[float]) -> dict:
    """Own vs baseline per song: means, mean difference, paired effect size (Cohen's d_z = mean / sd of the
    differences) and the fraction of songs where own > baseline."""
    pairs = [(a, b) for a, b in zip(own, other) if a is not None and b is not None]
    if not pairs:
        return {"songs": 0}
    a, b = np.array(pairs).T
    diff = a - b
    sd = float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
    return {"songs": len(diff), "own_mean": float(a.mean()), "shuffled_mean": float(b.mean()),
            "mean_difference": float(diff.mean()), "cohens_dz": float(diff.mean() / sd) if sd > 0 else None,
            "own_above_shuffled": float(np.mean(diff > 0))}


def group_summary(values: dict[str, list[float]], high: str, low: str) -> dict:
    """Mean per group and the win rate of group `high` over group `low`."""
    clean = {k: [x for x in v if x is not None and math.isfinite(x)] for k, v in values.items()}
    summary = {"groups": {k: {"songs": len(v), "mean": float(np.mean(v)) if v else None} for k, v in clean.items()}}
    h, lo = clean.get(high, []), clean.get(low, [])
    summary["difference"] = float(np.mean(h) - np.mean(lo)) if h and lo else None
    summary["win_rate"] = pairwise_win_rate(h, lo)
    return summary


def finite_or_none(value):
    """JSON-safe copy: NaN and infinities become null (strict JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if isinstance(value, np.generic):
        return finite_or_none(value.item())
    return value


def heard_language(probabilities: dict[str, float]) -> str | None:
    """Of the five prompt languages, the one Whisper finds likeliest for a recording's singing (None: no voice)."""
    known = {language: probabilities.get(language, 0.0) for language in LANGUAGES}
    return max(known, key=known.get) if probabilities else None


def sung_language_summary(items: list[dict]) -> dict:
    """How often the language heard in the singing is the one the lyrics are in, over the vocal items."""
    vocal = [s for s in items if s.get("language") in LANGUAGES]
    correct = [s for s in vocal if s.get("heard_language") == s["language"]]
    by_language = {language: {"songs": sum(s["language"] == language for s in vocal),
                              "correct": sum(s["language"] == language for s in correct)}
                   for language in LANGUAGES if any(s["language"] == language for s in vocal)}
    return {"songs": len(vocal), "correct": len(correct), "accuracy": len(correct) / len(vocal) if vocal else None,
            "chance": 1 / len(LANGUAGES), "by_language": by_language}


def prompt_means(songs: list[dict]) -> list[dict]:
    """One record per prompt, its songs (one per seed) averaged: CLAP similarities and flatness by their mean, the
    tempo estimate by its median (octave errors make means of BPM misleading). The tag-adherence statistics count
    prompts, not songs: the seeds of one prompt share its tags, so they are not independent samples of adherence."""
    groups: dict[str, list[dict]] = {}
    for song in songs:
        groups.setdefault(song.get("prompt", song["id"]), []).append(song)

    def mean(values, average=np.mean):
        values = [v for v in values if v is not None and math.isfinite(v)]
        return float(average(values)) if values else None

    return [{"id": prompt, "songs": len(group), "tempo_tag": group[0]["tempo_tag"], "drums": group[0]["drums"],
             "clap_own": mean(s.get("clap_own") for s in group),
             "clap_shuffled": mean(s.get("clap_shuffled") for s in group),
             "tempo_bpm": mean((s.get("tempo_bpm") for s in group), np.median),
             "spectral_flatness": mean(s.get("spectral_flatness") for s in group)}
            for prompt, group in groups.items()]


def tag_summaries(songs: list[dict]) -> dict:
    """CLAP own vs shuffled, tempo by tempo tag, flatness by drums: the tag-adherence numbers of a set of songs."""
    return {
        "clap": paired_summary([s.get("clap_own") for s in songs], [s.get("clap_shuffled") for s in songs]),
        "tempo": group_summary({t: [s["tempo_bpm"] for s in songs if s["tempo_tag"] == t]
                                for t in ("slow", "moderate", "fast")}, "fast", "slow"),
        "drums": group_summary({"drums": [s["spectral_flatness"] for s in songs if s["drums"]],
                                "no drums": [s["spectral_flatness"] for s in songs if not s["drums"]]},
                               "drums", "no drums"),
    }
