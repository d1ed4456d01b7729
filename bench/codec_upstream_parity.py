"""Sample-for-sample parity of our HeartCodec decoder with upstream heartlib's (compat mode).

Builds an official-layout codec checkpoint WITH THE UPSTREAM CODE (random weights, small widths, official SQ
geometry), decodes the same codes with the same noise in both implementations and reports the max abs error.
Upstream is imported only here, from a source folder given on the command line (never from the package or tests):

    python bench/codec_upstream_parity.py --heartlib-src /path/to/heartlib/src

It needs heartlib's own dependencies (transformers, vector-quantize-pytorch, einops); torchaudio is stubbed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "codec_upstream_parity.json"


def import_upstream(src: Path):
    # Import heartlib.heartcodec without running heartlib/__init__.py (which pulls in the LM pipeline).
    package = types.ModuleType("heartlib")
    package.__path__ = [str(src / "heartlib")]
    sys.modules["heartlib"] = package
    from heartlib.heartcodec.configuration_heartcodec import HeartCodecConfig
    from heartlib.heartcodec.modeling_heartcodec import HeartCodec

    return HeartCodec, HeartCodecConfig


def build_upstream_checkpoint(src: Path, folder: Path, seed: int, shard: bool):
    HeartCodec, HeartCodecConfig = import_upstream(src)
    config = HeartCodecConfig(dim=64, codebook_size=1024, codebook_dim=32, attention_head_dim=16,
                              num_attention_heads=2, num_layers=2, num_layers_2=1, in_channels=2 * 256 + 64,
                              out_channels=256, init_channel=4)
    torch.manual_seed(seed)  # the layers' own initialisation draws from the global generator
    model = HeartCodec(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("original0"):  # weight-norm g: away from ||v|| so that folding matters
                tensor.copy_(tensor * (0.5 + noise.abs()))
            elif "_codebook" in name:
                tensor.copy_(noise)
            elif tensor.dim() == 1 and ("norm" in name or "activation" in name):
                tensor.add_(0.1 * noise)
            else:
                tensor.add_(noise * (tensor.std() if tensor.numel() > 1 and tensor.std() > 0 else 0.02) * 0.5)
    model.save_pretrained(str(folder), max_shard_size="2MB" if shard else "10GB", safe_serialization=True)
    return model


def record_randn(calls: list):
    original = torch.randn

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(out.clone())
        return out

    return original, recording


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heartlib-src", type=Path, required=True, help="heartlib's src/ folder")
    parser.add_argument("--frames", type=int, nargs="+", default=[62, 700], help="code lengths to decode")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_num_threads(2)

    from heartmula.codec import load_codec

    report = {"steps": args.steps, "cases": []}
    with tempfile.TemporaryDirectory() as tmp:
        for shard in (False, True):
            folder = Path(tmp) / ("sharded" if shard else "single")
            upstream = build_upstream_checkpoint(args.heartlib_src, folder, seed=7, shard=shard)
            ours = load_codec(folder)
            files = sorted(p.name for p in folder.iterdir())
            print(f"checkpoint ({'sharded' if shard else 'single file'}): {files}", file=sys.stderr)
            lengths = args.frames if not shard else args.frames[:1]
            for frames in lengths:
                codes = torch.randint(0, 1024, (8, frames), generator=torch.Generator().manual_seed(frames))
                torch.manual_seed(args.seed)
                calls: list = []
                original, recording = record_randn(calls)
                torch.randn = recording
                try:
                    start = time.perf_counter()
                    expected = upstream.detokenize(codes, num_steps=args.steps, disable_progress=True).numpy()
                    upstream_seconds = time.perf_counter() - start
                finally:
                    torch.randn = original
                start = time.perf_counter()
                seeded, _ = ours.decode(codes, mode="compat", steps=args.steps, seed=args.seed)
                our_seconds = time.perf_counter() - start
                # Explicit noise: the `latents` draw of each window (upstream: first_latent, then per window an
                # optional padding draw and the window's noise; the windows' noise is every [1, 744, 256] draw
                # after the first).
                window_noise = [c[0] for c in calls[1:] if tuple(c.shape) == (1, 744, 256)]
                explicit, _ = ours.decode(codes, mode="compat", steps=args.steps, noise=window_noise)
                case = {
                    "frames": frames, "sharded": shard, "samples": int(expected.shape[-1]),
                    "windows": len(window_noise),
                    "max_abs_error_seeded": float(np.abs(seeded - expected).max()),
                    "max_abs_error_explicit_noise": float(np.abs(explicit - expected).max()),
                    "peak_abs_amplitude": float(np.abs(expected).max()),
                    "upstream_seconds": round(upstream_seconds, 2), "ours_seconds": round(our_seconds, 2),
                }
                print(json.dumps(case), file=sys.stderr)
                report["cases"].append(case)
    report["max_abs_error"] = max(max(c["max_abs_error_seeded"], c["max_abs_error_explicit_noise"])
                                  for c in report["cases"])
    report["pass"] = report["max_abs_error"] <= 1e-4
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"max_abs_error": report["max_abs_error"], "pass": report["pass"]}))
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
