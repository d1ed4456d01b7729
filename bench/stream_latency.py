"""Real-time streaming: RTF, time to first audio, control latency and underruns over a paced session.

A StreamSession runs under a Pacer whose consumer reads at wall-clock rate (a simulated sound card), while a
controller thread changes the style mix (and temperature) every `--control-every` seconds of playback, like a player
moving a slider. Measured:
- time to first audio: session creation (prompt prefill included, models already loaded) -> first chunk ready,
  once without the pacer and as the pacer saw it;
- RTF: compute seconds per second of audio produced (the producer idles while the buffer is full; idle time is
  not counted), split into LM and codec time;
- control latency: `update()` call -> the first chunk holding audio generated under it is ready (wall time), and
  the same in frames generated in between (the engine promises `session.latency_frames`);
- underruns (times the buffer ran dry mid-song) and seconds of silence they caused, pacer degradations;
- process CPU seconds per audio second (all threads): steadier than wall time on a shared machine.

By default it runs the embedded default LM and codec (what a fresh install streams with). `--model`/`--codec` take
other checkpoints; `--random` uses random weights instead: the `bench-36m` LM preset (~36M parameters,
8192 codes) and the `--codec-preset` direct-decoder codec with its codebook widened to the LM's codes (speed does
not depend on the weights).

    python bench/stream_latency.py                       # embedded defaults, 2-minute paced session
    python bench/stream_latency.py --random --codec-preset small-16k
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from _machine import machine

from heartmula.codec import load_codec
from heartmula.codec.model import HeartCodec
from heartmula.codec.pretrained import PRESETS as CODEC_PRESETS
from heartmula.lm.pretrained import load_generator, write_random_root
from heartmula.song_models import resolve_codec, resolve_lm
from heartmula.stream import Pacer, StreamControls, StreamSession

LYRICS = ("[verse]\nthe morning light is on the hill\ni hear the river running still\n"
          "[chorus]\nsing it loud, sing it clear\nthe summer song is almost here\n")
MIXES = [[("ballad,piano", 0.8), ("electronic,synthesizer", 0.2)],
         [("ballad,piano", 0.2), ("electronic,synthesizer", 0.8)]]


def timed(obj, name: str, totals: dict, key: str) -> None:
    """Wrap obj.name so that its wall time adds up in totals[key]."""
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - t0

    setattr(obj, name, wrapper)


def make_models(args, scratch: Path):
    if not args.random:
        model = resolve_lm(args.model, "3B")
        codec_path = resolve_codec(args.codec, model)
        generator, codec = load_generator(model), load_codec(codec_path)
        lm_desc = "embedded default" if args.model is None else str(args.model)
        codec_desc = "embedded default" if args.codec is None and args.model is None else str(codec_path)
    else:
        write_random_root(scratch / "lm", "bench-36m", seed=0)
        generator = load_generator(scratch / "lm")
        lm_desc = "bench-36m preset, random weights"
        config = CODEC_PRESETS[args.codec_preset]()
        config.codebook_size = max(config.codebook_size, generator.codebook_size)
        HeartCodec(config.validate()).init_weights(0).save_pretrained(scratch / "codec")
        codec = load_codec(scratch / "codec")
        codec_desc = f"{args.codec_preset} preset, codebook {config.codebook_size}, random weights"
    if args.int8:
        from heartmula.nn.quant import quantize_int8

        quantize_int8(generator.model)
    return generator, codec, lm_desc, codec_desc


def new_session(generator, codec, args) -> StreamSession:
    controls = StreamControls(prompts=MIXES[0], temperature=1.0, top_k=50, cfg_scale=1.5)
    return StreamSession(generator, codec, LYRICS, controls, seed=1, max_seconds=args.seconds,
                         min_seconds=args.seconds,  # the whole session: the model may not end the song early
                         chunk_frames=args.chunk_frames, codec_steps=args.codec_steps)


def first_audio(generator, codec, args) -> float:
    t0 = time.perf_counter()
    session = new_session(generator, codec, args)
    session.next_chunk()
    elapsed = time.perf_counter() - t0
    session.close()
    return elapsed


def paced_run(generator, codec, args) -> dict:
    session = new_session(generator, codec, args)
    totals = {"lm": 0.0, "codec": 0.0}
    timed(session.lm, "next_frame", totals, "lm")
    timed(session.decoder, "push", totals, "codec")
    timed(session.decoder, "flush", totals, "codec")
    emitted: list[tuple[float, tuple[int, ...], int]] = []  # (ready at, frame versions, frames generated by then)
    pacer = Pacer(session, lookahead_seconds=args.lookahead, on_chunk=lambda c: emitted.append(
        (time.perf_counter(), c.frame_versions, session.frames_generated)))
    updates: list[dict] = []
    stop = threading.Event()

    def controller():
        n = 0
        while not stop.wait(args.control_every):
            if pacer.done:
                return
            n += 1
            frames_before = session.frames_generated
            t0 = time.perf_counter()
            version = session.update(prompts=MIXES[n % 2], temperature=1.0 if n % 2 else 0.9)
            updates.append(dict(version=version, wall=t0, update_call_s=time.perf_counter() - t0,
                                frames_before=frames_before))

    thread = threading.Thread(target=controller, daemon=True)
    cpu_started = time.process_time()
    started = time.perf_counter()
    thread.start()
    stats = pacer.play_realtime(block_seconds=0.02)  # produces in this thread, the one that built the session
    stop.set()
    thread.join()
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    latencies = []
    for u in updates:
        ready = next(((t, n) for t, versions, n in emitted if u["version"] in versions), None)
        applied = session.applied_at.get(u["version"])
        if ready is None or applied is None:
            continue  # the song ended before the change was heard
        latencies.append(dict(version=u["version"], seconds=round(ready[0] - u["wall"], 4),
                              update_call_seconds=round(u["update_call_s"], 4),
                              frames_until_applied=applied - u["frames_before"],
                              frames_generated_until_audio=ready[1] - u["frames_before"]))
    audio_s = stats.produced_seconds
    secs = sorted(x["seconds"] for x in latencies)
    result = dict(
        audio_seconds=round(audio_s, 2), wall_seconds=round(wall, 2),
        cpu_seconds_per_audio_second=round(cpu / audio_s, 3),
        rtf=round(stats.rtf, 3), rtf_lm=round(totals["lm"] / audio_s, 3), rtf_codec=round(totals["codec"] / audio_s, 3),
        time_to_first_audio_paced=round(stats.time_to_first_audio or float("nan"), 3),
        underruns=stats.underruns, underrun_seconds=round(stats.underrun_seconds, 2),
        final_lookahead_seconds=stats.lookahead_seconds, degradations=stats.degradations,
        control_changes=len(latencies), promised_latency_frames=session.latency_frames,
        control_latency_median_s=secs[len(secs) // 2] if secs else None,
        control_latency_max_s=secs[-1] if secs else None,
        control_latencies=latencies,
    )
    session.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="LM root or folder (default: the embedded default)")
    parser.add_argument("--codec", help="codec root or folder (default: beside the LM, or the embedded default)")
    parser.add_argument("--random", action="store_true", help="random weights: bench-36m LM + --codec-preset")
    parser.add_argument("--codec-preset", default="small-16k", choices=sorted(CODEC_PRESETS),
                        help="with --random: the codec geometry")
    parser.add_argument("--seconds", type=float, default=120.0, help="length of the paced session")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads (default: every core, as `heartmula stream`)")
    parser.add_argument("--chunk-frames", type=int, help="frames per chunk (default: the engine's)")
    parser.add_argument("--codec-steps", type=int, default=10, help="flow-matching codecs only")
    parser.add_argument("--lookahead", type=float, default=0.5, help="pacer buffer target, seconds")
    parser.add_argument("--control-every", type=float, default=10.0, help="seconds between control changes")
    parser.add_argument("--ttfa-runs", type=int, default=3, help="time-to-first-audio measurements (after a warm-up)")
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "stream_latency.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        generator, codec, lm_desc, codec_desc = make_models(args, Path(scratch))
        first_audio(generator, codec, args)  # warm-up: allocations, first-call overheads
        ttfa = [first_audio(generator, codec, args) for _ in range(args.ttfa_runs)]
        paced = paced_run(generator, codec, args)
    result = dict(
        lm=lm_desc, codec=codec_desc, threads=args.threads, int8=args.int8, seconds=args.seconds,
        chunk_frames=args.chunk_frames, pacer_lookahead_s=args.lookahead, control_every_s=args.control_every,
        time_to_first_audio_s=[round(t, 3) for t in ttfa], **paced,
        machine=dict(**machine(), torch=torch.__version__,
                     load_average_at_end=[round(x, 2) for x in os.getloadavg()]),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    keys = ("rtf", "cpu_seconds_per_audio_second", "rtf_lm", "rtf_codec", "time_to_first_audio_s", "underruns",
            "underrun_seconds", "control_latency_median_s", "control_latency_max_s")
    summary = {k: result[k] for k in keys}
    print(json.dumps(summary), file=sys.stderr)


if __name__ == "__main__":
    main()
