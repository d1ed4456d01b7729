"""Does the sung language survive the codec? Whisper's language identification of corpus songs before and after
an encode -> decode round trip, on the mix and on the vocal stem.

The quality report's "sung language" measure on generated songs can be no better than what the codec keeps, so
this is the codec's share of it, and where it is lost: for the first `--songs` held-out (val/test) sung items of
the manifest by id, first `--seconds`, the likeliest of the five prompt languages (`heartmula.eval.report.
heard_language`, no hint) on the stem and on the mix, as they are and after the codec.

    python bench/codec_language.py work/corpus10h       # writes bench/results/codec_language.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _machine import machine

from heartmula.audio import load_audio
from heartmula.codec import load_codec
from heartmula.eval.report import heard_language
from heartmula.manifest import read_manifest
from heartmula.song_models import resolve_codec, resolve_lm
from heartmula.transcribe.pipeline import TranscribeConfig, Transcriber

RESULTS = Path(__file__).resolve().parent / "results" / "codec_language.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", help="corpus folder (manifest.jsonl)")
    parser.add_argument("--codec", default=None, help="codec root or folder (default: the embedded default codec)")
    parser.add_argument("--songs", type=int, default=30, help="held-out sung items to measure (default 30)")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds from the start of each song")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = sorted((r for r in read_manifest(args.corpus)
                   if r.get("split") in ("val", "test") and r.get("language") and r.get("vocals")),
                  key=lambda r: r["id"])[: args.songs]
    if not rows:
        raise SystemExit(f"{args.corpus} has no held-out sung items")
    codec = load_codec(args.codec or resolve_codec(None, resolve_lm(None, "3B")))
    transcriber = Transcriber(TranscribeConfig())
    items = []
    for row in rows:
        item = {"id": row["id"], "language": row["language"]}
        for kind in ("vocals", "audio"):
            audio, rate = load_audio(row[kind])
            audio = audio[:, : int(args.seconds * rate)]
            coded, coded_rate = codec.decode(codec.encode(audio, rate), seed=0)
            name = "stem" if kind == "vocals" else "mix"
            item[name] = heard_language(transcriber.language_probabilities(audio, rate))
            item[f"{name}_codec"] = heard_language(transcriber.language_probabilities(coded, coded_rate))
        items.append(item)
        print(item, flush=True)
    correct = {key: sum(item[key] == item["language"] for item in items)
               for key in ("stem", "stem_codec", "mix", "mix_codec")}
    result = {"machine": machine(), "corpus": str(args.corpus), "codec": args.codec or "default",
              "seconds": args.seconds, "songs": len(items), "correct": correct, "chance": 0.2, "items": items}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({"songs": len(items), "correct": correct}))


if __name__ == "__main__":
    main()
