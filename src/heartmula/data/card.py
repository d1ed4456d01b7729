"""The data card: what a corpus holds (hours per language, split, tag, source), as Markdown with a plot."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from pathlib import Path

from heartmula.extras import require
from heartmula.files import atomic_output
from heartmula.manifest import SPLITS, parse_tags


def corpus_statistics(rows: list[dict]) -> dict:
    hours = lambda seconds: round(seconds / 3600.0, 3)  # noqa: E731
    by_language, by_split, by_tag, by_collection, by_style = (defaultdict(float) for _ in range(5))
    language_split = defaultdict(float)
    works_per_split = defaultdict(set)
    for row in rows:
        language = row["language"] or "instrumental"
        by_language[language] += row["duration"]
        by_split[row["split"]] += row["duration"]
        language_split[(language, row["split"])] += row["duration"]
        source = row["source"]
        by_collection[source.get("collection") or source.get("corpus", "?")] += row["duration"]
        works_per_split[row["split"]].add(source.get("work"))
        by_style[row.get("style") or "?"] += row["duration"]
        for tag in parse_tags(row["tags"]):
            by_tag[tag] += row["duration"]
    return {
        "items": len(rows),
        "hours": hours(sum(r["duration"] for r in rows)),
        "vocal_items": sum(1 for r in rows if r["vocals"]),
        "by_language": {k: hours(v) for k, v in sorted(by_language.items())},
        "by_split": {k: hours(by_split.get(k, 0.0)) for k in SPLITS},
        "by_language_split": {f"{k[0]}/{k[1]}": hours(v) for k, v in sorted(language_split.items())},
        "by_collection": {k: hours(v) for k, v in sorted(by_collection.items())},
        "by_style": {k: hours(v) for k, v in sorted(by_style.items())},
        "by_tag": {k: hours(v) for k, v in sorted(by_tag.items(), key=lambda kv: -kv[1])},
        "works_per_split": {k: len(works_per_split.get(k, ())) for k in SPLITS},
        "licenses": Counter(r["license"] for r in rows).most_common(),
    }


def write_data_card(rows: list[dict], path: str | os.PathLike, title: str = "heartmula corpus",
                    build: dict | None = None, extra_sections: str = "") -> Path:
    """Write `path` (Markdown) and a PNG plot beside it (same stem)."""
    path = Path(path)
    stats = corpus_statistics(rows)
    plot_path = path.with_suffix(".png")
    _plot(stats, plot_path)
    languages = sorted({k.split("/")[0] for k in stats["by_language_split"]})
    lines = [
        f"# Data card: {title}",
        "",
        f"{stats['items']} items, **{stats['hours']:.2f} hours** ({stats['vocal_items']} with a sung vocal stem).",
        "Made by `heartmula data build` (or `import`); the audio is never committed: it is rebuilt from the seed.",
        "",
        f"![makeup]({plot_path.name})",
        "",
        "## Hours per language and split",
        "",
        "| language | " + " | ".join(SPLITS) + " | total |",
        "|---|" + "---|" * (len(SPLITS) + 1),
    ]
    for language in languages:
        cells = [stats["by_language_split"].get(f"{language}/{s}", 0.0) for s in SPLITS]
        lines.append(f"| {language} | " + " | ".join(f"{c:.2f}" for c in cells) + f" | {sum(cells):.2f} |")
    totals = [stats["by_split"][s] for s in SPLITS]
    lines.append("| **all** | " + " | ".join(f"{c:.2f}" for c in totals) + f" | {stats['hours']:.2f} |")
    lines += ["", "Source works per split (a work is in one split only): " +
              ", ".join(f"{s} {stats['works_per_split'][s]}" for s in SPLITS), "",
              "## Hours per source collection", "", "| collection | hours |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in stats["by_collection"].items()]
    lines += ["", "## Hours per style", "", "| style | hours |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in stats["by_style"].items()]
    lines += ["", "## Hours per tag (top 40)", "", "| tag | hours |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in list(stats["by_tag"].items())[:40]]
    lines += ["", "## Licenses", ""]
    lines += [f"- {count} items: {text}" for text, count in stats["licenses"]]
    if build:
        lines += ["", "## Build settings", "", "```"] + [f"{k}: {v}" for k, v in build.items()] + ["```"]
    if extra_sections:
        lines += ["", extra_sections.rstrip()]
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def build_speed_markdown(log_path: str | os.PathLike, item_ids: set[int] | None = None) -> str:
    """Speed of a build from its build-log.jsonl: audio seconds per wall second and per CPU second."""
    import json

    entries = {}
    for line in Path(log_path).read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        index = entry["index"]
        if "cpu_seconds" not in entry or (item_ids is not None and index not in item_ids):
            continue
        # A resumed build logs finished items again at ~0 cost: keep each item's real (costliest) render.
        if index not in entries or entry["cpu_seconds"] > entries[index]["cpu_seconds"]:
            entries[index] = entry
    if not entries:
        return ""
    audio = sum(e["duration"] for e in entries.values())
    cpu = sum(e["cpu_seconds"] for e in entries.values())
    worker_wall = sum(e["build_seconds"] for e in entries.values())
    loads = [e["load"] for e in entries.values() if "load" in e]
    lines = ["## Build speed", "",
             f"- {len(entries)} items, {audio / 3600:.2f} h of audio; {cpu / 3600:.2f} CPU-hours (workers and "
             f"FluidSynth): **{audio / cpu:.1f}x real time per CPU core**, i.e. {2 * audio / cpu:.1f}x on 2 free "
             "cores.",
             f"- Per worker, wall clock: {audio / worker_wall:.1f}x real time"
             + (f" (machine load average {min(loads):.1f}-{max(loads):.1f} while building: shared cores)"
                if loads else "") + "."]
    return "\n".join(lines) + "\n"


def _plot(stats: dict, path: Path) -> None:
    require("data", "matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    panels = [("hours per language", stats["by_language"]), ("hours per split", stats["by_split"]),
              ("hours per style", stats["by_style"])]
    for ax, (name, data) in zip(axes, panels):
        ax.bar(list(data), list(data.values()), color="#4c72b0")
        ax.set_title(name)
        ax.tick_params(axis="x", rotation=45)
        ax.set_ylabel("hours")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=72)
    plt.close(fig)
