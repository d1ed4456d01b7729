"""Where the streaming LM loses time on a small CPU: pauses between chunks, and a second computing thread.

The embedded default LM generates frames as a stream does (lyrics, two weighted tag prompts + the unconditional
row, CFG 1.5), and the mean time per frame is measured in these cases, in this order:
- `main`: frames back to back in the main thread;
- `main_paused`: the same, sleeping `--pause` seconds after every 2 frames, as a paced stream idles between
  chunks once its buffer is full (the sleeps are not counted);
- the same two with one torch thread;
- `second_thread`: frames back to back in a new thread, after the main thread has computed on all threads. GNU
  OpenMP (torch's CPU threads) nearly stops spin-waiting once more of its threads exist than cores, which is why
  heartmula.stream.Pacer produces in the caller's thread and the server computes in one worker thread. Run last:
  it leaves the process in that state.

    python bench/lm_threads.py            # writes bench/results/lm_threads.json
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import torch
from _machine import machine

from heartmula.lm.generation import SamplingParams, SongRequest
from heartmula.lm.pretrained import load_generator
from heartmula.song_models import resolve_lm

ROOT = Path(__file__).resolve().parents[1]


def ms_per_frame(session, frames: int, pause: float = 0.0) -> float:
    busy = 0.0
    for i in range(frames):
        t0 = time.perf_counter()
        session.next_frame()
        busy += time.perf_counter() - t0
        if pause and i % 2 == 1:
            time.sleep(pause)
    return round(busy / frames * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=200, help="frames per case")
    parser.add_argument("--pause", type=float, default=0.1, help="seconds slept after every 2 frames when paused")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "lm_threads.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    generator = load_generator(resolve_lm(None, "3B"))
    song = SongRequest(lyrics=(ROOT / "examples" / "lyrics.txt").read_text(),
                       tags=[("ballad,piano", 0.8), ("electronic,synthesizer", 0.2)], seed=0)
    cases = [("main", args.threads, 0.0), ("main_paused", args.threads, args.pause), ("main", 1, 0.0),
             ("main_paused", 1, args.pause)]
    total = args.frames * (len(cases) + 1) + 20  # + warm-ups
    session = generator.start([song], SamplingParams(cfg_scale=1.5), total, min_new_frames=total)
    ms_per_frame(session, 10)  # warm-up
    results = []
    for name, threads, pause in cases:
        torch.set_num_threads(threads)
        results.append(dict(case=name, threads=threads, ms_per_frame=ms_per_frame(session, args.frames, pause)))
        print(results[-1], flush=True)
    torch.set_num_threads(args.threads)
    ms_per_frame(session, 5)  # the main thread computes on all threads again, as a session's prefill would
    box = {}
    worker = threading.Thread(target=lambda: box.update(ms=ms_per_frame(session, args.frames)))
    worker.start()
    worker.join()
    results.append(dict(case="second_thread", threads=args.threads, ms_per_frame=box["ms"]))
    print(results[-1], flush=True)
    session.close()
    report = dict(lm="embedded default", rows_per_frame=3, frames_per_case=args.frames, pause_s=args.pause,
                  machine=machine(), torch=torch.__version__, results=results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
