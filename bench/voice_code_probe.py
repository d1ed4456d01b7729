"""How much of the sung harmonic envelope each stage of a phonetic codec still carries.

The voice branch of the codec renders the words from a 32-band harmonic envelope per 10 ms; through the codec's round
trip that envelope is off by about twice what the judge tolerates (bench/voice_oracle.py). This asks where it is
lost: a probe (an MLP over a window of +-4 code frames, not causal) is fitted from each stage's representation of
the vocal stem to the stem's WORLD harmonic envelope, on train-split songs, and scored on val-split songs:

- the Whisper features the encoder reads (at the code rate),
- the encoder's latent (before the codes),
- the quantised codes (the sum of the 8 codebook vectors: all the decoder ever sees),
- codebook 0 alone (the backbone's codebook),
- the latent the decoder predicts from the codes (what the voice branch reads).

The codec's own decoder is scored on the same frames. `--input mix` encodes the mix instead of the stem (what a song
model's codes stand for); the target stays the stem's envelope. Error: mean absolute error of the log envelope on voiced
frames, in nats. If the probe on the codes does much better than the decoder, decoding is what loses the words; if
it does about as well, the codes do.

    python bench/voice_code_probe.py work/codec-phonetic/run/features-phonetic work/corpus10h \
        --codec work/codec-phonetic/snapshots/step-8000 --out bench/results/voice_code_probe_step-8000.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from heartmula.codec.model import HeartCodec
from heartmula.codec.phonetic import code_rate
from heartmula.manifest import read_manifest
from heartmula.train.codec_voice import PHONETIC_OF, decoded_latent

FRAMES_PER_CODE = 8  # 10 ms envelope frames per 80 ms code frame
CONTEXT = 4  # code frames on each side the probe sees (--causal: before, and 1 after as the decoder's look-ahead)


@torch.no_grad()
def stage_features(codec: HeartCodec, item: dict, source: str) -> dict[str, torch.Tensor]:
    """Per code frame [T, D] representations of the item's vocal stem or mix (`source`) at each stage, and the
    decoder's envelope."""
    audio = torch.from_numpy(item[source].astype(np.float32) / 32767)[None, None]
    phonetic = torch.from_numpy(item[PHONETIC_OF[source]].astype(np.float32)).T[None]
    latent = codec.audio_to_latent(audio, phonetic)  # [1, L, D] at 25 Hz
    vq = codec.flow_matching.vq_embed
    codes, quantized, _ = vq.quantize(codec.code_encoder(latent))
    first = vq.layers[0].codebook[codes[0, :, 0]]
    predicted = decoded_latent(codec, audio, phonetic)
    decoded = codec.scalar_model.decoder.voice.parameters_from_latent(predicted.transpose(1, 2))["harmonic"]
    return {"whisper": code_rate(phonetic)[0], "latent": code_rate(latent.transpose(1, 2))[0],
            "codes": quantized[0], "codebook 0": first, "decoded latent": code_rate(predicted.transpose(1, 2))[0],
            "decoder": decoded[0]}


def windows(features: torch.Tensor, causal: bool) -> torch.Tensor:
    """[T, D] -> [T, (2 CONTEXT + 1) D]: each code frame with its neighbours (edges repeated); `causal`: the window
    ends one frame after its own."""
    after = 1 if causal else CONTEXT
    before = 2 * CONTEXT - after
    padded = torch.cat([features[:1].expand(before, -1), features, features[-1:].expand(after, -1)])
    return torch.cat([padded[i: i + len(features)] for i in range(2 * CONTEXT + 1)], dim=1)


def envelope_targets(item: dict, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The WORLD harmonic envelope [T, 8 * 32] and voicing [T, 8] per code frame."""
    harmonic = torch.from_numpy(item["harmonic"][: frames * FRAMES_PER_CODE])
    voiced = torch.from_numpy(item["f0"][: frames * FRAMES_PER_CODE] > 0)
    frames = len(harmonic) // FRAMES_PER_CODE
    return (harmonic[: frames * FRAMES_PER_CODE].reshape(frames, -1),
            voiced[: frames * FRAMES_PER_CODE].reshape(frames, -1))


def fit_probe(x: torch.Tensor, y: torch.Tensor, voiced: torch.Tensor, steps: int, seed: int) -> nn.Module:
    """An MLP from windows to the envelope, L1 on voiced frames."""
    torch.manual_seed(seed)
    mean, std = x.mean(0), x.std(0) + 1e-4
    probe = nn.Sequential(nn.Linear(x.shape[1], 512), nn.GELU(), nn.Linear(512, 512), nn.GELU(),
                          nn.Linear(512, y.shape[1]))
    optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-3, weight_decay=0.01)
    bands = y.shape[1] // FRAMES_PER_CODE
    mask = voiced.repeat_interleave(bands, dim=1).float()
    for step in range(steps):
        rows = torch.randint(len(x), (512,))
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * 0.5 * (1 + np.cos(np.pi * step / steps))
        error = (probe((x[rows] - mean) / std) - y[rows]).abs() * mask[rows]
        loss = error.sum() / mask[rows].sum().clamp_min(1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return lambda v: probe((v - mean) / std)


def voiced_error(predicted: torch.Tensor, target: torch.Tensor, voiced: torch.Tensor) -> float:
    bands = target.shape[1] // FRAMES_PER_CODE
    mask = voiced.repeat_interleave(bands, dim=1).float()
    return float(((predicted - target).abs() * mask).sum() / mask.sum())


def collect(codec: HeartCodec, folder: Path, ids: list[str], causal: bool, source: str) -> dict[str, list]:
    rows: dict[str, list] = {"target": [], "voiced": []}
    for item_id in ids:
        with np.load(folder / f"{item_id}.npz") as data:
            item = {k: data[k] for k in data.files}
        stages = stage_features(codec, item, source)
        frames = min(len(v) for k, v in stages.items() if k != "decoder")
        target, voiced = envelope_targets(item, frames)
        frames = len(target)
        rows["target"].append(target)
        rows["voiced"].append(voiced)
        for name, value in stages.items():
            if name == "decoder":
                value = value[: frames * FRAMES_PER_CODE].reshape(frames, -1)
            else:
                value = windows(value[:frames], causal)
            rows.setdefault(name, []).append(value)
    return {k: torch.cat(v) for k, v in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("features", type=Path, help="features-phonetic folder of a `train voice --phonetic` run")
    parser.add_argument("corpus", type=Path, help="the corpus (its manifest gives the splits)")
    parser.add_argument("--codec", required=True)
    parser.add_argument("--train-items", type=int, default=150)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--input", choices=("vocals", "mix"), default="vocals",
                        help="what is encoded (the target is always the vocal stem's envelope)")
    parser.add_argument("--causal", action="store_true", help="the probe sees the past and one code frame ahead only")
    parser.add_argument("--stages", default="whisper,latent,codes,codebook 0", help="comma-separated stages to probe")
    parser.add_argument("--out", type=Path, default=Path("bench/results/voice_code_probe.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = read_manifest(args.corpus)
    sung = [r for r in rows if r.get("vocals") and (args.features / f"{r['id']}.npz").is_file()]
    train_ids = [r["id"] for r in sung if r["split"] == "train"][: args.train_items]
    val_ids = [r["id"] for r in sung if r["split"] == "val"]
    codec = HeartCodec.from_pretrained(args.codec).eval()
    began = time.perf_counter()
    train = collect(codec, args.features, train_ids, args.causal, args.input)
    val = collect(codec, args.features, val_ids, args.causal, args.input)
    errors = {"codec decoder (no probe)": voiced_error(val["decoder"], val["target"], val["voiced"])}
    for stage in args.stages.split(","):
        probe = fit_probe(train[stage].float(), train["target"], train["voiced"], args.steps, seed=0)
        with torch.no_grad():
            errors[f"probe on {stage}"] = voiced_error(probe(val[stage].float()), val["target"], val["voiced"])
        print(stage, round(errors[f"probe on {stage}"], 3), flush=True)
    result = {"codec": str(args.codec), "unit": "mean absolute log harmonic envelope error on voiced frames (nats)",
              "train_items": len(train_ids), "val_items": len(val_ids), "context_code_frames": CONTEXT,
              "causal": args.causal, "input": args.input,
              "probe_steps": args.steps, "errors": {k: round(v, 3) for k, v in errors.items()},
              "seconds": round(time.perf_counter() - began, 1), "machine": platform.processor() or platform.machine()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["errors"], indent=2))


if __name__ == "__main__":
    main()
