"""`heartmula batch`: requests checked, songs equal to `heartmula generate`'s, a killed run resumes without redoing
finished songs, the same on a local Ray cluster, and a bad Ray address fails at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from heartmula import batch_ray
from heartmula.batch import BatchOptions, plan_batches, read_manifest, read_requests, run_batch
from heartmula.batch_ray import RayTimeouts, check_reachable
from heartmula.cli import main
from heartmula.errors import HeartMuLaError

ROOT = Path(__file__).resolve().parents[1]
GREEDY = {"temperature": 0.0}


@pytest.fixture(scope="module")
def requests_file(tmp_path_factory):
    rows = [{"id": f"song-{i}", "lyrics": f"[verse]\nla la {i}", "tags": "pop,piano" if i % 2 else "rock",
             "duration": 1.0, "seed": 10 + i} for i in range(5)]
    rows[3]["sampling"] = {"top_k": 5, "cfg_scale": 2.0}
    rows.append({"id": "instrumental", "tags": "jazz", "duration": 1.0, "min_duration": 0.5})  # seed from its id
    path = tmp_path_factory.mktemp("batch_requests") / "requests.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _generate_codes(song_root: Path, request, tmp_path: Path) -> np.ndarray:
    out = tmp_path / f"{request.id}.npy"
    args = ["generate", "--model", str(song_root), "--lyrics", request.lyrics, "--tags", request.tags,
            "--duration", str(request.duration), "--min-duration", str(request.min_duration), "--seed",
            str(request.seed), "--topk", str(request.sampling.top_k), "--cfg-scale", str(request.sampling.cfg_scale),
            "--device", "cpu", "--no-decode", "--codes-out", str(out), "--quiet"]
    assert main(args) == 0
    return np.load(out)


def test_requests_are_checked(tmp_path, requests_file):
    requests = read_requests(requests_file)
    assert [len(b) for b in plan_batches(requests, 2)] == [2, 2, 1, 1]  # song-3's sampling differs
    bad = tmp_path / "bad.jsonl"
    for line, message in [('{"id": "a", "colour": 1}', "unknown request fields"),
                          ('{"id": "a", "sampling": {"top_k": 0}}', "top_k"),
                          ('{"id": "a"}\n{"id": "a"}', "appears twice"), ("[1]", "JSON object")]:
        bad.write_text(line + "\n", encoding="utf-8")
        with pytest.raises(HeartMuLaError, match=message):
            read_requests(bad)


def test_a_bad_ray_address_fails_at_once():
    with pytest.raises(HeartMuLaError, match="no Ray cluster answers at 127.0.0.1:1"):
        check_reachable("127.0.0.1:1", timeout=2.0)
    with pytest.raises(HeartMuLaError, match="HOST:PORT"):
        check_reachable("nowhere", timeout=2.0)


def start_local_ray(ray) -> None:
    """A local Ray with 2 CPUs."""
    # Shared machines: Ray's memory monitor would kill the tiny workers for other processes' memory.
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    batch_ray.start_local_ray(ray, num_cpus=2)


KILLER = """
import os, signal, sys
from heartmula.batch import BatchOptions, run_batch

finished = []

def record(entry):
    finished.append(entry["id"])
    if len(finished) == 2:
        os.kill(os.getpid(), signal.SIGKILL)

run_batch(sys.argv[1], sys.argv[2], BatchOptions(model=sys.argv[3], device="cpu", batch_size=1), on_record=record)
"""


def test_killed_run_resumes_on_ray_with_the_songs_of_generate(song_root, requests_file, tmp_path):
    ray = pytest.importorskip("ray", reason="the 'scale' extra (ray) is not installed")
    out = tmp_path / "songs"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLER), str(requests_file), str(out),
                             str(song_root)], env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    first = read_manifest(out)
    assert sorted(first) == ["song-0", "song-1"] and all(r["status"] == "done" for r in first.values())
    stamps = {i: (out / r["path"]).stat().st_mtime_ns for i, r in first.items()}

    start_local_ray(ray)
    try:
        summary = run_batch(requests_file, out, BatchOptions(model=str(song_root), device="cpu", batch_size=2),
                            ray_address="local", workers=2, timeouts=RayTimeouts(start=300, batch=300))
    finally:
        ray.shutdown()
    assert (summary.skipped, summary.done, summary.failed) == (2, 4, 0)
    assert {i: (out / first[i]["path"]).stat().st_mtime_ns for i in first} == stamps  # not made again
    manifest = read_manifest(out)
    assert len(manifest) == 6 and all(r["status"] == "done" for r in manifest.values())
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 6  # one record per song: nothing was redone
    for request in read_requests(requests_file):
        record = manifest[request.id]
        codes = np.load(out / record["codes"])
        np.testing.assert_array_equal(codes, _generate_codes(song_root, request, tmp_path))
        assert record["seconds"] == pytest.approx(codes.shape[1] / 12.5)
        assert (out / record["path"]).stat().st_size > 1000


def test_cli_records_failures_and_runs_in_process(song_root, tmp_path, capsys):
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({"id": "long", "lyrics": "x", "duration": 1e6}) + "\n"
                        + json.dumps({"id": "ok", "duration": 1.0, "seed": 1}) + "\n"
                        + json.dumps({"id": "adapted", "duration": 1.0, "lora": str(tmp_path / "no-adapter")}) + "\n",
                        encoding="utf-8")
    out = tmp_path / "songs"
    code = main(["batch", str(requests), "--out", str(out), "--model", str(song_root), "--device", "cpu"])
    manifest = read_manifest(out)
    assert code == 1 and manifest["ok"]["status"] == "done"
    assert manifest["long"]["status"] == "failed" and manifest["long"]["error"].startswith("generation failed")
    assert manifest["adapted"]["status"] == "failed" and "no-adapter" in manifest["adapted"]["error"]
    assert "1 songs made, 2 failed, 0 already done" in capsys.readouterr().out
