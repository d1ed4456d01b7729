"""HeartCLAP metrics: retrieval (R@k, mAP@10) with random baselines, tag ROC-AUC / PR-AUC, cross-lingual agreement.

All functions take plain numpy arrays so that they score any embedding model, not just HeartCLAP.
- Retrieval: `similarity[q, n]` (query q against candidate n) and `relevant[q, n]` (bool). R@k is the share of
  queries with at least one relevant candidate in the top k; mAP@10 averages, per query, the precision at each rank
  <= 10 that holds a relevant candidate, divided by min(10, number relevant).
- Random baseline: the same metrics for a random ranking, exactly (R@k) or by 2000 seeded shuffles (mAP@10).
- Tag AUCs: per tag with both positive and negative items, then the macro mean.
- Cross-lingual agreement: for one description written in several languages, the mean share of the top-10 items
  that two languages have in common (every pair of languages, every description).
"""

from __future__ import annotations

import math

import numpy as np

from heartmula.clap.data import embed_items, load_items
from heartmula.clap.prompts import LANGUAGES, tags_prompt
from heartmula.clap.tagging import tag_probabilities
from heartmula.errors import HeartMuLaError

KS = (1, 5, 10)


def top_k(similarity: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best candidates per row, best first."""
    k = min(k, similarity.shape[1])
    part = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(similarity, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _ranked_relevance(similarity: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    return np.take_along_axis(relevant, top_k(similarity, k), axis=1).astype(bool)


def average_precision_at(hits: np.ndarray, n_relevant: np.ndarray, k: int = 10) -> np.ndarray:
    """Per query AP@k from ranked hits [Q, >=k] and the number of relevant candidates per query."""
    hits = hits[:, :k].astype(np.float64)
    precision = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    denominator = np.minimum(n_relevant, k).astype(np.float64)
    return np.where(denominator > 0, (precision * hits).sum(axis=1) / np.maximum(denominator, 1), 0.0)


def retrieval_metrics(similarity: np.ndarray, relevant: np.ndarray, ks=KS) -> dict[str, float]:
    similarity = np.asarray(similarity, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    hits = _ranked_relevance(similarity, relevant, max(max(ks), 10))
    out = {f"R@{k}": float(hits[:, :k].any(axis=1).mean()) for k in ks}
    out["mAP@10"] = float(average_precision_at(hits, relevant.sum(axis=1), 10).mean())
    return out


def random_retrieval_baseline(relevant: np.ndarray, ks=KS, trials: int = 2000, seed: int = 0) -> dict[str, float]:
    """Expected metrics of a random ranking over the same candidates and relevance sets."""
    relevant = np.asarray(relevant, dtype=bool)
    n = relevant.shape[1]
    r = relevant.sum(axis=1)
    out = {}
    for k in ks:
        k_eff = min(k, n)
        # P(no relevant item in k random picks) = C(n - r, k) / C(n, k)
        miss = np.array([math.comb(n - int(x), k_eff) / math.comb(n, k_eff) for x in r])
        out[f"R@{k}"] = float((1.0 - miss).mean())
    rng = np.random.default_rng(seed)
    aps = []
    for _ in range(trials):
        order = np.argsort(rng.random(relevant.shape), axis=1)[:, :10]
        aps.append(average_precision_at(np.take_along_axis(relevant, order, axis=1), r, 10).mean())
    out["mAP@10"] = float(np.mean(aps))
    return out


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half), via the rank-sum statistic."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision (the mean precision at each positive)."""
    labels = np.asarray(labels, dtype=bool)
    if not labels.any():
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    hits = labels[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def tag_metrics(scores: np.ndarray, labels: np.ndarray, tag_names: list[str]) -> dict:
    """Macro ROC-AUC and PR-AUC over tags [items, tags] that have both positives and negatives, plus per tag."""
    per_tag = {}
    for j, name in enumerate(tag_names):
        column = labels[:, j].astype(bool)
        if column.all() or not column.any():
            continue
        per_tag[name] = {"roc_auc": roc_auc(scores[:, j], column), "pr_auc": average_precision(scores[:, j], column),
                         "positives": int(column.sum()), "prevalence": float(column.mean())}
    if not per_tag:
        return {"roc_auc": float("nan"), "pr_auc": float("nan"), "pr_auc_random": float("nan"), "tags": 0,
                "per_tag": {}}
    return {"roc_auc": float(np.mean([v["roc_auc"] for v in per_tag.values()])),
            "pr_auc": float(np.mean([v["pr_auc"] for v in per_tag.values()])),
            "pr_auc_random": float(np.mean([v["prevalence"] for v in per_tag.values()])),
            "tags": len(per_tag), "per_tag": per_tag}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> dict:
    """Expected calibration error of binary probabilities (any shape, flattened): the mean over equal-width
    probability bins of |mean predicted - share positive|, weighted by the share of predictions in the bin."""
    probs = np.asarray(probs, dtype=np.float64).ravel()
    labels = np.asarray(labels, dtype=bool).ravel()
    which = np.minimum((probs * bins).astype(int), bins - 1)
    ece, table = 0.0, []
    for b in range(bins):
        mask = which == b
        if not mask.any():
            continue
        predicted, observed = float(probs[mask].mean()), float(labels[mask].mean())
        ece += mask.mean() * abs(predicted - observed)
        table.append({"bin": b, "count": int(mask.sum()), "predicted": predicted, "observed": observed})
    return {"ece": float(ece), "bins": table, "predictions": int(probs.size)}


def top_k_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Share of items two top-k lists have in common."""
    return len(set(a.tolist()) & set(b.tolist())) / max(len(a), 1)


def cross_lingual_agreement(similarity_by_language: dict[str, np.ndarray], k: int = 10) -> dict:
    """similarity_by_language[lang] is [descriptions, gallery]; row i is the same description in every language."""
    languages = list(similarity_by_language)
    tops = {lang: top_k(sim, k) for lang, sim in similarity_by_language.items()}
    n = next(iter(tops.values())).shape[0]
    pairs = {}
    for i, a in enumerate(languages):
        for b in languages[i + 1 :]:
            pairs[f"{a}-{b}"] = float(np.mean([top_k_overlap(tops[a][q], tops[b][q]) for q in range(n)]))
    return {"mean_top_k_overlap": float(np.mean(list(pairs.values()))) if pairs else float("nan"), "k": k,
            "pairs": pairs, "descriptions": n}


# -- the `heartmula eval clap` recipe --
def _subset_queries(items, rng, size: int = 3):
    """Per item, a seeded subset of its tags (masked prompts as users type them: 'slow, piano, sad')."""
    return [sorted(rng.sample(it.tag_list, min(size, len(it.tag_list)))) for it in items]


def evaluate_clap(model, rows: list[dict], held_out_splits=("val", "test"), cache_dir=None, gallery: str = "all",
                  seed: int = 0, progress: bool = True) -> dict:
    """Score a HeartCLAP model on the held-out rows of corpus manifests (see README, 'Music search (HeartCLAP)').

    - retrieval on held-out songs: text->audio and audio->text R@1/5/10, mAP@10 for the full tag list as a prompt
      (English, and text->audio in each language), and for 3-tag prompts (relevant: every held-out song with those
      tags); each beside its random baseline;
    - tags: zero-shot ROC-AUC / PR-AUC per tag on held-out songs (single-tag English prompts), macro mean;
    - cross-lingual: the same description (full tag list and 3-tag subset of each held-out song) in en/zh/ja/ko/es
      against `gallery` ("all": every song of the manifests; "held-out"), mean top-10 overlap over language pairs;
    - tag adherence: `tag_similarity` of each held-out song with its own tags vs. tags of another held-out song;
    - calibration: expected calibration error of the tag probabilities that `heartmula tag` prints (language tags
      gated on the voice) over every (held-out song, corpus tag) pair.
    """
    import random
    import tempfile
    from pathlib import Path

    held_rows = [r for r in rows if r["split"] in held_out_splits]
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(cache_dir) if cache_dir else Path(tmp)
        held, skipped = load_items(held_rows, model, cache, progress)
        if len(held) < 2:
            raise HeartMuLaError(f"only {len(held)} tagged held-out songs (splits {', '.join(held_out_splits)}); "
                                 "evaluate on a manifest with val/test rows")
        other = []
        if gallery == "all":
            other, more = load_items([r for r in rows if r["split"] not in held_out_splits], model, cache, progress)
            skipped += more
        audio = embed_items(model, held)
        gallery_audio = np.concatenate([audio, embed_items(model, other)]) if other else audio

    rng = random.Random(seed)
    report: dict = {"held_out_songs": len(held), "gallery_songs": len(gallery_audio), "skipped": skipped}
    same_tags = np.array([[a.tags == b.tags for b in held] for a in held])
    full_en = model.embed_text([tags_prompt(it.tag_list, "en") for it in held])
    report["full_tags_en"] = {
        "text_to_audio": retrieval_metrics(full_en @ audio.T, same_tags),
        "audio_to_text": retrieval_metrics(audio @ full_en.T, same_tags.T),
        "random": random_retrieval_baseline(same_tags),
    }
    subsets = _subset_queries(held, rng)
    subset_relevant = np.array([[set(q) <= b.tags for b in held] for q in subsets])
    per_language, subset_per_language = {}, {}
    cross_full, cross_subset = {}, {}
    for lang in LANGUAGES:
        full = model.embed_text([tags_prompt(it.tag_list, lang) for it in held])
        sub = model.embed_text([tags_prompt(q, lang) for q in subsets])
        per_language[lang] = retrieval_metrics(full @ audio.T, same_tags)
        subset_per_language[lang] = retrieval_metrics(sub @ audio.T, subset_relevant)
        cross_full[lang] = full @ gallery_audio.T
        cross_subset[lang] = sub @ gallery_audio.T
    report["full_tags_by_language"] = per_language
    report["three_tags_by_language"] = subset_per_language
    report["three_tags_random"] = random_retrieval_baseline(subset_relevant)
    report["cross_lingual"] = {"full_tags": cross_lingual_agreement(cross_full),
                               "three_tags": cross_lingual_agreement(cross_subset)}
    report["cross_lingual"]["mean_top_10_overlap"] = float(np.mean(
        [report["cross_lingual"][k]["mean_top_k_overlap"] for k in ("full_tags", "three_tags")]))

    vocabulary = sorted({t for it in held for t in it.tags} | {t for it in other for t in it.tags})
    tag_text = model.embed_text([tags_prompt([t], "en") for t in vocabulary])
    labels = np.array([[t in it.tags for t in vocabulary] for it in held])
    tags = tag_metrics(audio @ tag_text.T, labels, vocabulary)
    report["tags"] = {k: v for k, v in tags.items() if k != "per_tag"}
    report["tags_per_tag"] = tags["per_tag"]
    report["calibration"] = expected_calibration_error(tag_probabilities(model, audio, vocabulary), labels)

    own = np.sum(audio * full_en, axis=1)
    shuffled = [(i + 1 + rng.randrange(len(held) - 1)) % len(held) for i in range(len(held))]
    other_tags = np.array([audio[i] @ full_en[j] for i, j in enumerate(shuffled)])
    report["tag_similarity"] = {"own_tags_mean": float(own.mean()), "other_song_tags_mean": float(other_tags.mean()),
                                "own_above_other": float(np.mean(own > other_tags))}
    return report
