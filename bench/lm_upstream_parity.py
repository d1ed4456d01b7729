"""Token-for-token parity of heartmula's HeartMuLa generation with upstream heartlib.

Upstream's own code builds and saves a random-weight checkpoint in the official layout; both implementations then
generate from it (float32, CPU) and the codes are compared. Greedy (top-k 1) must match in both our default and
`compat` modes unless upstream emits a code the codec cannot decode (then the default mode continues where
upstream stops or breaks: reported as `upstream_invalid_code`). Seeded top-k sampling is compared in `compat` mode,
whose sampler draws its noise in upstream's order (same seed, same song); the default mode samples among the k best
codes only (same distribution, its own random stream), so its seeded songs are not compared.

    /path/to/upstream-venv/bin/python bench/lm_upstream_parity.py --heartlib-src /path/to/heartlib
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
from _upstream import build_upstream_checkpoint, import_upstream, upstream_generate, upstream_pipeline  # noqa: E402

from heartmula.lm.config import GenerationConfig  # noqa: E402
from heartmula.lm.generation import SamplingParams, SongRequest, frames_for_duration  # noqa: E402
from heartmula.lm.pretrained import load_generator  # noqa: E402
from heartmula.text import byte_level_tokenizer  # noqa: E402

LYRICS = {
    "en": "[verse]\nthe morning light is on the hill\n[chorus]\nsing it loud and sing it clear\n",
    "zh": "[verse]\n我们一起走过春天的路\n[chorus]\n唱吧唱吧 快乐的歌\n",
}
TAGS = {"en": "pop,piano,happy", "zh": "mandopop,guitar,female vocal"}


def sizes(layers, heads, kv_heads, dim, ffn, max_seq_len):
    return dict(num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, embed_dim=dim, intermediate_dim=ffn,
                max_seq_len=max_seq_len, rope_base=500_000.0, scale_factor=32.0, norm_eps=1e-5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heartlib-src", required=True)
    parser.add_argument("--seconds", type=float, default=8.0, help="max_audio_length per case")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="bench/results/lm_upstream_parity.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    modeling, configuration, pipeline = import_upstream(args.heartlib_src)
    results = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            tokenizer = byte_level_tokenizer()
            tokenizer.save(str(root / "tokenizer.json"))
            GenerationConfig(text_bos_id=256, text_eos_id=257).save(root / "gen_config.json")
            model_dir = build_upstream_checkpoint(
                modeling, configuration, root,
                backbone=sizes(4, 8, 2, 256, 512, 8192), decoder=sizes(2, 4, 2, 128, 256, 2048),
                text_vocab=tokenizer.get_vocab_size(), seed=seed,
            )
            pipe = upstream_pipeline(pipeline, model_dir, tokenizer, root / "gen_config.json")
            ours = load_generator(root)
            for language in LYRICS:
                for cfg in (1.5, 1.0):
                    for topk, temperature, sample_seed in ((1, 1.0, None), (50, 1.0, 1234 + seed)):
                        ms = int(args.seconds * 1000)
                        if sample_seed is not None:
                            torch.manual_seed(sample_seed)
                        t0 = time.perf_counter()
                        reference = upstream_generate(pipe, TAGS[language], LYRICS[language], ms, topk,
                                                      temperature, cfg)
                        upstream_s = time.perf_counter() - t0
                        row = {"seed": seed, "language": language, "cfg_scale": cfg, "topk": topk,
                               "upstream_frames": reference.shape[1], "upstream_s": round(upstream_s, 3),
                               "upstream_invalid_code": bool((reference >= 8192).any())}
                        for compat in (True, False) if sample_seed is None else (True,):
                            song = SongRequest(lyrics=LYRICS[language], tags=TAGS[language], seed=sample_seed)
                            sampling = SamplingParams(temperature=temperature, top_k=topk, cfg_scale=cfg)
                            codes = ours.generate([song], sampling, frames_for_duration(args.seconds),
                                                  compat=compat)[0]
                            same = codes.shape == reference.shape and bool((codes == reference).all())
                            common = min(codes.shape[1], reference.shape[1])
                            prefix = bool((codes[:, :common] == reference[:, :common]).all())
                            key = "compat" if compat else "default"
                            row[f"{key}_frames"] = codes.shape[1]
                            row[f"{key}_identical"] = same
                            row[f"{key}_same_prefix"] = prefix
                        results.append(row)
                        print(json.dumps(row), flush=True)
    greedy = [r for r in results if r["topk"] == 1]
    summary = {
        "cases": len(results),
        "compat_identical": sum(r["compat_identical"] for r in results),
        "greedy_cases": len(greedy),
        "greedy_default_identical": sum(r["default_identical"] for r in greedy),
        "greedy_upstream_valid_cases": sum(not r["upstream_invalid_code"] for r in greedy),
        "greedy_default_identical_when_upstream_valid": sum(
            r["default_identical"] for r in greedy if not r["upstream_invalid_code"]),
        "greedy_default_same_prefix": sum(r["default_same_prefix"] for r in greedy),
    }
    print(json.dumps(summary, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "cases": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
