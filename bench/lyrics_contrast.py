"""Do the lyrics decide the singing? Each vocal prompt of the quality report, with its lyrics and with none.

For every model, seed and lyrics guidance scale, each vocal prompt (`heartmula.eval.report.PROMPTS`, en/zh/ja/ko/es)
is generated with its lyrics and again with empty lyrics (same tags and seed), decoded with the default codec, and
the transcriber's VAD counts the seconds in which it hears a voice (`heartmula.transcribe.pipeline.voiced_seconds`).
Songs are held to the full duration (end-of-song is not sampled before it), so that voiced seconds compare equal
lengths. Reported per model and scale: mean voiced seconds with and without the lyrics, the paired effect size d_z
and the share of pairs with more voice with the lyrics; and the LM's milliseconds per frame (the lyrics guidance
adds a row without lyrics per song).

Scale `none` is upstream's single guidance of tags and lyrics together (CFG 1.5 both); a number guides the lyrics
against the same tags without them (`heartmula generate --lyrics-scale`); `model` is the model's own gen_config
`lyrics_scale`. Empty lyrics are generated once per seed: without lyrics there is nothing to guide.

Whether they decide how long it sings: each prompt again with only its first sung line (a section header and one
line, as the first-lines variants of `heartmula data variants` teach), against all its lines, both at scale `none`:
voiced seconds in the song's second half, where a model that follows the lyrics has stopped singing after one line.

With `--cache` (a token cache of a corpus made by `heartmula data variants`), each model is also teacher-forced on
the cache's val songs that have an accompaniment-only variant: codebook-0 loss (nats per code) of the sung song
with its lyrics and without, and of its accompaniment without the lyrics and with them. A model that reads the
lyrics has the lower loss with them on the sung song and without them on the accompaniment.

    python bench/lyrics_contrast.py --models default --seeds 0 1 --scales none 4 \
        --cache work/lm-lyrics/cache           # writes bench/results/lyrics_contrast.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from _machine import machine
from tqdm import tqdm

from heartmula.codec.pretrained import load_codec
from heartmula.data.variants import ACCOMPANIMENT_SUFFIX
from heartmula.eval.report import paired_summary, select_prompts
from heartmula.lm.generation import SamplingParams, SongRequest, frames_for_duration
from heartmula.manifest import parse_lyrics_sections
from heartmula.song_models import load_lm, resolve_codec, resolve_lm
from heartmula.transcribe.pipeline import voiced_seconds

ROOT = Path(__file__).resolve().parents[1]


def voiced(generator, codec, song: SongRequest, sampling: SamplingParams, frames: int) -> tuple[float, float, float]:
    """(voiced seconds of the decoded song, of its second half, LM milliseconds per frame)."""
    torch.manual_seed(song.seed)
    began = time.perf_counter()
    codes = generator.generate([song], sampling, frames, min_new_frames=frames)[0]
    ms_per_frame = 1000 * (time.perf_counter() - began) / codes.shape[1]
    audio, rate = codec.decode(codes.numpy().astype(np.int64), seed=song.seed)
    return voiced_seconds(audio, rate), voiced_seconds(audio[..., audio.shape[-1] // 2:], rate), ms_per_frame


def voiced_songs(generator, codec, songs: list, frames: int, model: str, lyrics_of, sampling: SamplingParams,
                 desc: str) -> list[tuple[float, float, float]]:
    """`voiced` of every (prompt, seed) in `songs`, each with the lyrics `lyrics_of(prompt)`."""
    return [voiced(generator, codec, SongRequest(lyrics_of(p), p.tags, seed=seed), sampling, frames)
            for p, seed in tqdm(songs, desc=f"{model}: {desc}", unit="song")]


def first_line(lyrics: str) -> str:
    """The lyrics' first sung line, under its section header (if any)."""
    section, lines = next((name, lines) for name, lines in parse_lyrics_sections(lyrics) if lines)
    return f"[{section}]\n{lines[0]}" if section else lines[0]


def paired(a: list[float], b: list[float], a_name: str, b_name: str, share_name: str) -> dict:
    """Means of paired measures a and b, the effect size d_z of a - b and the share of pairs where a is larger."""
    summary = paired_summary(a, b)
    return {"pairs": summary["songs"], a_name: round(summary["own_mean"], 2),
            b_name: round(summary["shuffled_mean"], 2), "cohens_dz": round(summary["cohens_dz"], 2),
            share_name: round(summary["own_above_shuffled"], 2)}


def forced_codebook0_loss(path: Path, cache: Path, context: int = 512) -> dict:
    """Mean teacher-forced codebook-0 loss of the val songs with an `-inst` variant, with and without lyrics."""
    from heartmula.lm.pretrained import load_generator
    from heartmula.train.lm import LMTrainConfig, SampleBuilder, lm_losses
    from heartmula.train.token_cache import load_cache

    generator = load_generator(path)
    model = generator.model.eval()
    builder = SampleBuilder(generator.tokenizer, generator.gen_config, model.num_codebooks, context)
    config = LMTrainConfig(context=context)
    items = {item.id: item for item in load_cache(cache, split="val")[1]}

    def loss(item, lyrics: str) -> float:
        sample = builder.build(replace(item, lyrics=lyrics), item.tags, 0, None, config)  # the first frames
        with torch.inference_mode():
            return float(lm_losses(model, [sample], 1.0)[1]["c0"])

    rows = []
    for variant in (i for i in items if i.endswith(ACCOMPANIMENT_SUFFIX)):
        sung, accompaniment = items[variant.removesuffix(ACCOMPANIMENT_SUFFIX)], items[variant]
        if builder.prompt_length(sung) > context - 100:  # keep 100 frames of song in the crop
            continue
        lyrics = sung.lyrics
        rows.append([loss(sung, lyrics), loss(sung, ""), loss(accompaniment, ""), loss(accompaniment, lyrics)])
    means = np.mean(rows, axis=0).round(3).tolist()
    return dict(zip(["songs", "sung_with_lyrics", "sung_without_lyrics", "accompaniment_without_lyrics",
                     "accompaniment_with_lyrics"], [len(rows), *means]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["default"], help="`default` or LM folders / training runs")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--scales", nargs="+", default=["none", "4"],
                        help="lyrics guidance scales: numbers, none (upstream's single guidance), model (its own)")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, help="token cache of a `data variants` corpus: also teacher-force")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/lyrics_contrast.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prompts = select_prompts("en,zh,ja,ko,es")
    frames = frames_for_duration(args.duration)
    codec = load_codec(resolve_codec(None, resolve_lm(None, "3B")))  # the default codec: every model here speaks it
    songs = [(p, seed) for p in prompts for seed in args.seeds]
    results, forced, lengths = [], [], []
    for model in args.models:
        path = resolve_lm(None if model == "default" else model, "3B")
        generator = load_lm(path, "3B")
        own_scale, generator.gen_config.lyrics_scale = generator.gen_config.lyrics_scale, None  # `none`: upstream's
        if args.cache:
            forced.append({"model": model, **forced_codebook0_loss(path, args.cache)})
            print(json.dumps(forced[-1]), flush=True)
        measure = partial(voiced_songs, generator, codec, songs, frames, model)
        without = measure(lambda p: "", SamplingParams(), "no lyrics")
        all_lines = None
        for scale in args.scales:
            value = {"none": None, "model": own_scale}.get(scale, scale)
            sampling = SamplingParams(lyrics_scale=None if value is None else float(value))
            measured = measure(lambda p: p.lyrics, sampling, f"lyrics scale {scale}")
            all_lines = measured if value is None else all_lines
            results.append({"model": model, "lyrics_scale": scale if value is None else float(value),
                            **paired([v[0] for v in measured], [v[0] for v in without], "voiced_with_lyrics",
                                     "voiced_without_lyrics", "share_more_with_lyrics"),
                            "lm_ms_per_frame": round(float(np.median([v[2] for v in measured])), 1)})
            print(json.dumps(results[-1]), flush=True)
        if all_lines is None:
            all_lines = measure(lambda p: p.lyrics, SamplingParams(), "lyrics scale none")
        one_line = measure(lambda p: first_line(p.lyrics), SamplingParams(), "first line only")
        lengths.append({"model": model, **paired([v[1] for v in all_lines], [v[1] for v in one_line],
                                                 "second_half_voiced_all_lines", "second_half_voiced_first_line",
                                                 "share_more_with_all_lines")})
        print(json.dumps(lengths[-1]), flush=True)
    report = {"machine": {**machine(), "threads": args.threads}, "duration": args.duration, "seeds": args.seeds,
              "prompts": [p.id for p in prompts], "cfg_scale": SamplingParams().cfg_scale, "results": results,
              "first_line_only": lengths, "teacher_forced_codebook0": forced}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
