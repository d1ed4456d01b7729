"""LoRA on a style the embedded default LM never heard: real orchestral game music (Debian's wesnoth-1.16-music,
GPL-2+), which the LM (trained on rendered MIDI scores only) has no examples of.

Stages (each skipped when its output exists, so the script resumes):
 1. the first `--clip-seconds` of each track are written as a corpus folder with a `.tags` sidecar, then
    `heartmula data import` and `heartmula data tokenize` (default codec); tracks are split by name into train
    and held-out (every `--holdout`-th track);
 2. `heartmula train lora --from default` on the train tracks (its time is measured);
 3. the base LM and base + adapter generate `--songs` songs each with the style's tags and the same seeds;
    HeartCLAP embeds them and the held-out tracks.
Reported: the HeartCLAP cosine of each song to the held-out tracks' mean embedding (the style), and the win rate
of the tuned songs over the base songs on it (P(tuned > base) over all pairs); the same for the cosine to the tag
prompt; adapter size and training time.

    python bench/lora_style.py --work work/lora-style     # writes bench/results/lora_style.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from _machine import machine

from heartmula.audio import load_audio, save_audio
from heartmula.eval.report import pairwise_win_rate

MUSIC = Path("/usr/share/games/wesnoth/1.16/data/core/music")
TAGS = "orchestral,strings,brass,drums,cinematic,epic,instrumental"


def build_corpus(work: Path, clip_seconds: float, holdout: int) -> tuple[Path, list[Path]]:
    songs, held = work / "songs", work / "held_out"
    tracks = sorted(MUSIC.glob("*.ogg"))
    if not songs.is_dir():
        for folder in (songs, held):
            folder.mkdir(parents=True, exist_ok=True)
        for i, track in enumerate(tracks):
            audio, rate = load_audio(track)
            clip = audio[:, : int(clip_seconds * rate)]
            folder = held if i % holdout == 0 else songs
            save_audio(folder / f"{track.stem}.flac", clip, rate)
            (folder / f"{track.stem}.tags").write_text(TAGS)
    return songs, sorted(held.glob("*.flac"))


def prepare_cache(work: Path, songs: Path) -> Path:
    from heartmula.codec.pretrained import locate_codec
    from heartmula.data.importer import ImportConfig, import_folder
    from heartmula.train.token_cache import tokenize_manifest

    corpus, cache = work / "corpus", work / "cache"
    if not (corpus / "manifest.jsonl").is_file():
        import_folder(ImportConfig(songs, corpus, sample_rate=48000, license="GPL-2+ (wesnoth-1.16-music)",
                                   val_fraction=0.0, test_fraction=0.0, progress=False))
    if not (cache / "index.json").is_file():
        tokenize_manifest(corpus / "manifest.jsonl", locate_codec(None), cache, progress=False, clap=None)
    return cache


def style_scores(pipe, seeds: list[int], seconds: float, centroid: np.ndarray, clap) -> dict:
    from heartmula.clap import audio_embedding, tags_embedding

    text = tags_embedding(TAGS, clap)
    requests = pipe.requests([""] * len(seeds), TAGS, seeds)
    started = time.perf_counter()
    codes = pipe.generate_codes(requests, None, seconds, seconds)
    lm_seconds = time.perf_counter() - started
    style, tags = [], []
    for song_codes, seed in zip(codes, seeds):
        audio, rate = pipe.decode(song_codes, seed)
        vector = audio_embedding(audio, rate, clap)
        style.append(float(vector @ centroid))
        tags.append(float(vector @ text))
    return {"style_cosine": style, "tag_cosine": tags, "lm_rtf": lm_seconds / (len(seeds) * seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("work/lora-style"))
    parser.add_argument("--clip-seconds", type=float, default=40.0)
    parser.add_argument("--holdout", type=int, default=5)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--songs", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "lora_style.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from heartmula.clap import audio_embedding, load_clap
    from heartmula.pipeline import HeartMuLaPipeline
    from heartmula.song_models import DEFAULT_LM_DIR
    from heartmula.train.lora import LoraTrainConfig, train_lora

    songs, held = build_corpus(args.work, args.clip_seconds, args.holdout)
    cache = prepare_cache(args.work, songs)
    adapter = args.work / "adapter"
    config = LoraTrainConfig(rank=args.rank, alpha=2.0 * args.rank, steps=args.steps, batch_size=4, context=512,
                             learning_rate=1e-3, save_every=5, eval_every=1000, threads=args.threads)
    started = time.perf_counter()
    report = train_lora(cache, DEFAULT_LM_DIR, adapter, config, progress=False)
    train_seconds = time.perf_counter() - started
    clap = load_clap()
    centroid = np.mean([audio_embedding(*load_audio(path), clap) for path in held], axis=0)
    centroid /= np.linalg.norm(centroid)
    seeds = list(range(args.songs))
    base = style_scores(HeartMuLaPipeline.from_pretrained(device="cpu"), seeds, args.seconds, centroid, clap)
    tuned = style_scores(HeartMuLaPipeline.from_pretrained(device="cpu", lora=adapter), seeds, args.seconds,
                         centroid, clap)
    log = [json.loads(line) for line in (adapter / "train_log.jsonl").read_text().splitlines()]
    result = {
        "command": "python bench/lora_style.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                          vars(args).items() if k not in ("out",)),
        "machine": machine(), "threads": args.threads, "style": "wesnoth-1.16-music (real orchestral recordings)",
        "tags": TAGS, "train_tracks": len(list(songs.glob("*.flac"))), "held_out_tracks": len(held),
        "clip_seconds": args.clip_seconds, "rank": args.rank, "steps": report.steps,
        "trainable_parameters": report.trainable,
        "adapter_bytes": os.path.getsize(adapter / "adapter_model.safetensors"),
        "train_seconds_this_run": round(train_seconds, 1), "resumed_from": report.resumed_from,
        "train_loss_first_last": [log[0]["loss"], log[-1]["loss"]],
        "style_win_rate_tuned_over_base": pairwise_win_rate(tuned["style_cosine"], base["style_cosine"]),
        "tag_win_rate_tuned_over_base": pairwise_win_rate(tuned["tag_cosine"], base["tag_cosine"]),
        "base": base, "tuned": tuned,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("base", "tuned")}, indent=1))


if __name__ == "__main__":
    main()
