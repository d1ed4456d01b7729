"""A short soak (the long one is bench/server_soak.py): short jobs while faults strike at random."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_job_ends_done_or_failed_with_a_reason_and_nothing_is_left_behind(tmp_path):
    spec = importlib.util.spec_from_file_location("server_soak", ROOT / "bench" / "server_soak.py")
    soak = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = soak  # its dataclasses look their module up
    spec.loader.exec_module(soak)
    result = soak.run_soak(jobs=16, in_process=True, seed=1, jobs_per_round=2, hold=0.4, fault_rate=1.0,
                           folder=tmp_path)
    assert result["jobs"] == 16 and result["stuck"] == [], result
    assert result["failed_without_reason"] == [] and result["leftovers"] == [], result
    assert result["outcome"].get("done", 0) >= 1, result
    assert len(result["faults"]) >= 3, result  # most kinds of fault struck
    assert result["rss_growth_mb"] < 100, result
