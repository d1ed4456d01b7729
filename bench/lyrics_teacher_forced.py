"""How much does an LM read its lyrics? Teacher-forced codebook-0 loss (and, under `codebooks_1_7`, the local
decoder's loss of codebooks 1-7) of held-out sung songs with their own lyrics, with another song's lyrics of the
same language, and with none.

For every sung val/test item of a token cache (the first `--context` rows: prompt + song frames from its start), per
model: the mean codebook-0 cross-entropy (nats per code) with each lyrics version, and the paired gap "another
song's lyrics minus its own" (a model that follows what it is told to sing predicts its song better from its own
words than from other words of the same language) with its effect size d_z.

    python bench/lyrics_teacher_forced.py work/lm-align/cache --models work/lm-align/control-step150 \\
        work/lm-align/align-step150 --out bench/results/lyrics_teacher_forced_align.json
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from _machine import machine

from heartmula.lm.pretrained import load_generator
from heartmula.train.lm import LMTrainConfig, SampleBuilder, lm_losses
from heartmula.train.token_cache import load_cache

RESULTS = Path(__file__).resolve().parent / "results" / "lyrics_teacher_forced.json"


def held_out_sung(cache: Path) -> list:
    items = [i for split in ("val", "test") for i in load_cache(cache, split=split)[1]]
    return [i for i in items if i.lyrics.strip() and i.language]


def other_lyrics(items: list, seed: int) -> dict[str, str]:
    """For each item, the lyrics of another held-out song of its language (a fixed draw)."""
    rng = random.Random(seed)
    out = {}
    for item in items:
        others = [o for o in items if o.language == item.language and o.id != item.id]
        if others:
            out[item.id] = rng.choice(others).lyrics
    return out


def gap_summary(own: np.ndarray, other: np.ndarray, none: np.ndarray) -> dict:
    gap = other - own
    return {"own_lyrics": round(float(own.mean()), 4), "other_lyrics": round(float(other.mean()), 4),
            "no_lyrics": round(float(none.mean()), 4), "gap_other_minus_own": round(float(gap.mean()), 4),
            "cohens_dz": round(float(gap.mean() / gap.std(ddof=1)), 2) if len(gap) > 1 else None,
            "share_own_better": round(float((gap > 0).mean()), 2)}


def model_losses(path: str, items: list, others: dict[str, str], context: int) -> dict:
    generator = load_generator(path)
    model = generator.model.eval()
    builder = SampleBuilder(generator.tokenizer, generator.gen_config, model.num_codebooks, context)
    config = LMTrainConfig(context=context)

    def losses(item, lyrics: str) -> tuple[float, float]:
        sample = builder.build(replace(item, lyrics=lyrics), item.tags, 0, None, config)
        with torch.inference_mode():
            parts = lm_losses(model, [sample], 1.0)[1]
        return float(parts["c0"]), float(parts["dec"])

    rows = [(losses(i, i.lyrics), losses(i, others[i.id]), losses(i, "")) for i in items if i.id in others]
    by_lyrics = np.array(rows)  # [songs, own/other/none, c0/dec]
    return {"model": path, "songs": len(rows), **gap_summary(*by_lyrics[:, :, 0].T),
            "codebooks_1_7": gap_summary(*by_lyrics[:, :, 1].T)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cache", type=Path, help="token cache (heartmula data tokenize) of the models' codec")
    parser.add_argument("--models", nargs="+", required=True, help="LM roots or folders")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0, help="draw of the other songs' lyrics")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    items = held_out_sung(args.cache)
    others = other_lyrics(items, args.seed)
    results = [model_losses(path, items, others, args.context) for path in args.models]
    for result in results:
        print(json.dumps(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cache": str(args.cache), "context": args.context, "results": results,
                                    "machine": machine()}, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
