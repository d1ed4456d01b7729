"""Is the join of a continued song audible? Spectral flux at the join against the song's own flux.

    python bench/extend_join.py                  # the embedded default models; writes bench/results/extend_join.json
    python bench/extend_join.py --seeds 0 1 2 --joins 5 10 --seconds 14 --jobs 3 --plot docs/extend-join.png

For every seed: a song of exactly `--seconds` seconds, then for every join T the song continued from T (its first T
seconds kept, the rest made anew, another seed). Spectral flux: the half-wave rectified increase of the log-magnitude
STFT (2048-point Hann window, 10 ms hop) from one STFT frame to the next, summed over frequency. The join's flux is the
largest within 40 ms of the join; it is compared with the 95th percentile of the continued song's own flux (all of its
STFT frames away from the join). `rank`: the share of the song's other neighbourhoods of the same width whose
largest flux is below the join's (0.5 on average for a moment like any other; 1: the sharpest change of the song).
`no_join` is the control: the same score at the same time of the original song,
where nothing was joined (a maximum over a neighbourhood exceeds a single frame's 95th percentile by chance, often).
Ways of making the continued audio, side by side:
- `one_decode`: prompt codes + new codes decoded in one pass (what heartmula does);
- `spliced`: the original audio up to the join, then the new codes decoded alone (what one decode avoids);
- from audio (the song's WAV encoded with the codec): `audio_one_decode` (the encoded prompt + new codes decoded in
  one pass) and `audio_crossfade` (the original audio up to the join, then `audio_one_decode`'s audio, with a linear
  crossfade of `--fade-ms` before the join).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.signal import stft

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "extend_join.json"
LYRICS = "[verse]\nWalking down the river in the morning light\nEvery step a story\n\n[chorus]\nLa la la, sing it"
TAGS = "pop,piano,drums"
NEIGHBOURHOOD = 0.04  # seconds either side of the join searched for its flux
WINDOW, HOP = 2048, 0.01  # STFT points, hop in seconds
NAMES = ("no_join", "one_decode", "spliced", "audio_one_decode", "audio_crossfade")


def spectral_flux(audio: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """audio [C, N] -> (times of the flux values in seconds, flux per STFT frame step)."""
    hop = int(rate * HOP)
    _, times, spectrum = stft(audio.mean(axis=0), rate, nperseg=WINDOW, noverlap=WINDOW - hop, boundary=None,
                              padded=False)
    magnitude = np.log1p(np.abs(spectrum) * 100.0)
    flux = np.maximum(magnitude[:, 1:] - magnitude[:, :-1], 0.0).sum(axis=0)
    return times[1:], flux


def join_score(audio: np.ndarray, rate: int, join: float) -> dict:
    """The join's flux against the song's 95th percentile, and its rank among the song's other neighbourhoods."""
    times, flux = spectral_flux(audio, rate)
    near = np.abs(times - join) <= NEIGHBOURHOOD
    p95 = float(np.percentile(flux[~near], 95))
    at_join = float(flux[near].max())
    width = int(near.sum())
    window_max = sliding_window_view(flux, width).max(axis=1)  # every neighbourhood of the join's size
    centres = times[width // 2: width // 2 + len(window_max)]
    elsewhere = window_max[np.abs(centres - join) > 2 * NEIGHBOURHOOD]
    return {"join_flux": round(at_join, 3), "song_p95_flux": round(p95, 3), "ratio": round(at_join / p95, 4),
            "rank": round(float((elsewhere < at_join).mean()), 4)}


def crossfade(original: np.ndarray, decoded: np.ndarray, join_sample: int, fade: int) -> np.ndarray:
    """original up to `join_sample`, fading linearly into `decoded` over the `fade` samples before it."""
    out = decoded.copy()
    start = max(0, join_sample - fade)
    ramp = np.linspace(0.0, 1.0, join_sample - start, dtype=np.float32)
    out[:, :start] = original[:, :start]
    out[:, start:join_sample] = original[:, start:join_sample] * (1 - ramp) + decoded[:, start:join_sample] * ramp
    return out


def variants(pipe, song, join: float, seed: int, fade_ms: float, wav: Path) -> dict:
    """The continued song made each way -> its join scores."""
    from heartmula.audio import fit_peak, load_audio

    seconds = song.codes.shape[1] / 12.5
    options = dict(duration=seconds - join, min_duration=seconds - join, seed=seed)
    rate = song.sample_rate
    longer = pipe.extend(song, from_seconds=join, **options)
    join_sample = longer.prompt_frames * pipe.codec.config.samples_per_code
    at = join_sample / rate
    new_alone, _ = pipe.decode(longer.codes[:, longer.prompt_frames:], seed)
    spliced = fit_peak(np.concatenate([song.audio[:, :join_sample], new_alone], axis=1))
    from_audio = pipe.extend(wav, lyrics=song.lyrics, tags=song.tags, from_seconds=join, **options)
    original, _ = load_audio(wav, rate, from_audio.audio.shape[0])
    faded = crossfade(original, from_audio.audio, join_sample, int(rate * fade_ms / 1000))
    prompt_error = float(np.abs(longer.audio[:, : join_sample - rate // 10] - song.audio[:, : join_sample - rate // 10])
                         .max())
    return {
        "join_seconds": at, "prompt_frames": longer.prompt_frames,
        "prompt_codes_unchanged": bool(np.array_equal(longer.codes[:, : longer.prompt_frames],
                                                      song.codes[:, : longer.prompt_frames])),
        "prompt_audio_max_abs_diff_before_join": round(prompt_error, 5),
        "no_join": join_score(song.audio, rate, at),
        "one_decode": join_score(longer.audio, rate, at), "spliced": join_score(spliced, rate, at),
        "audio_one_decode": join_score(from_audio.audio, rate, at),
        "audio_crossfade": join_score(faded, rate, at),
        "_curves": {"one_decode": longer.audio, "spliced": spliced, "rate": rate},
    }


def seed_cases(args, seed: int) -> list[dict]:
    """One song for `seed` and its continuation from every join (run in a worker process of its own)."""
    import torch

    from heartmula import HeartMuLaPipeline

    torch.set_num_threads(args.threads)
    pipe = HeartMuLaPipeline.from_pretrained(args.model, device="cpu")
    song = pipe(LYRICS, tags=TAGS, duration=args.seconds, min_duration=args.seconds, seed=seed)
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        wav = song.save(Path(tmp) / "song.wav")
        for join in args.joins:
            case = {"seed": seed, "continuation_seed": seed + 1000,
                    **variants(pipe, song, join, seed + 1000, args.fade_ms, wav)}
            print(json.dumps({k: v for k, v in case.items() if not k.startswith("_")}), flush=True)
            cases.append(case)
    return cases


def plot(example: dict, cases: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (curve, scores) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 2]})
    rate, at = example["_curves"]["rate"], example["join_seconds"]
    for name, colour in (("spliced", "tab:red"), ("one_decode", "tab:blue")):
        times, flux = spectral_flux(example["_curves"][name], rate)
        curve.plot(times, flux, color=colour, lw=0.7, label=name.replace("_", " "))
    curve.axhline(example["one_decode"]["song_p95_flux"], color="k", ls="--", lw=0.8, label="song's 95th percentile")
    curve.axvline(at, color="grey", lw=0.8)
    curve.set_xlim(at - 3, at + 3)
    curve.set(xlabel="seconds", ylabel="spectral flux", title=f"continued from {at:.2f} s (seed {example['seed']})")
    curve.legend(loc="upper right", fontsize=8)
    names = list(NAMES)
    for i, name in enumerate(names):
        ratios = [case[name]["ratio"] for case in cases]
        scores.scatter(np.full(len(ratios), i) + np.linspace(-0.15, 0.15, len(ratios)), ratios, s=18)
    scores.axhline(1.0, color="k", ls="--", lw=0.8)
    scores.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=8)
    scores.set(ylabel="join flux / song's 95th percentile", title="every seed and join")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def summary(cases: list[dict]) -> dict:
    out = {}
    for name in NAMES:
        ratios = np.array([case[name]["ratio"] for case in cases])
        ranks = np.array([case[name]["rank"] for case in cases])
        out[name] = {"median_ratio": round(float(np.median(ratios)), 4), "max_ratio": round(float(ratios.max()), 4),
                     "joins_within_p95": int((ratios <= 1.0).sum()), "joins": len(ratios),
                     "mean_rank": round(float(ranks.mean()), 4), "max_rank": round(float(ranks.max()), 4)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint root; default: the embedded default models")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--joins", type=float, nargs="+", default=[6.0, 12.0], help="seconds kept")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of every song")
    parser.add_argument("--fade-ms", type=float, default=80.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--plot", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "extend-join.png")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in this many processes at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = parser.parse_args()
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    began = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        cases = [case for found in pool.map(partial(seed_cases, args), args.seeds) for case in found]
    plot(max(cases, key=lambda case: case["spliced"]["ratio"]), cases, args.plot)  # the loudest splice, shown
    report = {
        "command": "python bench/extend_join.py " + " ".join(sys.argv[1:]),
        "model": args.model or "embedded default LM + codec", "machine": machine(),
        "processes": args.jobs, "torch_threads_per_process": args.threads,
        "lyrics": LYRICS, "tags": TAGS, "song_seconds": args.seconds, "fade_ms": args.fade_ms,
        "flux": {"stft_points": WINDOW, "hop_seconds": HOP, "join_neighbourhood_seconds": NEIGHBOURHOOD},
        "summary": summary(cases), "cases": [{k: v for k, v in c.items() if not k.startswith("_")} for c in cases],
        "wall_seconds": round(time.perf_counter() - began, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
