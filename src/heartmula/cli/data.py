"""`heartmula data`: build a corpus from real scores, import your own songs, make a data card, measure the
transcriber's error on a corpus' sung vocals."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from heartmula.cli import add_command, add_threads_option
from heartmula.data.card import build_speed_markdown, write_data_card
from heartmula.errors import HeartMuLaError
from heartmula.extras import require
from heartmula.files import atomic_output
from heartmula.manifest import manifest_path, read_manifest


def register(verbs) -> None:
    p = verbs.add_parser("data", help="build or import a training corpus (audio + lyrics + tags manifest)",
                         description="Corpus tools. `build` renders real scores (music21 corpus) with General MIDI "
                         "instruments and sung lyrics in en/zh/ja/ko/es; `import` turns a folder of your songs "
                         "into the same manifest format.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", title="actions")

    _register_build(actions)
    _register_import(actions)
    _register_card(actions)
    _register_ceiling(actions)
    _register_variants(actions)
    _register_tokenize(actions)
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])


def _register_build(actions) -> None:
    b = add_command(actions, "build", help="render a corpus (deterministic for a seed, resumable)",
                    description="""Render a training corpus from real scores (Bach chorales and Essen folk songs of the
                    music21 corpus) arranged in several styles with General MIDI soundfonts (FluidSynth), most songs
                    sung in en/zh/ja/ko/es by offline singing voices, with lyrics, tags and train/val/test splits (a
                    work is in one split only). Writes OUT/manifest.jsonl, the mix in OUT/audio/, sung stems in
                    OUT/vocals/ and a data card. The same seed rebuilds the same corpus; running again with the same
                    --out resumes where it stopped.""")
    b.add_argument("--out", type=Path, required=True, help="corpus folder (manifest.jsonl, audio/, vocals/)")
    b.add_argument("--hours", type=float, default=1.0, help="hours of audio to build (at least)")
    b.add_argument("--seed", type=int, default=0, help="the seed: the same seed rebuilds the same corpus")
    b.add_argument("--workers", type=int, default=2, help="parallel worker processes")
    b.add_argument("--sample-rate", type=int, default=48000, help="audio sample rate in Hz")
    b.add_argument("--items", type=int, default=None, help="build exactly this many items instead of --hours "
                   "(a quick preview)")
    b.add_argument("--short", action="store_true", help="one pass through each piece instead of a verse/chorus "
                   "song (a quick preview)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(handler=run_build)


def _register_import(actions) -> None:
    i = add_command(actions, "import", help="import a folder of your songs (+ song.txt lyrics, song.tags tags)",
                    description="""Turn a folder of your own songs into a corpus manifest (the format `data tokenize`
                    and the trainers read). For song.mp3 the optional sidecars are song.txt (lyrics, may carry
                    [verse]/[chorus] headers) and song.tags (comma-separated tags). Unreadable files are reported and
                    skipped.""")
    i.add_argument("folder", type=Path, help="folder searched recursively for audio files")
    i.add_argument("--out", type=Path, help="corpus folder to write (default: ./<folder name>-corpus)")
    i.add_argument("--sample-rate", type=int, default=48000, help="audio is resampled to this rate")
    i.add_argument("--license", default=None, help="license of the songs, recorded in every row")
    i.add_argument("--quiet", action="store_true", help="no progress bar")
    i.set_defaults(handler=run_import)


def _register_card(actions) -> None:
    c = actions.add_parser("card", help="write the data card (Markdown + PNG plot) of a manifest",
                           description="Summarise a manifest: hours per language, split, source collection, style "
                           "and license, as Markdown with a PNG plot.")
    c.add_argument("manifest", type=Path, help="manifest.jsonl or its corpus folder")
    c.add_argument("--out", type=Path, help="Markdown file to write (default: data-card.md beside the manifest)")
    c.add_argument("--intelligibility", type=Path, help="JSON from `data ceiling` to include in the card")
    c.set_defaults(handler=run_card)


def _register_ceiling(actions) -> None:
    e = actions.add_parser("ceiling", help="transcriber error per language on a corpus' sung vocal stems",
                           description="Transcribe a fixed sample of the corpus' sung vocal stems (no accompaniment) "
                           "per language with the transcriber and score them with the lyrics recipe: the lyric "
                           "error a model trained on this corpus cannot be expected to beat.")
    e.add_argument("manifest", type=Path, help="manifest.jsonl or its corpus folder")
    e.add_argument("--per-language", type=int, default=6, help="songs transcribed per language")
    e.add_argument("--model", default=None, help="transcriber model (default: the embedded default)")
    e.add_argument("--out", type=Path, help="write the result as JSON here")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(handler=run_ceiling)


def _register_variants(actions) -> None:
    v = add_command(actions, "variants", help="lyric variants of the sung songs (so lyrics decide the singing)",
                    description="""For every sung song of the chosen splits write two variants with the same tags: the
                    accompaniment alone (mix minus the vocal stem) with empty lyrics, and the first k lines of the
                    lyrics with the voice muted after them. In a song model's training data they leave only the lyrics,
                    not the tags, to tell whether and how long there is singing. Writes OUT/manifest.jsonl (the original
                    rows + the variants; tokenize it like any corpus). Needs the vocal stems and line timing `data
                    build` writes; resumable.""")
    v.add_argument("corpus", type=Path, help="manifest.jsonl or its corpus folder")
    v.add_argument("--out", type=Path, required=True, help="new corpus folder for the variants and the manifest")
    v.add_argument("--seed", type=int, default=0, help="seed of the number of lines each `-lines` variant keeps")
    v.add_argument("--splits", default="train,val", help="comma-separated splits to make variants of")
    v.add_argument("--max-kept-lines", type=int, default=12, help="a `-lines` variant keeps 1 to this many lines")
    v.add_argument("--workers", type=int, default=2, help="parallel worker processes")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    v.set_defaults(handler=run_variants)


def _register_tokenize(actions) -> None:
    t = add_command(actions, "tokenize", help="encode a manifest's audio into a codec token cache (LM training)",
                    description="""Encode every item of a manifest with a codec and store the codes with the item's
                    lyrics, tags, language and split: the input of `heartmula train lm`. Each song's HeartCLAP audio
                    embedding is stored too (the LM's reference-audio slot trains on it). Running again with the same
                    --out resumes and adds missing embeddings to older caches; unreadable items are skipped, reported,
                    and retried on the next run.""")
    t.add_argument("manifest", type=Path, help="manifest.jsonl or its corpus folder")
    t.add_argument("--codec", required=True, help="codec root or folder with a trained encoder")
    t.add_argument("--out", type=Path, required=True, help="cache folder (index.json + shard-*.safetensors)")
    t.add_argument("--clap", type=Path, default=None, help="HeartCLAP model folder for the songs' audio embeddings "
                   "(default: the shipped one; generation must embed reference audio with the same model)")
    t.add_argument("--no-clap", action="store_true", help="store no CLAP embeddings (the LM's reference slot then "
                   "stays empty in training)")
    t.add_argument("--shard-items", type=int, default=16, help="items per shard file (the resume granularity)")
    t.add_argument("--limit", type=int, default=None, help="encode only the first N items (a quick try)")
    add_threads_option(t)
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(handler=run_tokenize)


def run_build(args: argparse.Namespace) -> int:
    require("data", "music21", "mido", "wordfreq", "pyopenjtalk", "matplotlib", feature="heartmula data build")
    from heartmula.data.corpus import BuildConfig, build_corpus

    short = {"passes": (1, 1), "song_seconds": (8.0, 12.0)} if args.short else {}
    config = BuildConfig(args.out, hours=args.hours, seed=args.seed, workers=args.workers,
                         sample_rate=args.sample_rate, items=args.items, progress=not args.quiet, **short)
    rows = build_corpus(config)
    hours = sum(r["duration"] for r in rows) / 3600
    print(f"wrote {args.out / 'manifest.jsonl'}: {len(rows)} items, {hours:.2f} hours; card in "
          f"{args.out / 'data-card.md'}", file=sys.stderr)
    return 0


def run_import(args: argparse.Namespace) -> int:
    require("data", "matplotlib", feature="heartmula data import")
    from heartmula.data.importer import DEFAULT_LICENSE, ImportConfig, default_import_dir, import_folder

    out = args.out or default_import_dir(args.folder)
    config = ImportConfig(args.folder, out, sample_rate=args.sample_rate, license=args.license or DEFAULT_LICENSE,
                          progress=not args.quiet)
    report = import_folder(config)
    for path, reason in report.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(f"wrote {out / 'manifest.jsonl'}: {len(report.rows)} songs imported, {len(report.skipped)} skipped",
          file=sys.stderr)
    return 0


def run_card(args: argparse.Namespace) -> int:
    require("data", "matplotlib", feature="heartmula data card")
    from heartmula.eval.intelligibility import intelligibility_markdown

    path = manifest_path(args.manifest)
    rows = read_manifest(path, absolute_paths=False)
    extra = ""
    log = path.parent / "build-log.jsonl"
    if log.is_file():
        extra += build_speed_markdown(log, {r["index"] for r in rows if "index" in r}) + "\n"
    if args.intelligibility:
        extra += intelligibility_markdown(json.loads(args.intelligibility.read_text(encoding="utf-8")))
    out = args.out or path.parent / "data-card.md"
    write_data_card(rows, out, title=path.parent.name, extra_sections=extra)
    print(f"wrote {out} and {out.with_suffix('.png')}", file=sys.stderr)
    return 0


def run_ceiling(args: argparse.Namespace) -> int:
    require("transcribe", "faster_whisper", feature="heartmula data ceiling")
    require("eval", "rapidfuzz", "num2words", "opencc", feature="heartmula data ceiling")
    from heartmula.eval.intelligibility import intelligibility_markdown, measure_intelligibility

    rows = read_manifest(args.manifest)
    result = measure_intelligibility(rows, args.per_language, args.model, progress=not args.quiet)
    if args.out:
        with atomic_output(args.out) as tmp:
            tmp.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    print(intelligibility_markdown(result))
    return 0


def run_variants(args: argparse.Namespace) -> int:
    from heartmula.data.variants import VariantConfig, make_lyric_variants

    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    rows = make_lyric_variants(VariantConfig(args.corpus, args.out, seed=args.seed, splits=splits,
                                             max_kept_lines=args.max_kept_lines, workers=args.workers,
                                             progress=not args.quiet))
    made = sum("variant" in r for r in rows)
    print(f"wrote {args.out / 'manifest.jsonl'}: {len(rows) - made} original rows + {made} variants",
          file=sys.stderr)
    return 0


def run_tokenize(args: argparse.Namespace) -> int:
    import torch

    from heartmula.train.token_cache import tokenize_manifest

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_clap and args.clap:
        raise HeartMuLaError("--clap and --no-clap contradict each other; give one")
    clap = None
    if not args.no_clap:
        from heartmula.clap import DEFAULT_MODEL_DIR

        clap = args.clap or DEFAULT_MODEL_DIR
        if args.clap is None and not (clap / "config.json").is_file():
            print(f"no shipped HeartCLAP model in {clap}: storing no CLAP embeddings", file=sys.stderr)
            clap = None
    report = tokenize_manifest(args.manifest, args.codec, args.out, shard_items=args.shard_items,
                               progress=not args.quiet, limit=args.limit, clap=clap)
    for item_id, reason in report.skipped.items():
        print(f"skipped {item_id}: {reason}", file=sys.stderr)
    print(f"wrote {args.out}: {len(report.encoded)} items encoded ({report.frames} frames), {report.reused} already "
          f"cached, {len(report.embedded)} CLAP embeddings added, {len(report.skipped)} skipped", file=sys.stderr)
    return 0
