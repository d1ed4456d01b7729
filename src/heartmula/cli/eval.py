"""`heartmula eval <metric>`: evaluation recipes. `eval lyrics` scores transcribed lyrics (WER, CER, PER).

To add a recipe, write `register_<name>(actions)` and add it to EVAL_ACTIONS.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register_lyrics(actions) -> None:
    p = actions.add_parser(
        "lyrics",
        help="WER / CER / PER of transcribed lyrics against reference lyrics",
        description="Score hypothesis lyrics (txt, or a transcript in lrc/srt/json) against reference lyrics with "
        "the project's fixed normalisation (see README, 'Lyrics scoring recipe'). --ref and --hyp take files, or "
        "folders matched by file stem. Errors are summed over all pairs before dividing (corpus-level rates).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--ref", type=Path, required=True, help="reference lyrics file or folder (.txt)")
    p.add_argument("--hyp", type=Path, required=True, nargs="+", help="hypothesis files or one folder")
    p.add_argument("--language", required=True, help="en, zh, ja, ko, es (decides the normalisation and units)")
    p.add_argument("--no-per", action="store_true", help="skip the phoneme error rate (no phonemizer needed)")
    p.add_argument("--json", type=Path, help="also write the scores (per pair and total) to this JSON file")
    p.set_defaults(handler=run_lyrics)


def run_lyrics(args: argparse.Namespace) -> int:
    from heartmula.eval.lyrics import pair_files, score_corpus
    from heartmula.files import atomic_output

    pairs = pair_files(args.ref, args.hyp)
    report = score_corpus(pairs, args.language, phonemes=not args.no_per)
    for item in report["items"]:
        rates = "  ".join(f"{k.upper()} {item[k]:.3f}" for k in ("wer", "cer", "per") if k in item)
        print(f"{item['hyp']}: {rates}")
    total = report["total"]
    print("total: " + "  ".join(f"{k.upper()} {total[k]:.4f}" for k in ("wer", "cer", "per") if k in total)
          + f"  ({len(report['items'])} pair(s), language {args.language})")
    if args.json:
        with atomic_output(args.json) as tmp:
            tmp.write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


EVAL_ACTIONS = (register_lyrics,)


def register(verbs) -> None:
    p = verbs.add_parser("eval", help="evaluate outputs (lyrics accuracy, ...)", description="Evaluation recipes.")
    actions = p.add_subparsers(dest="eval_action", metavar="METRIC", title="recipes")
    for register_action in EVAL_ACTIONS:
        register_action(actions)
    p.set_defaults(handler=lambda args: p.print_help() or 2)
