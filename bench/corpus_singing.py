"""Intelligibility and speed of the corpus' singing path on a fixed small sample.

The sample is the first N sung items per language of a seed (default: seed 0, 6 per language), vocal line only
(no accompaniment is rendered), first 30 s. Each is sung with the current code, transcribed by the default
transcriber with the language given, and scored with the lyrics recipe against the lines sung in those 30 s.
Also reports the singer's speed (audio seconds per CPU second). Comparing code versions: run it on each.

    python bench/corpus_singing.py [--per-language 6] [--languages en,zh,ja,ko,es] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from heartmula.audio import resample, save_audio
from heartmula.data import corpus
from heartmula.data.lyrics import LANGUAGES
from heartmula.eval.lyrics import score_pair
from heartmula.transcribe.pipeline import TranscribeConfig, Transcriber

WINDOW = 30.0


def sample_indices(config: corpus.BuildConfig, languages: list[str], per_language: int) -> dict[str, list[int]]:
    picked: dict[str, list[int]] = {language: [] for language in languages}
    index = 0
    while any(len(v) < per_language for v in picked.values()):
        language = corpus.plan_item(config, index).language
        if language in picked and len(picked[language]) < per_language:
            picked[language].append(index)
        index += 1
    return picked


def sung_window(config: corpus.BuildConfig, index: int):
    """The vocal line of item `index` cut to its first WINDOW seconds, with the lines sung in it."""
    plan = corpus.plan_item(config, index)
    rng = np.random.default_rng([config.seed, index, 1])  # the same draws, in the same order, as build_item
    piece = corpus._pick_piece(plan, config.chorale_share, rng)
    choices = corpus.CHORALE_STYLES if piece.parts else tuple(s.name for s in corpus.STYLES)
    style = corpus.STYLE_BY_NAME[choices[int(plan.style_draw * len(choices))]]
    arrangement = corpus.arrange(piece, style, plan.gender, True, rng, plan.target_seconds, config.passes)
    _, units, timing = corpus.sung_lyrics(arrangement, piece, plan.language, rng)
    units = [u for u in units if u.end <= WINDOW]
    seconds = min(WINDOW, arrangement.duration)
    start = time.process_time()
    sung = corpus._singer(plan.gender).sing(units, plan.language, seconds)
    cpu = time.process_time() - start
    reference = "\n".join(line["text"] for line in timing if line["end"] <= WINDOW)
    return plan, sung, reference, seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="corpus seed whose items are sampled")
    parser.add_argument("--per-language", type=int, default=6, help="sung items per language")
    parser.add_argument("--languages", default=",".join(LANGUAGES), help="comma-separated languages to measure")
    parser.add_argument("--out", type=Path, default=Path("bench/results/corpus_singing.json"), help="result JSON")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    languages = args.languages.split(",")
    config = corpus.BuildConfig(Path(tempfile.gettempdir()), seed=args.seed)
    result: dict = {"seed": args.seed, "per_language": args.per_language, "window_seconds": WINDOW, "languages": {}}
    sung_seconds = sing_cpu = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for language, indices in sample_indices(config, languages, args.per_language).items():
            transcriber = Transcriber(TranscribeConfig(language=language))
            totals: dict = {"wer": None, "cer": None}
            examples = []
            for index in indices:
                plan, sung, reference, seconds, cpu = sung_window(config, index)
                sung_seconds, sing_cpu = sung_seconds + seconds, sing_cpu + cpu
                path = Path(tmp) / f"{plan.item_id}.flac"
                save_audio(path, resample(sung.audio[None], sung.sample_rate, 16000), 16000)
                hypothesis = transcriber.transcribe(str(path)).text
                counts = score_pair(reference, hypothesis, language, phonemes=False)
                for kind in totals:
                    totals[kind] = counts[kind] if totals[kind] is None else totals[kind] + counts[kind]
                examples.append({"id": plan.item_id, "gender": plan.gender, "cer": round(counts["cer"].rate, 3),
                                 "reference": reference[:100], "hypothesis": hypothesis[:100]})
            result["languages"][language] = {"wer": round(totals["wer"].rate, 3), "cer": round(totals["cer"].rate, 3),
                                             "items": len(indices), "examples": examples}
            print(language, result["languages"][language]["cer"], flush=True)
    result["sing_audio_seconds_per_cpu_second"] = round(sung_seconds / max(sing_cpu, 1e-9), 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v["cer"] for k, v in result["languages"].items()}))


if __name__ == "__main__":
    main()
