"""The report's plots and its Markdown page, rendered from report.json's dictionary."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from heartmula.eval.report_prompts import NO_LYRICS_SUFFIX
from heartmula.eval.report_statistics import prompt_means
from heartmula.extras import require


# --- plots and Markdown --------------------------------------------------------------------------------------------
def write_plots(report: dict, folder: Path) -> None:
    require("eval", "matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    languages = report["lyrics"]["languages"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if languages:
        names = list(languages)
        x = np.arange(len(names))
        ax.bar(x - 0.2, [languages[n]["error_rate"] for n in names], 0.4, label="generated songs")
        ceiling = [languages[n].get("ceiling") for n in names]
        if any(c is not None for c in ceiling):
            ax.bar(x + 0.2, [c if c is not None else 0.0 for c in ceiling], 0.4, label="corpus ceiling")
        ax.set_xticks(x, [f"{n} ({languages[n]['unit'].upper()})" for n in names])
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no vocal songs in this run", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("lyric error rate")
    ax.set_title("Lyric error rate per language")
    fig.tight_layout()
    fig.savefig(folder / "lyrics.png", dpi=90)
    plt.close(fig)

    songs = report["songs"]
    prompts = prompt_means(songs)
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(prompts) + 2), 3.8))
    x = np.arange(len(prompts))
    for offset, key, label in ((-0.2, "clap_own", "own tags"), (0.2, "clap_shuffled", "another prompt's tags")):
        bars = ax.bar(x + offset, [p[key] if p[key] is not None else 0.0 for p in prompts], 0.4, label=label)
        if any(p["songs"] > 1 for p in prompts):  # each seed's song as a dot on its prompt's bar
            for i, prompt in enumerate(prompts):
                values = [s[key] for s in songs if s.get("prompt", s["id"]) == prompt["id"] and s.get(key) is not None]
                ax.scatter(np.full(len(values), i + offset), values, s=8, color="black",
                           edgecolor=bars.patches[i].get_facecolor(), zorder=3)
    ax.set_xticks(x, [p["id"] for p in prompts], rotation=60, ha="right", fontsize=8)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_ylabel("HeartCLAP tag similarity")
    ax.set_title("Tag adherence: own vs shuffled tags")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "clap.png", dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    groups = (("tempo_tag", ("slow", "moderate", "fast"), "tempo_bpm", "estimated tempo (BPM)", "tempo tag"),
              ("drums", (False, True), "spectral_flatness", "spectral flatness", "drums in tags"))
    for ax, (key, values, feature, label, title) in zip(axes, groups):
        for k, value in enumerate(values):
            ys = [p[feature] for p in prompts if p[key] == value and p.get(feature) is not None]
            ax.scatter(np.full(len(ys), k) + np.linspace(-0.1, 0.1, len(ys)) if ys else [], ys, alpha=0.8)
            if ys:
                ax.hlines(np.mean(ys), k - 0.25, k + 0.25, color="black")
        ax.set_xticks(range(len(values)), [str(v) if not isinstance(v, bool) else ("yes" if v else "no")
                                           for v in values])
        ax.set_xlabel(title)
        ax.set_ylabel(label)
    fig.suptitle("Signal features by prompt tag (dots: prompts; lines: group means)")
    fig.tight_layout()
    fig.savefig(folder / "signal.png", dpi=90)
    plt.close(fig)


def _f(value, digits: int = 3, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


def _seeds_text(settings: dict) -> str:
    seeds = settings.get("seeds", 1)
    return f"seed {settings['seed']}" if seeds == 1 else f"seeds {settings['seed']}-{settings['seed'] + seeds - 1}"


def _times(seeds: int) -> str:
    return "once with the same seed" if seeds == 1 else f"{seeds} times (the same {seeds} seeds for every prompt)"


def _sung_language_lines(generated: dict | None, reference: dict | None) -> list[str]:
    """Do the lyrics reach the singing at all? The language Whisper hears, against the language of the lyrics."""
    if not generated or not generated["songs"]:
        return []

    def cell(summary):
        if not summary or not summary["songs"]:
            return "n/a"
        per = ", ".join(f"{language} {e['correct']}/{e['songs']}" for language, e in summary["by_language"].items())
        return f"{summary['correct']} of {summary['songs']} ({_f(summary['accuracy'], 2)}; {per})"

    round_trip = (reference or {}).get("codec_round_trip") or {}
    return ["", "**Sung language.** Whisper's language identification on each vocal song's voiced audio (no language "
            "given; the likeliest of the five prompt languages, chance 0.20): do the lyrics' language and the "
            "singing's agree? On the corpus' held-out vocal songs (first 30 s, with accompaniment) for reference.",
            "", "| generated songs | corpus songs (reference) | corpus songs through the codec |", "|---|---|---|",
            f"| {cell(generated)} | {cell((reference or {}).get('sung_language'))} | "
            f"{cell(round_trip.get('sung_language'))} |"]


def _singing_lines(singing: dict | None) -> list[str]:
    if not singing or not singing["pairs"]:
        return []
    return ["", f"**Do the lyrics decide the singing?** Each vocal prompt and seed was generated again with empty "
            f"lyrics (same tags, same seed). Seconds in which a voice is heard (silero VAD at the transcriber's "
            f"threshold, `heartmula.transcribe.pipeline.voiced_seconds`; songs of {_f(singing['seconds'], 1)} s on "
            f"average): with the lyrics {_f(singing['with_lyrics_mean'], 1)} s, without "
            f"{_f(singing['without_lyrics_mean'], 1)} s (difference {_f(singing['mean_difference'], 1)} s, d_z "
            f"{_f(singing['cohens_dz'], 2)}; more with the lyrics for {100 * singing['lyrics_above']:.0f}% of "
            f"{singing['pairs']} pairs); as a share of each song's length {_f(singing['with_lyrics_share'], 2)} vs "
            f"{_f(singing['without_lyrics_share'], 2)} (d_z {_f(singing['share_cohens_dz'], 2)}); instrumental "
            f"prompts {_f(singing['instrumental_prompts_mean'], 1)} s."]


def render_markdown(report: dict) -> str:
    lines = _songs_lines(report) + _lyrics_lines(report) + _tag_lines(report) + _codec_lines(report)
    return "\n".join(lines + _speed_lines(report))


def _songs_lines(report: dict) -> list[str]:
    settings, models, songs = report["settings"], report["models"], report["songs"]
    lines = [
        "# Quality report", "",
        f"`{report['command'] or 'heartmula eval report'}` ({report['version']}, {report['finished']})", "",
        f"- LM: `{models['lm']}` (version {models['version']}, {models['parameters']['lm']:,} parameters); "
        f"codec: `{models['codec']}` ({models['parameters']['codec']:,} parameters, {models['sample_rate']} Hz)",
        f"- {len(songs)} songs of the fixed prompt set (`heartmula.eval.report.PROMPTS`), languages: "
        f"{settings['languages']}{' (quick: first prompt of each)' if settings['quick'] else ''}; "
        f"duration {settings['duration']:g} s, {_seeds_text(settings)}, top-k {settings['sampling']['top_k']}, "
        f"temperature {settings['sampling']['temperature']:g}, CFG {settings['sampling']['cfg_scale']:g}, "
        + (f"lyrics guidance {settings['sampling']['lyrics_scale']:g}, "
           if settings["sampling"].get("lyrics_scale") is not None else "") +
        f"threads {settings['threads']}", "",
        "## 1. Songs", "",
        f"Each prompt generated {_times(settings.get('seeds', 1))} through `load_lm` -> `generate` -> "
        "`codec.decode`, "
        "saved as FLAC. Level columns show silent or clipped output.", "",
        "| song | language | tags | seconds | RMS dBFS | peak dBFS | clipped |", "|---|---|---|---|---|---|---|",
    ]
    for s in songs:
        lines.append(f"| [{s['id']}]({s['audio']}) | {s['language'] or 'instrumental'} | {s['tags']} | "
                     f"{s['seconds']:.1f} | {_f(s['rms_dbfs'], 1)} | {_f(s['peak_dbfs'], 1)} | "
                     f"{100 * s['clipped_fraction']:.2f}% |")
    return lines


def _lyrics_lines(report: dict) -> list[str]:
    songs = report["songs"]
    lines: list[str] = []
    lyrics = report["lyrics"]
    lines += ["", "## 2. Lyric error rate", "",
              f"Each vocal song transcribed by the project's transcriber (embedded Whisper base, language given) and "
              f"scored against its prompt lyrics with the lyrics recipe ({lyrics['recipe']}: section headers "
              "removed, normalised, corpus-level rates, errors summed before dividing). Headline unit: CER for "
              "zh/ja/ko, WER for en/es. Lyrics cut off by the duration count as deletions.", ""]
    if lyrics["languages"]:
        has_ceiling = any("ceiling" in e for e in lyrics["languages"].values())
        lines += ["| language | songs | WER | CER | headline | corpus ceiling | headline / ceiling |",
                  "|---|---|---|---|---|---|---|"]
        for language, e in lyrics["languages"].items():
            ceiling = e.get("ceiling")
            ratio = e["error_rate"] / ceiling if ceiling else None
            lines.append(f"| {language} | {e['songs']} | {_f(e['wer'])} | {_f(e['cer'])} | "
                         f"{e['unit'].upper()} {_f(e['error_rate'])} | {_f(ceiling)} | {_f(ratio, 2)} |")
        if has_ceiling:
            lines += ["", "The ceiling is the same transcriber on the corpus' own sung vocal stems (no accompaniment):"
                      " a model trained on the corpus cannot be expected to sing more clearly. Source: "
                      f"{lyrics['ceiling_source']}."]
        else:
            lines += ["", "No ceiling: pass `--corpus DIR` (computed with `heartmula data ceiling`'s code) or "
                      "`--ceiling JSON` (from `heartmula data ceiling --out`)."]
        lines += _sung_language_lines(lyrics.get("sung_language"), report["tags"].get("corpus_reference"))
        lines += _singing_lines(lyrics.get("singing"))
        twins = {t["id"].removesuffix(NO_LYRICS_SUFFIX): t for t in report.get("songs_without_lyrics", [])}
        lines += ["", "| song | transcript (first 80 characters) | WER | CER | language heard | voiced s | voiced s "
                  "without lyrics |", "|---|---|---|---|---|---|---|"]
        for s in songs:
            if "transcript" in s:
                text = s["transcript"][:80].replace("|", "/") or "(nothing)"
                lines.append(f"| {s['id']} | {text} | {_f(s['wer'])} | {_f(s['cer'])} | "
                             f"{s.get('heard_language') or 'no voice'} | {_f(s.get('voiced_seconds'), 1)} | "
                             f"{_f(twins.get(s['id'], {}).get('voiced_seconds'), 1)} |")
    else:
        lines.append("No vocal songs in this run.")
    lines += ["", "![lyric error rate per language](plots/lyrics.png)"]
    return lines


def _clap_cell(c, unit):
    if not c or not c.get("songs"):
        return "n/a"
    return (f"{_f(c['own_mean'])} vs {_f(c['shuffled_mean'])} (diff {_f(c['mean_difference'])}, d_z "
            f"{_f(c['cohens_dz'], 2)}, own higher for {100 * c['own_above_shuffled']:.0f}% of {c['songs']} "
            f"{unit})")

def _search_cell(c):
    if not c or not c.get("prompts"):
        return "n/a"
    return (f"win rate {_f(c['mean_win_rate'], 2)} (d {_f(c['cohens_d'], 2)}, above 0.5 for "
            f"{100 * c['above_chance']:.0f}% of {c['prompts']} prompts); own song first for "
            f"{100 * c['top1']:.0f}% (chance {100 * c['top1_chance']:.0f}%)")

def _group_cell(g, digits, unit=""):
    if not g:
        return "n/a"
    means = ", ".join(f"{k} {_f(v['mean'], digits)} (n={v['songs']})" for k, v in g["groups"].items()
                      if v["songs"])
    return f"{means}; difference {_f(g['difference'], digits, unit)}, win rate {_f(g['win_rate'], 2)}"


def _tag_lines(report: dict) -> list[str]:
    songs = report["songs"]
    lines: list[str] = []
    tags = report["tags"]
    clap = tags["clap"]
    reference = tags.get("corpus_reference")
    lines += ["", "## 3. Tag adherence", "",
              "Does a song sound like its tags? Four measures, each on the generated songs and, when a corpus is "
              "given, on the corpus' own held-out songs (where the tags are true: the reference for what each "
              "measure can show at all) and on the same songs after the codec's round trip (encode, decode: what "
              "an LM that predicted a real song's tokens perfectly would score, the ceiling for this codec). Win "
              "rate: the fraction of (fast, slow) or (drums, no drums) pairs (of "
              "prompts for generated songs, of songs for the corpus) ordered the expected way (0.5 = chance, 1 = "
              "perfect separation).", "",
              "| measure | generated songs | corpus songs (reference) | corpus songs through the codec |",
              "|---|---|---|---|"]

    ref = reference or {}
    coded = ref.get("codec_round_trip") or {}
    lines += [f"| HeartCLAP similarity, own vs shuffled tags | {_clap_cell(clap, 'prompts')} | "
              f"{_clap_cell(ref.get('clap'), 'songs')} | {_clap_cell(coded.get('clap'), 'songs')} |",
              f"| HeartCLAP text -> song search, own songs vs the others | {_search_cell(tags.get('text_search'))} | "
              f"{_search_cell(ref.get('text_search'))} | {_search_cell(coded.get('text_search'))} |",
              f"| estimated tempo (BPM) by tempo tag | {_group_cell(tags['tempo'], 1, ' BPM')} | "
              f"{_group_cell(ref.get('tempo'), 1, ' BPM')} | {_group_cell(coded.get('tempo'), 1, ' BPM')} |",
              f"| spectral flatness, drums vs no drums | {_group_cell(tags['drums'], 4)} | "
              f"{_group_cell(ref.get('drums'), 4)} | {_group_cell(coded.get('drums'), 4)} |", ""]
    if reference:
        lines += [f"Corpus reference: the first {reference['songs']} held-out (val/test) songs of the corpus by id, "
                  f"first {reference['seconds']:g} s each. The tempo estimate is within 4% of the corpus' true "
                  f"tempo for {_f(reference.get('tempo_exact'), 2)} of them and within 4% of the tempo, its double, "
                  f"half, 2/3 or 3/2 for {_f(reference.get('tempo_metrical'), 2)}.", ""]
    else:
        lines += ["No corpus reference: pass `--corpus DIR` to see what these measures give on real songs.", ""]
    lines += ["**HeartCLAP** (`heartmula.clap.tag_similarity`, shipped HeartCLAP): cosine between a song's audio "
              "embedding and the embedding of a tag list, its own prompt's tags vs another prompt's tags (a fixed "
              "derangement); effect size Cohen's d_z of the per-prompt differences (with several seeds, a prompt's "
              "value is the mean over its songs; the table below lists every song). A tag text that sits close to "
              "all music (or far from it) moves this comparison whatever the song, so the second HeartCLAP measure "
              "searches the songs with each prompt's tags, as `heartmula search` does: the win rate of the "
              "prompt's own songs over every other prompt's songs (0.5 = chance; d: the mean win rate's distance "
              "from 0.5 in standard deviations over prompts), and how often its own song comes first.", ""]
    if not clap.get("songs"):
        lines += ["Fewer than two prompts with different tags: no shuffled baseline.", ""]
    lines += ["| song | CLAP own | CLAP shuffled | shuffled tags from | tempo tag | est. BPM | drums | flatness |",
              "|---|---|---|---|---|---|---|---|"]
    for s in songs:
        lines.append(f"| {s['id']} | {_f(s.get('clap_own'))} | {_f(s.get('clap_shuffled'))} | "
                     f"{s.get('shuffled_from', 'n/a')} | {s['tempo_tag']} | {_f(s.get('tempo_bpm'), 1)} | "
                     f"{'yes' if s['drums'] else 'no'} | {_f(s.get('spectral_flatness'), 4)} |")
    lines += ["", "![own vs shuffled tag similarity](plots/clap.png)", "",
              "**Tempo** (`estimate_tempo`): autocorrelation of the spectral-flux onset envelope, the beat period "
              "picked with a broad prior around 120 BPM; the corpus tags songs under 80 BPM slow and from 115 BPM "
              "fast. Octave errors are common (eighth-note accompaniment read as double time), so read the win rate "
              "against the corpus reference. **Instrument** (`spectral_flatness`): drum hits are broadband noise, "
              "pitched instruments and voice are harmonic, so songs whose tags include drums should be flatter; it "
              "cannot tell a piano from a guitar.", "", "![signal features by tag](plots/signal.png)"]
    return lines


def _codec_lines(report: dict) -> list[str]:
    lines: list[str] = []
    codec = report["codec"]
    lines += ["", "## 4. Codec reconstruction", ""]
    if codec["files"]:
        lines += [f"Given files encoded and decoded by the codec ({codec['codebooks']} codebooks x "
                  f"{codec['codebook_size']} codes, {codec['sample_rate']} Hz), compared at the codec's rate "
                  "(`heartmula.eval.codec_metrics`): multi-resolution STFT distance and mel distance (lower is "
                  "better), SI-SDR (higher is better; phase-sensitive), loudness difference. Whether the files were "
                  "held out from training is the caller's claim, not checked here.", "",
                  "| file | seconds | MR-STFT | mel dist | SI-SDR dB | loudness diff LU | decode RTF |",
                  "|---|---|---|---|---|---|---|"]
        for f in codec["files"]:
            m = f["metrics"]
            lines.append(f"| {f['file']} | {f['seconds']:.1f} | {_f(m['mrstft'])} | {_f(m['mel_distance'])} | "
                         f"{_f(m['si_sdr_db'], 2)} | {_f(m['loudness_diff_lu'], 2)} | {_f(f['decode_rtf'], 3)} |")
        mean = codec["mean"]
        lines.append(f"| **mean** | | {_f(mean.get('mrstft'))} | {_f(mean.get('mel_distance'))} | "
                     f"{_f(mean.get('si_sdr_db'), 2)} | {_f(mean.get('loudness_diff_lu'), 2)} | |")
        lines += [""] + [f"![{f['file']}]({f['plot']})" for f in codec["files"]]
    else:
        lines.append("Not measured: pass held-out recordings with `--codec-audio FILE ...`.")
    return lines


def _speed_lines(report: dict) -> list[str]:
    lines: list[str] = []
    speed = report["speed"]
    lines += ["", "## 5. Speed", "",
              "Wall-clock seconds per second of generated audio (RTF; under 1 is faster than real time), songs "
              "generated one at a time, model loading excluded; on a shared machine this is an upper bound.", "",
              "| threads | LM weights | audio s | LM s | decode s | LM RTF | decode RTF | LM + codec RTF |",
              "|---|---|---|---|---|---|---|---|",
              f"| {speed['threads']} | {'int8' if speed.get('lm_int8') else 'float32'} | "
              f"{speed['audio_seconds']:.1f} | {speed['lm_seconds']:.1f} | "
              f"{speed['decode_seconds']:.1f} | {_f(speed['lm_rtf'])} | {_f(speed['decode_rtf'])} | "
              f"{_f(speed['total_rtf'])} |", ""]
    return lines
