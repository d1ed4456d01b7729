"""Streaming style-change demo: a song whose style moves from tag set A to tag set B mid-song, and the change
measured with HeartCLAP tag similarity over time.

1. Writes a control script (OUT/controls.txt) that switches the style mix from A (the song's starting --tags) to B
   at --switch-at seconds, at once or with a --crossfade of a few seconds.
2. Runs the real `heartmula stream` with it (StreamSession, seeded, so the run is reproducible) -> OUT/song.wav.
3. Scores sliding windows (--window seconds every --hop seconds) of the song against A and against B with HeartCLAP
   (`heartmula.clap.tag_similarity`, the shipped model unless --clap) -> OUT/similarity.json (every window, plus
   mean similarity to A and B before and after the switch and whether B - A rose) and OUT/similarity.png.

    python bench/stream_style_demo.py --out work/style-demo                  # the embedded default models
    python bench/stream_style_demo.py --out DIR --model LM_ROOT --codec CODEC_DIR --crossfade 4
    python bench/stream_style_demo.py --out DIR --random-model --seconds 20 --switch-at 10   # pipeline check

--random-model writes a tiny random-weight LM + codec pair into OUT/random-model and uses it: the pipeline runs,
but its music (and so the similarity curves) means nothing.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from heartmula.cli import main as heartmula_main
from heartmula.errors import HeartMuLaError
from heartmula.stream.style_demo import (
    FROM_TAGS,
    TO_TAGS,
    control_script,
    plot_curves,
    similarity_curves,
    summarize,
    write_json,
    write_random_models,
)

LYRICS = Path(__file__).resolve().parent.parent / "examples" / "lyrics.txt"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for song.wav, controls.txt, similarity.json/.png")
    p.add_argument("--model", help="LM checkpoint root or folder (default: the embedded default model)")
    p.add_argument("--version", default="3B", help="which HeartMuLa-oss-<version> of the root to load")
    p.add_argument("--codec", help="codec root or folder (default: HeartCodec-oss/ beside the LM, or the embedded "
                   "default codec with the embedded LM)")
    p.add_argument("--random-model", action="store_true", help="use a tiny random-weight LM + codec written into "
                   "OUT/random-model (checks the pipeline; the music is noise)")
    p.add_argument("--seconds", type=float, default=60.0, help="song length")
    p.add_argument("--switch-at", type=float, default=30.0, help="song time (s) at which the style starts to move")
    p.add_argument("--crossfade", type=float, default=0.0, help="seconds over which the mix moves from A to B "
                   "(0 = a sudden switch)")
    p.add_argument("--from-tags", default=FROM_TAGS, help="tag set A, the style the song starts in")
    p.add_argument("--to-tags", default=TO_TAGS, help="tag set B, the style it moves to")
    p.add_argument("--lyrics", default=str(LYRICS), help="lyrics text or a UTF-8 file; '' = instrumental")
    p.add_argument("--seed", type=int, default=7, help="sampling seed (the same seed gives the same song)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--topk", type=int, default=50, help="sample among the k most likely codes")
    p.add_argument("--cfg-scale", type=float, default=1.5, help="classifier-free guidance (1 = off)")
    p.add_argument("--window", type=float, default=5.0, help="seconds of audio per CLAP window")
    p.add_argument("--hop", type=float, default=1.0, help="seconds between window starts")
    p.add_argument("--clap", help="HeartCLAP model folder (default: the shipped one)")
    p.add_argument("--audio", type=Path, help="skip streaming: score this existing song instead (e.g. a recording "
                   "of `heartmula stream --controls ...`, or two styles spliced together to check the measure)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def resolve_models(args) -> tuple[str | None, str | None, str]:
    """(--model, --codec) to hand to `heartmula stream`, and a description; fails fast on a wrong folder."""
    from heartmula.song_models import resolve_codec, resolve_lm

    if args.random_model:
        if args.model or args.codec:
            raise HeartMuLaError("--random-model replaces --model/--codec: give one or the other")
        root = write_random_models(args.out / "random-model")
        return str(root), None, "tiny random-weight LM + tiny-harmonic codec (pipeline check only)"
    try:
        model = resolve_lm(args.model, args.version)
    except HeartMuLaError as exc:
        raise HeartMuLaError(f"{exc}; or try the pipeline with --random-model") from None
    codec = resolve_codec(args.codec, model)
    return args.model, args.codec, f"LM {model}, codec {codec}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    except HeartMuLaError as exc:
        print(f"stream_style_demo: error: {exc}", file=sys.stderr)
        return 2


def stream(args) -> tuple[Path, Path, str, float, str]:
    """Write the control script and run `heartmula stream` with it -> (song, controls, command, seconds, models)."""
    script = control_script(args.from_tags, args.to_tags, args.switch_at, args.crossfade)
    model, codec, models = resolve_models(args)
    controls, song = args.out / "controls.txt", args.out / "song.wav"
    controls.write_text(script, encoding="utf-8")
    stream_args = ["stream", *(["--model", model] if model else []), *(["--codec", codec] if codec else []),
                   "--version", args.version, "--lyrics", args.lyrics, "--tags", args.from_tags,
                   "--controls", str(controls), "--seed", str(args.seed), "--duration", f"{args.seconds:g}",
                   "--min-duration", f"{args.seconds:g}",  # the whole song, so both styles get their time
                   "--temperature", f"{args.temperature:g}", "--topk", str(args.topk),
                   "--cfg-scale", f"{args.cfg_scale:g}", "--out", str(song), *(["--quiet"] if args.quiet else [])]
    command = "heartmula " + shlex.join(stream_args)
    print(f"streaming: {command}", file=sys.stderr)
    started = time.perf_counter()
    code = heartmula_main(stream_args)
    if code:
        raise HeartMuLaError(f"`heartmula stream` failed (exit status {code}; its message is above)")
    return song, controls, command, round(time.perf_counter() - started, 2), models


def run(args) -> int:
    from heartmula.audio import load_audio
    from heartmula.clap import load_clap
    from heartmula.stream.style_demo import clap_score

    switch_end = args.switch_at + args.crossfade
    if args.switch_at < args.window or (not args.audio and args.seconds - switch_end < args.window):
        raise HeartMuLaError(f"with {args.window:g} s windows the song needs at least one window before the switch "
                             f"and one after it: use --switch-at >= {args.window:g} and --seconds >= "
                             f"{switch_end + args.window:g} (or a shorter --window)")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.audio:
        song, controls, command, stream_seconds, models = args.audio, None, None, None, None
    else:
        song, controls, command, stream_seconds, models = stream(args)

    audio, rate = load_audio(song)
    duration = audio.shape[1] / rate
    if duration < switch_end + args.window:
        raise HeartMuLaError(f"the song is {duration:.1f} s long, too short to compare a {args.window:g} s window "
                             f"after the switch at {args.switch_at:g} s"
                             + (": the model sampled its end early; try another --seed or an earlier --switch-at"
                                if not args.audio else ""))
    started = time.perf_counter()
    score = clap_score(load_clap(args.clap))
    result = similarity_curves(audio, rate, {"A": args.from_tags, "B": args.to_tags}, args.window, args.hop,
                               score=score, progress=not args.quiet)
    summary = summarize(result, args.switch_at, switch_end)
    report = {
        "what": "HeartCLAP tag similarity of a streamed song to tag sets A and B over sliding windows; the style "
                "mix moves from A to B at switch_at (over the crossfade)",
        "tags": {"A": args.from_tags, "B": args.to_tags},
        "models": models, "clap": args.clap or "shipped default",
        "stream_command": command, "stream_seconds": stream_seconds,
        "analysis_seconds": round(time.perf_counter() - started, 2),
        "song": {"path": str(song), "seconds": round(duration, 3), "sample_rate": rate},
        "controls": str(controls) if controls else None, "seed": None if args.audio else args.seed,
        "crossfade": args.crossfade, "window": args.window, "hop": args.hop, "summary": summary, "windows": result,
    }
    write_json(report, args.out / "similarity.json")
    title = f"Style change at {args.switch_at:g} s" + (f" (crossfade {args.crossfade:g} s)" if args.crossfade else "")
    plot_curves(result, summary, args.out / "similarity.png", labels=report["tags"], title=title)

    written = "similarity.json, similarity.png" + ("" if args.audio else ", song.wav, controls.txt")
    print(f"wrote {args.out}/: {written}; song {duration:.1f} s")
    for name in ("before", "after"):
        part = summary[name]
        print(f"{name:>6} the switch ({part['windows']:2d} windows): sim A {part['sim_A']:+.3f}  sim B "
              f"{part['sim_B']:+.3f}  B-A {part['B_minus_A']:+.3f}")
    crossed = f"; B-A first past the midpoint in the window centred at {summary['crossed_at']:.1f} s" \
        if summary["crossed_at"] is not None else ""
    ratio = summary["rise_over_spread"]
    size = f" ({ratio:+.1f} x its window-to-window spread)" if ratio is not None else ""
    print(f"B-A rose by {summary['rise']:+.3f}{size}: {'yes' if summary['rose'] else 'no'}{crossed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
