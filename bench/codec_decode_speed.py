"""HeartCodec decode speed: default vs compat mode, streaming first-chunk latency, peak memory.

Runs every case in its own process (so peak RSS is per case) on one random-weight checkpoint and prints ratios
measured side by side in one run; writes bench/results/codec_decode_speed.json.

    python bench/codec_decode_speed.py                        # preset "bench": the official geometry scaled
    python bench/codec_decode_speed.py --preset official --seconds 5   # the real size (slow on a CPU)

The "bench" preset keeps the official structure, windows, latent width, 10 Euler steps with CFG and the 48 kHz SQ
decoder, with a narrower DiT (6 + 2 layers of 384 / 768) and SQ decoder (16 base channels), so that a 2-core CPU
finishes; the default/compat ratio depends on the windowing, not on the widths.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "codec_decode_speed.json"


def run_case(args) -> dict:
    import torch

    from heartmula.codec import load_codec

    torch.set_num_threads(args.threads)
    codec = load_codec(args.model)
    frames = round(args.case_seconds * 12.5)
    codes = torch.randint(0, codec.config.codebook_size, (8, frames), generator=torch.Generator().manual_seed(0))
    result = {"mode": args.case_mode, "seconds": args.case_seconds, "frames": frames}
    if args.case_mode == "stream":
        stream = codec.stream(chunk_frames=args.chunk_frames, overlap_frames=args.overlap_frames, seed=0,
                              steps=args.steps)
        began = time.perf_counter()
        first_latency, first_frames, total_audio = None, None, 0
        for i in range(frames):  # the LM hands over one frame at a time
            pushed = time.perf_counter()
            audio = stream.push(codes[:, i])
            if audio.shape[-1] and first_latency is None:
                first_latency, first_frames = time.perf_counter() - pushed, i + 1
            total_audio += audio.shape[-1]
        total_audio += stream.flush().shape[-1]
        result.update(first_chunk_compute_s=round(first_latency, 3), first_chunk_after_frames=first_frames,
                      first_chunk_codes_s=first_frames / 12.5, total_s=round(time.perf_counter() - began, 2),
                      audio_s=total_audio / codec.sample_rate)
    else:
        began = time.perf_counter()
        audio, rate = codec.decode(codes, mode=args.case_mode, steps=args.steps, seed=0)
        elapsed = time.perf_counter() - began
        result.update(decode_s=round(elapsed, 2), audio_s=audio.shape[-1] / rate,
                      rtf=round(elapsed / (frames / 12.5), 3))
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="bench")
    parser.add_argument("--seconds", type=float, nargs="+", default=[5, 30, 120])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk-frames", type=int, default=25, help="streaming: new code frames per chunk")
    parser.add_argument("--overlap-frames", type=int, default=12, help="streaming: in-context code frames")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--case-mode", help=argparse.SUPPRESS)
    parser.add_argument("--case-seconds", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case_mode:
        print(json.dumps(run_case(args)))
        return 0

    from heartmula.codec.pretrained import write_random_codec

    report = {"preset": args.preset, "steps": args.steps, "threads": args.threads, "cases": []}
    with tempfile.TemporaryDirectory() as tmp:
        model = write_random_codec(Path(tmp) / "codec", args.preset, seed=0)
        cases = [(mode, s) for s in args.seconds for mode in ("default", "compat")]
        cases.append(("stream", max(args.seconds)))
        for mode, seconds in cases:
            command = [sys.executable, __file__, "--model", str(model), "--case-mode", mode, "--case-seconds",
                       str(seconds), "--steps", str(args.steps), "--threads", str(args.threads),
                       "--chunk-frames", str(args.chunk_frames), "--overlap-frames", str(args.overlap_frames)]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            case = json.loads(out)
            print(json.dumps(case), file=sys.stderr)
            report["cases"].append(case)
    by = {(c["mode"], c["seconds"]): c for c in report["cases"]}
    report["speedup_default_over_compat"] = {
        f"{s:g}s": round(by[("compat", s)]["decode_s"] / by[("default", s)]["decode_s"], 2) for s in args.seconds
    }
    stream = by[("stream", max(args.seconds))]
    window_compute = max((c["decode_s"] for c in report["cases"] if c["mode"] == "compat" and c["seconds"] <= 29.76),
                         default=None)
    report["stream_first_chunk_compute_s"] = stream["first_chunk_compute_s"]
    report["compat_one_window_compute_s"] = window_compute
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "cases"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
