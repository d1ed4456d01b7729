"""The style-change demo of streaming: a song whose style mix moves from tag set A to tag set B mid-song, and
the HeartCLAP tag similarity of its audio to A and to B over time (sliding windows), summarised and plotted.

    script = control_script(FROM_TAGS, TO_TAGS, switch_at=30.0, crossfade=0.0)   # `heartmula stream --controls`
    curves = similarity_curves(audio, rate, {"A": FROM_TAGS, "B": TO_TAGS}, window=5.0, hop=1.0)
    summary = summarize(curves, switch_at=30.0, switch_end=30.0)
    plot_curves(curves, summary, "similarity.png")

`bench/stream_style_demo.py` runs it end to end (the real `heartmula stream` with the control script, then this
analysis). The default tag sets are corpus tags (heartmula.data.arrangement styles) that differ in every category
the corpus labels: a slow piano ballad against fast electronic music with drums.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Callable
from pathlib import Path

import numpy as np

from heartmula.clap import load_clap, tag_similarity
from heartmula.codec.pretrained import OFFICIAL_FOLDER, write_random_codec
from heartmula.errors import HeartMuLaError
from heartmula.extras import require
from heartmula.files import atomic_output
from heartmula.lm.config import GenerationConfig, HeartMuLaConfig
from heartmula.lm.model import HeartMuLa
from heartmula.lm.pretrained import write_random_root

FROM_TAGS = "ballad,piano,strings,calm,slow"
TO_TAGS = "electronic,synthesizer,synth bass,drums,energetic,fast"
# Crossfades move the mix in steps this far apart (a script line each): fine enough to sound continuous.
CROSSFADE_STEP_SECONDS = 0.5

Score = Callable[[np.ndarray, int, str], float]  # (audio window [channels, samples], rate, tags) -> similarity


def _mix(from_tags: str, to_tags: str, weight_to: float) -> str:
    return f"{from_tags}:{1.0 - weight_to:.3f}|{to_tags}:{weight_to:.3f}"


def control_script(from_tags: str, to_tags: str, switch_at: float, crossfade: float = 0.0,
                   step: float = CROSSFADE_STEP_SECONDS) -> str:
    """A `heartmula stream --controls` text script moving the style from `from_tags` (the song's starting --tags)
    to `to_tags`: at once at `switch_at` seconds (crossfade 0), or with B's weight rising linearly from 0 at
    `switch_at` to 1 at `switch_at + crossfade` in steps of about `step` seconds (A and B mixed as two weighted
    prompts); the last line leaves B alone (A's prompt leaves the batch)."""
    for name, tags in (("from", from_tags), ("to", to_tags)):
        if not tags.strip() or any(c in tags for c in ":|"):
            raise HeartMuLaError(f"the {name} tag set must be plain comma-separated tags, got {tags!r}")
    if from_tags.strip() == to_tags.strip():
        raise HeartMuLaError("the two tag sets are the same: give the demo two different styles")
    if not (switch_at > 0 and math.isfinite(switch_at)) or not (crossfade >= 0 and math.isfinite(crossfade)):
        raise HeartMuLaError(f"the switch needs a time > 0 and a crossfade >= 0 s, got {switch_at} and {crossfade}")
    lines = [f"# style demo: {from_tags!r} -> {to_tags!r} at {switch_at:g} s"
             + (f", crossfade over {crossfade:g} s" if crossfade else " (sudden)"),
             "# the song starts with --tags " + shlex.quote(from_tags)]
    steps = max(1, round(crossfade / step)) if crossfade else 0
    for k in range(steps):  # each step holds the ramp's value at its middle
        at = switch_at + k * crossfade / steps
        lines.append(f"{at:.3f}s prompts={shlex.quote(_mix(from_tags, to_tags, (k + 0.5) / steps))}")
    lines.append(f"{switch_at + crossfade:.3f}s prompts={shlex.quote(to_tags)}")
    return "\n".join(lines) + "\n"


def window_spans(duration: float, window: float, hop: float) -> list[tuple[float, float]]:
    """(start, end) seconds of sliding windows over `duration` seconds; one shorter window if the audio is shorter."""
    if not (window > 0 and hop > 0):
        raise HeartMuLaError(f"window and hop must be > 0 seconds, got {window} and {hop}")
    if duration <= 0:
        raise HeartMuLaError("the audio is empty")
    if duration <= window:
        return [(0.0, duration)]
    count = int(math.floor((duration - window) / hop + 1e-9)) + 1
    return [(k * hop, k * hop + window) for k in range(count)]


def clap_score(model=None) -> Score:
    """HeartCLAP tag similarity (`heartmula.clap.tag_similarity`) with one loaded model."""
    model = model or load_clap()
    return lambda audio, rate, tags: tag_similarity(audio, tags, sample_rate=rate, model=model)


def similarity_curves(audio: np.ndarray, rate: int, tag_sets: dict[str, str], window: float = 5.0,
                      hop: float = 1.0, score: Score | None = None, progress: bool = False) -> dict:
    """Similarity of each sliding window of `audio` ([channels, samples] or [samples]) to each named tag set.

    Returns {"start": [...], "end": [...], "time": window centres, "curves": {name: [...]}} (seconds, floats)."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    score = score or clap_score()
    spans = window_spans(audio.shape[1] / rate, window, hop)
    curves: dict[str, list[float]] = {name: [] for name in tag_sets}
    iterator = spans
    if progress:
        from tqdm import tqdm

        iterator = tqdm(spans, desc="CLAP windows", unit="window")
    for start, end in iterator:
        clip = audio[:, round(start * rate) : round(end * rate)]
        for name, tags in tag_sets.items():
            curves[name].append(float(score(clip, rate, tags)))
    return {"start": [s for s, _ in spans], "end": [e for _, e in spans],
            "time": [(s + e) / 2 for s, e in spans], "curves": curves}


def _mean(values) -> float | None:
    return float(np.mean(values)) if len(values) else None


def summarize(result: dict, switch_at: float, switch_end: float | None = None, before: str = "A",
              after: str = "B") -> dict:
    """Mean similarity to each tag set over the windows wholly before the switch and wholly after it ends, and
    whether (after - before) rose: `rise` = mean(B - A) after minus mean(B - A) before, `rose` = rise > 0,
    `rise_over_spread` = rise / the windows' spread of B - A within each side (pooled standard deviation).
    `crossed_at` is the centre of the first window, from the switch on, whose B - A is past the midpoint of the
    two means (where the change shows in the curves); None if it never is."""
    switch_end = switch_at if switch_end is None else switch_end
    a, b = np.asarray(result["curves"][before]), np.asarray(result["curves"][after])
    start, end, time = (np.asarray(result[k]) for k in ("start", "end", "time"))
    diff = b - a
    parts = {}
    for name, mask in (("before", end <= switch_at + 1e-9), ("after", start >= switch_end - 1e-9)):
        parts[name] = {"windows": int(mask.sum()), f"sim_{before}": _mean(a[mask]), f"sim_{after}": _mean(b[mask]),
                       f"{after}_minus_{before}": _mean(diff[mask])}
    d0, d1 = parts["before"][f"{after}_minus_{before}"], parts["after"][f"{after}_minus_{before}"]
    rise = None if d0 is None or d1 is None else d1 - d0
    # The rise in units of B - A's own window-to-window spread (pooled standard deviation within the two sides): a
    # change much larger than 1 shows in the curves; near 0 is noise (e.g. a random model whatever its tags).
    spread = None
    if rise is not None:
        sides = [diff[end <= switch_at + 1e-9], diff[start >= switch_end - 1e-9]]
        spread = float(np.sqrt(np.mean(np.concatenate([side - side.mean() for side in sides]) ** 2)))
    crossed = None
    if rise is not None and rise > 0:
        midpoint = (d0 + d1) / 2
        past = np.flatnonzero((end > switch_at) & (diff > midpoint))
        crossed = float(time[past[0]]) if past.size else None
    return {"switch_at": float(switch_at), "switch_end": float(switch_end), **parts,
            "rise": rise, "rose": None if rise is None else bool(rise > 0), "spread": spread,
            "rise_over_spread": None if not spread else rise / spread, "crossed_at": crossed}


def plot_curves(result: dict, summary: dict, path: str | Path, labels: dict[str, str] | None = None,
                title: str = "HeartCLAP tag similarity over time") -> Path:
    """PNG: the similarity curves (top) and their difference B - A (bottom), the switch marked."""
    require("eval", "matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels or {}
    time = np.asarray(result["time"])
    curves = result["curves"]
    a, b = np.asarray(curves["A"]), np.asarray(curves["B"])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    top.plot(time, a, "o-", ms=3, color="tab:blue", label=f"A: {labels.get('A', 'A')}")
    top.plot(time, b, "o-", ms=3, color="tab:red", label=f"B: {labels.get('B', 'B')}")
    bottom.plot(time, b - a, "o-", ms=3, color="black", label="B - A")
    spans = (("before", time.min(), summary["switch_at"]), ("after", summary["switch_end"], time.max()))
    for name, start, end in spans:
        value = summary[name]["B_minus_A"]
        if value is not None:
            bottom.hlines(value, start, end, colors="tab:green", linestyles=":", label=f"mean {name}: {value:+.3f}")
    for ax in (top, bottom):
        ax.axvline(summary["switch_at"], color="gray", linestyle="--")
        if summary["switch_end"] > summary["switch_at"]:
            ax.axvspan(summary["switch_at"], summary["switch_end"], color="gray", alpha=0.15)
        ax.grid(alpha=0.3)
    bottom.axhline(0, color="gray", linewidth=0.5)
    window = result["end"][0] - result["start"][0]
    top.set_ylabel("tag similarity (cosine)")
    top.set_title(title)
    top.legend(fontsize=8, loc="best")
    bottom.set_ylabel("B - A")
    bottom.set_xlabel(f"song time, s (centre of each {window:g} s window; dashed: the switch)")
    bottom.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def write_json(data: dict, path: str | Path) -> Path:
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def write_random_models(root: str | Path, seed: int = 0) -> Path:
    """A tiny random-weight LM root with a tiny-harmonic codec beside it (HeartCodec-oss/, the official layout), for
    trying the demo before trained models exist. The LM's codes are the codec's (4 codebooks of 64); its
    codebook-0 head is sharpened and its EOS logit pinned at 0, so the song lasts the requested length instead of
    ending after a few seconds on a randomly sampled EOS. Returns the root."""
    import torch

    root = Path(root)
    model_dir = write_random_root(root, "tiny", seed=seed)
    config = HeartMuLaConfig.from_file(model_dir / "config.json")
    codes = 64
    config.audio_num_codebooks, config.audio_vocab_size = 4, codes + 5
    model = HeartMuLa(config).init_weights(seed)
    eos = codes + 1  # EOS right after the codebook (+ one reserved id), as the LM trainer lays them out
    with torch.no_grad():
        head = model.codebook0_head.weight
        head.mul_(25.0)  # logits of std ~4 instead of ~0.16: EOS (logit 0) almost never wins a draw
        head[eos].zero_()
    model.save_pretrained(model_dir)
    gen_config = GenerationConfig.from_file(root / "gen_config.json")
    gen_config.audio_eos_id = eos
    gen_config.save(root / "gen_config.json")
    write_random_codec(root / OFFICIAL_FOLDER, "tiny-harmonic", seed=seed)
    return root
