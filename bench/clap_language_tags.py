"""HeartCLAP vocal and language tags on a corpus' held-out songs, with and without the voice gate.

For each model folder: on the sung held-out songs, the share whose own language gets >= 0.5, whose own language is
the most likely one, and that get a vocal tag >= 0.5; on the instrumental held-out songs, the share with a language
tag >= 0.5. Writes bench/results/clap_language_tags.json.

    python bench/clap_language_tags.py work/corpus10h MODEL [MODEL...] --cache work/clap-real/features
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from heartmula.clap import HeartCLAP
from heartmula.clap.data import embed_items, load_items
from heartmula.clap.prompts import known_tags
from heartmula.clap.tagging import VOICE_TAGS, tag_probabilities
from heartmula.eval.clap_real import language_tags
from heartmula.manifest import read_manifest

RESULTS = Path(__file__).resolve().parent / "results" / "clap_language_tags.json"


def language_figures(model: HeartCLAP, items, gate: bool) -> dict:
    tags, languages = known_tags(), language_tags()
    probs = tag_probabilities(model, embed_items(model, items), tags, gate_languages=gate)
    column = {t: tags.index(t) for t in tags}
    sung = [i for i, it in enumerate(items) if it.tags & set(languages)]
    own = [next(iter(items[i].tags & set(languages))) for i in sung]
    instrumental = [i for i, it in enumerate(items) if "instrumental" in it.tags]
    by_language = probs[:, [column[t] for t in languages]]
    return {
        "sung_songs": len(sung),
        "own_language_at_0.5": float(np.mean([probs[i, column[t]] >= 0.5 for i, t in zip(sung, own)])),
        "own_language_most_likely": float(np.mean([languages[int(by_language[i].argmax())] == t
                                                   for i, t in zip(sung, own)])),
        "vocal_at_0.5": float(np.mean([probs[i, [column[t] for t in VOICE_TAGS]].max() >= 0.5 for i in sung])),
        "instrumental_songs": len(instrumental),
        "instrumental_language_at_0.5": float(np.mean([by_language[i].max() >= 0.5 for i in instrumental])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", help="corpus folder or manifest.jsonl")
    parser.add_argument("models", nargs="+", help="HeartCLAP folders")
    parser.add_argument("--cache", required=True, type=Path, help="feature cache folder")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = [r for r in read_manifest(args.manifest) if r["split"] in ("val", "test")]
    report = {"command": "python bench/clap_language_tags.py " + " ".join([args.manifest, *args.models]),
              "models": {}}
    for folder in args.models:
        model = HeartCLAP.from_pretrained(folder)
        items, _ = load_items(rows, model, args.cache, progress=False)
        report["models"][folder] = {"gated": language_figures(model, items, True),
                                    "ungated": language_figures(model, items, False)}
        print(folder, json.dumps(report["models"][folder]))
    RESULTS.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
