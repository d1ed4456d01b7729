"""HeartCLAP metric functions on hand-checked cases."""

from __future__ import annotations

import numpy as np
import pytest

from heartmula.eval.clap_metrics import (
    average_precision,
    cross_lingual_agreement,
    random_retrieval_baseline,
    retrieval_metrics,
    roc_auc,
    tag_metrics,
)


def test_retrieval_metrics_by_hand():
    # query 0 finds its item first; query 1 finds it third; query 2's item is last of 12
    sim = np.tile(-np.arange(12, dtype=float), (3, 1))
    relevant = np.zeros((3, 12), bool)
    relevant[0, 0] = relevant[1, 2] = relevant[2, 11] = True
    m = retrieval_metrics(sim, relevant)
    assert m["R@1"] == pytest.approx(1 / 3) and m["R@5"] == pytest.approx(2 / 3) and m["R@10"] == pytest.approx(2 / 3)
    assert m["mAP@10"] == pytest.approx((1 + 1 / 3 + 0) / 3)


def test_map_with_several_relevant_items():
    sim = -np.arange(5, dtype=float)[None]
    relevant = np.array([[True, False, True, False, False]])
    assert retrieval_metrics(sim, relevant)["mAP@10"] == pytest.approx((1 + 2 / 3) / 2)


def test_random_baseline_matches_counting():
    relevant = np.eye(20, dtype=bool)
    base = random_retrieval_baseline(relevant)
    assert base["R@1"] == pytest.approx(1 / 20) and base["R@10"] == pytest.approx(10 / 20)
    # AP@10 of one relevant item at a uniform rank: mean of 1/r for r <= 10, over 20 ranks
    assert base["mAP@10"] == pytest.approx(sum(1 / r for r in range(1, 11)) / 20, abs=0.01)


def test_auc_and_ap():
    labels = np.array([1, 0, 1, 0, 0], bool)
    assert roc_auc(np.array([0.9, 0.8, 0.7, 0.1, 0.0]), labels) == pytest.approx(5 / 6)
    assert roc_auc(np.array([1, 1, 1, 1, 1.0]), labels) == pytest.approx(0.5)
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.1, 0.0]), labels) == pytest.approx((1 + 2 / 3) / 2)
    out = tag_metrics(np.array([[0.9, 0.1], [0.1, 0.2]]), np.array([[1, 1], [0, 1]], bool), ["a", "b"])
    assert out["tags"] == 1 and out["roc_auc"] == pytest.approx(1.0)  # tag b is on every item: not scorable


def test_cross_lingual_agreement():
    base = np.random.default_rng(0).standard_normal((4, 30))
    same = cross_lingual_agreement({"en": base, "zh": base + 1e-9})
    assert same["mean_top_k_overlap"] == pytest.approx(1.0)
    flipped = cross_lingual_agreement({"en": base, "zh": -base})
    assert flipped["mean_top_k_overlap"] == pytest.approx(0.0)
