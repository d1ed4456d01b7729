"""Decoding at the official release's size on this CPU: the HeartMuLa-oss-3B geometry (backbone llama-3B, local
decoder llama-300M, 3.9 B parameters) with random weights, seconds per frame on the native kernels and on torch's
own operations (`HEARTMULA_NATIVE=0`'s path), in one run.

The model is built in place (no checkpoint on disk): bfloat16 needs 8 GB of memory, float32 16 GB. A frame reads
the backbone once, the local decoder and projection seven times and the heads, 10.5 GB in bfloat16, so on a CPU
this measures how close decoding comes to the memory bandwidth at the size users run.

    python bench/lm_official_size.py                  # bfloat16
    python bench/lm_official_size.py --dtype float32
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine  # noqa: E402
from lm_decode import LYRICS, TAGS, copy_bandwidth, weight_bytes_per_frame  # noqa: E402

from heartmula.lm.backends import fuse_projections, pack_weights_in_huge_pages  # noqa: E402
from heartmula.lm.config import GenerationConfig, HeartMuLaConfig  # noqa: E402
from heartmula.lm.generation import HeartMuLaGenerator, SamplingParams, SongRequest  # noqa: E402
from heartmula.lm.model import HeartMuLa  # noqa: E402
from heartmula.nn import native  # noqa: E402
from heartmula.text import TextTokenizer, byte_level_tokenizer  # noqa: E402


def official_size_generator(dtype: torch.dtype, folder: Path) -> HeartMuLaGenerator:
    """The default (3B) configuration with random weights, prepared as `load_generator` prepares a checkpoint."""
    with torch.device("meta"):
        model = HeartMuLa(HeartMuLaConfig())
    model = model.to_empty(device="cpu")  # float32 storage, filled then converted one parameter at a time
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            values = torch.ones(param.shape) if name.endswith(".scale") else torch.empty(param.shape).normal_(
                0, 0.02, generator=generator)
            param.data = values.to(dtype)
    model.use_row_major_heads()
    model.eval()
    fuse_projections(model)
    pack_weights_in_huge_pages(model)
    tokenizer = byte_level_tokenizer()
    tokenizer.save(str(folder / "tokenizer.json"))
    return HeartMuLaGenerator(model, TextTokenizer.from_file(folder / "tokenizer.json", 256, 257),
                              GenerationConfig(text_bos_id=256, text_eos_id=257))


def seconds_per_frame(generator: HeartMuLaGenerator, frames: int) -> tuple[float, float]:
    """(prefill seconds, seconds per frame after it) of one guided song."""
    song = SongRequest(lyrics=LYRICS, tags=TAGS, seed=0)
    with torch.inference_mode():
        session = generator.start([song], SamplingParams(), frames + 2, min_new_frames=frames + 2)
        start = time.perf_counter()
        session.next_frame()
        prefill = time.perf_counter() - start
        session.next_frame()
        start = time.perf_counter()
        for _ in range(frames):
            session.next_frame()
        per_frame = (time.perf_counter() - start) / frames
        session.close()
    return prefill, per_frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench/results/lm_official_size.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        generator = official_size_generator(dtype, Path(tmp))
        built = time.perf_counter() - start
        bytes_per_frame = weight_bytes_per_frame(generator.model, torch.finfo(dtype).bits / 8)
        bandwidth = copy_bandwidth()
        rows = []
        for path in ("native", "torch"):
            kernels = native.kernels()
            if path == "native" and kernels is None:
                continue
            saved = native._loaded
            if path == "torch":
                native._loaded = None  # what HEARTMULA_NATIVE=0 does
            try:
                prefill, per_frame = seconds_per_frame(generator, args.frames)
            finally:
                native._loaded = saved
            rows.append({"path": path, "prefill_s": round(prefill, 2), "seconds_per_frame": round(per_frame, 3),
                         "rtf": round(per_frame * 12.5, 2),
                         "weight_gb_per_s": round(bytes_per_frame / per_frame / 1e9, 1)})
            print(json.dumps(rows[-1]))

    result = {"machine": {**machine(), "threads": args.threads, "torch": torch.__version__,
                          "copy_bandwidth_gb_s": round(bandwidth / 1e9, 2)},
              "model": f"HeartMuLa-oss-3B geometry, random weights, {args.dtype}, CFG 1.5, top-k 50",
              "parameters_billions": round(sum(p.numel() for p in generator.model.parameters()) / 1e9, 2),
              "weight_gb_per_frame": round(bytes_per_frame / 1e9, 2), "build_seconds": round(built, 1),
              "results": rows}
    print(json.dumps(result, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
