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


def register_clap(actions) -> None:
    p = actions.add_parser(
        "clap",
        help="HeartCLAP retrieval, tagging and cross-lingual metrics on a corpus' held-out songs",
        description="Embed the held-out songs (split val/test) of corpus manifests with a HeartCLAP model and report "
        "text->audio and audio->text R@1/5/10 and mAP@10 (full tag lists and 3-tag prompts, each language, beside "
        "random baselines), zero-shot tag ROC-AUC / PR-AUC, cross-lingual top-10 agreement (en/zh/ja/ko/es) and "
        "tag-similarity of own vs. other songs' tags.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("manifest", type=Path, nargs="+", help="manifest.jsonl files or corpus folders")
    p.add_argument("--model", type=Path, help="HeartCLAP folder (default: the shipped checkpoint)")
    p.add_argument("--splits", default="val,test", help="comma-separated splits that count as held out")
    p.add_argument("--gallery", choices=("all", "held-out"), default="all", help="songs searched for the "
                   "cross-lingual metric: every song of the manifests, or the held-out ones only")
    p.add_argument("--cache", type=Path, help="feature cache folder (reused by later runs; default: none)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--json", type=Path, help="also write the full report to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_clap)


def run_clap(args: argparse.Namespace) -> int:
    import torch

    from heartmula.clap import load_clap
    from heartmula.data.manifest import read_manifest
    from heartmula.eval.clap_metrics import evaluate_clap
    from heartmula.files import atomic_output

    torch.set_num_threads(args.threads)
    model = load_clap(args.model)
    rows = [row for m in args.manifest for row in read_manifest(m)]
    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    report = evaluate_clap(model, rows, splits, args.cache, args.gallery, progress=not args.quiet)

    def line(name, metrics):
        return f"{name:28s} " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items())

    full = report["full_tags_en"]
    print(f"held-out songs: {report['held_out_songs']}, gallery: {report['gallery_songs']}")
    print(line("text->audio (full tags, en)", full["text_to_audio"]))
    print(line("audio->text (full tags, en)", full["audio_to_text"]))
    print(line("random ranking", full["random"]))
    for lang, metrics in report["full_tags_by_language"].items():
        print(line(f"text->audio full tags, {lang}", metrics))
    for lang, metrics in report["three_tags_by_language"].items():
        print(line(f"text->audio 3 tags, {lang}", metrics))
    print(line("random ranking, 3 tags", report["three_tags_random"]))
    tags = report["tags"]
    print(f"tags: ROC-AUC {tags['roc_auc']:.3f}  PR-AUC {tags['pr_auc']:.3f} (random {tags['pr_auc_random']:.3f}) "
          f"over {tags['tags']} tags")
    cross = report["cross_lingual"]
    print(f"cross-lingual top-10 overlap: {cross['mean_top_10_overlap']:.3f} (full tags "
          f"{cross['full_tags']['mean_top_k_overlap']:.3f}, 3 tags {cross['three_tags']['mean_top_k_overlap']:.3f})")
    sim = report["tag_similarity"]
    print(f"tag similarity: own tags {sim['own_tags_mean']:.3f}, another song's tags {sim['other_song_tags_mean']:.3f}"
          f", own higher for {100 * sim['own_above_other']:.0f}% of songs")
    if args.json:
        with atomic_output(args.json) as tmp:
            tmp.write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


EVAL_ACTIONS = (register_lyrics, register_clap)


def register(verbs) -> None:
    p = verbs.add_parser("eval", help="evaluate outputs (lyrics accuracy, ...)", description="Evaluation recipes.")
    actions = p.add_subparsers(dest="eval_action", metavar="METRIC", title="recipes")
    for register_action in EVAL_ACTIONS:
        register_action(actions)
    p.set_defaults(handler=lambda args: p.print_help() or 2)
