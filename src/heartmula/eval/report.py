"""The quality report of a song model (LM + codec): one command, a fixed prompt set, numbers and plots.

    heartmula eval report --out work/report [--model LM] [--codec CODEC] [--corpus CORPUS] [--codec-audio F ...]

What it measures (the report's own Markdown says the same next to the numbers):
 1. songs: every prompt of PROMPTS (en/zh/ja/ko/es with lyrics, plus instrumentals) generated with fixed seeds
    (one, or --seeds N per prompt) at a fixed duration through the real path (load_lm -> generate ->
    codec.decode), saved as FLAC;
 2. lyric error rate: each vocal song transcribed by the project's transcriber (embedded Whisper base, language
    forced) and scored with the lyrics recipe (heartmula.eval.lyrics); headline unit CER for zh/ja/ko, WER for
    en/es; beside the corpus' ceiling (the same transcriber on the corpus' own sung stems) when one is given; and
    the sung language: the language Whisper hears in the singing (no hint) against the lyrics' language;
 3. tag adherence: HeartCLAP tag similarity of each song with its own tags vs another prompt's tags (a fixed
    derangement; statistics over prompts, each the mean of its seeds), plus two signal features that need no
    model: tempo (onset autocorrelation) for prompts tagged slow vs fast, and spectral flatness (noise-likeness)
    for prompts with drums vs without; with a corpus, the same three measures on its held-out songs as a reference
    (what each measure shows where the tags are true);
 4. codec reconstruction of given audio files (encode -> decode; multi-resolution STFT, mel distance, SI-SDR,
    loudness difference);
 5. speed: wall-clock seconds of LM generation and of codec decoding per second of audio, threads used.

The report folder is built under a hidden temporary name beside --out and renamed onto it only when complete, so
an interrupted run never leaves a report that looks finished (and a previous report stays intact until then).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from heartmula.audio import fit_peak, load_audio, save_audio
from heartmula.clap import audio_embedding, load_clap, tags_embedding
from heartmula.codec.pretrained import load_codec
from heartmula.constants import FRAME_RATE
from heartmula.errors import HeartMuLaError, check_at_least
from heartmula.eval.codec_roundtrip import roundtrip
from heartmula.eval.intelligibility import measure_intelligibility
from heartmula.eval.lyrics import RECIPE, EditCounts, score_pair
from heartmula.eval.report_folder import check_out, process_alive, publish
from heartmula.eval.report_markdown import render_markdown, write_plots
from heartmula.eval.report_prompts import (
    HEADLINE_UNIT,
    INSTRUMENTAL,
    LANGUAGES,
    NO_LYRICS_SUFFIX,
    PROMPTS,
    REPORT_VERSION,
    Prompt,
    select_prompts,
    shuffled_partners,
    tag_set,
)
from heartmula.eval.report_statistics import (
    finite_or_none,
    heard_language,
    paired_summary,
    pairwise_win_rate,
    prompt_means,
    sung_language_summary,
    tag_summaries,
)
from heartmula.eval.signal_features import estimate_tempo, level_stats, spectral_flatness
from heartmula.lm.generation import SamplingParams, SongRequest, frames_for_duration
from heartmula.manifest import read_manifest
from heartmula.song_models import load_lm, resolve_codec, resolve_lm
from heartmula.transcribe.pipeline import TranscribeConfig, Transcriber, voiced_seconds
from heartmula.transcribe.result import to_txt


@dataclass
class ReportConfig:
    out: Path
    model: str | None = None  # None: the embedded default LM
    codec: str | None = None  # None: beside the LM / the embedded default codec
    version: str = "3B"
    duration: float | None = None  # None: 30 s (10 s with quick)
    languages: str | None = None  # comma-separated subset of LANGUAGES + "instrumental"; None: all
    seed: int = 0
    seeds: int = 1  # songs per prompt, with seeds seed, seed + 1, ...
    threads: int = 2
    quick: bool = False
    corpus: Path | None = None
    ceiling: Path | None = None  # JSON written by `heartmula data ceiling --out`
    ceiling_items: int = 6
    reference_items: int = 24  # held-out corpus songs for the tag-adherence reference (with corpus)
    codec_audio: list[Path] = field(default_factory=list)
    cfg_scale: float = 1.5
    lyrics_scale: float | None = None  # None: the model's own (its gen_config), as `heartmula generate` samples it
    lyrics_contrast: bool = True  # also generate each vocal prompt with empty lyrics and compare the singing
    clap_model: Path | None = None
    transcriber: str | None = None  # None: the embedded default Whisper
    progress: bool = True
    command: str = ""

    @property
    def seconds(self) -> float:
        return self.duration if self.duration is not None else (10.0 if self.quick else 30.0)

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seed, self.seed + self.seeds))


# --- prompt selection ------------------------------------------------------------------------------------------


def _read_ceiling(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HeartMuLaError(f"cannot read the ceiling JSON {path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) and "cer" in v and "wer" in v
                                             for k, v in data.items() if k in LANGUAGES):
        raise HeartMuLaError(f"{path} is not a `heartmula data ceiling --out` JSON ({{language: {{wer, cer}}}})")
    return {k: v for k, v in data.items() if k in LANGUAGES}


def _lyrics_section(songs: list[dict], ceiling: dict | None) -> dict:
    per_language = {}
    for language in LANGUAGES:
        scored = [s for s in songs if s["language"] == language and "lyrics_counts" in s]
        if not scored:
            continue
        totals = {kind: sum((EditCounts(**s["lyrics_counts"][kind]) for s in scored), EditCounts())
                  for kind in ("wer", "cer")}
        unit = HEADLINE_UNIT[language]
        entry = {"songs": len(scored), "wer": totals["wer"].rate, "cer": totals["cer"].rate, "unit": unit,
                 "error_rate": totals[unit].rate}
        if ceiling and language in ceiling:
            entry["ceiling"] = ceiling[language][unit]
            entry["ceiling_items"] = ceiling[language].get("items")
        per_language[language] = entry
    return {"recipe": RECIPE, "languages": per_language, "ceiling_source": None}


def _generate(config: ReportConfig, prompts: list[Prompt], tmp: Path, model_path: Path, codec_path: Path):
    import torch
    from tqdm import tqdm

    generator = load_lm(model_path, config.version)  # in the precision `heartmula generate` would use
    codec = load_codec(codec_path)
    if config.codec_audio and not codec.can_encode:
        raise HeartMuLaError(f"--codec-audio needs a codec with an encoder; {codec_path} has none")
    lyrics_scale = generator.gen_config.lyrics_scale if config.lyrics_scale is None else config.lyrics_scale
    sampling = SamplingParams(cfg_scale=config.cfg_scale, lyrics_scale=lyrics_scale).validate()
    max_new_frames = frames_for_duration(config.seconds)
    songs = []
    runs = [(prompt, seed, True) for prompt in prompts for seed in config.seed_list]
    if config.lyrics_contrast:  # each vocal prompt and seed again with empty lyrics: do the lyrics decide?
        runs += [(prompt, seed, False) for prompt in prompts if prompt.language for seed in config.seed_list]
    for prompt, seed, with_lyrics in tqdm(runs, desc="generating songs", unit="song", disable=not config.progress):
        torch.manual_seed(seed)
        lyrics = prompt.lyrics if with_lyrics else ""
        request = SongRequest(lyrics=lyrics, tags=prompt.tags, seed=seed)
        began = time.perf_counter()
        codes = generator.generate([request], sampling, max_new_frames)[0]
        lm_seconds = time.perf_counter() - began
        codes = codes.numpy().astype(np.int64)
        began = time.perf_counter()
        if codes.shape[1]:
            audio, rate = codec.decode(codes, seed=seed)
            audio = fit_peak(audio)  # as `heartmula generate` writes songs
        else:  # the LM ended the song at once: measured as one frame of silence (and a lyric error of 1)
            audio, rate = np.zeros((codec.config.audio_channels, int(codec.sample_rate / FRAME_RATE)), np.float32), \
                codec.sample_rate
        decode_seconds = time.perf_counter() - began
        song_id = (prompt.id if config.seeds == 1 else f"{prompt.id}-seed{seed}") + ("" if with_lyrics else
                                                                                      NO_LYRICS_SUFFIX)
        relative = f"songs/{song_id}.flac"
        save_audio(tmp / relative, audio, rate)
        songs.append({"id": song_id, "prompt": prompt.id, "language": prompt.language, "tags": prompt.tags,
                      "lyrics": lyrics, "tempo_tag": prompt.tempo, "drums": prompt.drums, "seed": seed,
                      "audio": relative,
                      "frames": int(codes.shape[1]), "seconds": codes.shape[1] and audio.shape[-1] / rate,
                      "sample_rate": rate,
                      "lm_seconds": lm_seconds, "decode_seconds": decode_seconds, **level_stats(audio)})
    # Counted from the checkpoint's shapes: int8 layers keep their weights as buffers, not parameters.
    lm_shapes = type(generator.model).expected_shapes(generator.model.config).values()
    parameters = {"lm": sum(math.prod(shape) for shape in lm_shapes),
                  "codec": sum(p.numel() for p in codec.parameters()),
                  "threads": torch.get_num_threads(),  # what the timings ran with
                  "lm_int8": generator.model.audio_head_int8 is not None}
    return songs, codec, parameters, sampling


def _measure(config: ReportConfig, prompts: list[Prompt], songs: list[dict], tmp: Path) -> list[np.ndarray]:
    """Transcription + scoring, CLAP similarities and signal features, written into the song records; returns the
    songs' CLAP audio embeddings (for the text -> song search measure)."""
    from tqdm import tqdm

    clap = load_clap(config.clap_model)
    partners = shuffled_partners([p.tags for p in prompts])
    prompt_index = {p.id: i for i, p in enumerate(prompts)}
    texts = {p.tags: tags_embedding(p.tags, clap) for p in prompts}
    transcriber: Transcriber | None = None
    vectors = []
    for song in tqdm(songs, desc="measuring songs", unit="song", disable=not config.progress):
        audio, rate = load_audio(tmp / song["audio"])
        song["tempo_bpm"] = estimate_tempo(audio, rate)
        song["spectral_flatness"] = spectral_flatness(audio, rate)
        vectors.append(audio_embedding(audio, rate, clap))
        song["clap_own"] = float(vectors[-1] @ texts[song["tags"]])
        partner = partners[prompt_index[song["prompt"]]]
        if partner is not None:
            song["shuffled_from"] = prompts[partner].id
            song["shuffled_tags"] = prompts[partner].tags
            song["clap_shuffled"] = float(vectors[-1] @ texts[prompts[partner].tags])
        language = song["language"]
        if language is None:
            continue
        # Whisper is told the language, as for the corpus ceiling. One model serves every language (loading takes
        # seconds); the transcriber reads its language per song, so switching is a config change.
        if transcriber is None:
            transcriber = Transcriber(TranscribeConfig(model=config.transcriber, language=language,
                                                       threads=config.threads))
        elif transcriber.config.language != language:
            if language not in transcriber.backend.supported_languages() or not transcriber.backend.multilingual:
                raise HeartMuLaError(f"transcriber {transcriber.location.name} cannot transcribe {language!r}: use a "
                                     "multilingual Whisper (the default, base)")
            transcriber.config = replace(transcriber.config, language=language)
        transcript = transcriber.transcribe_array(audio, rate, song["audio"])
        song["heard_language"] = heard_language(transcriber.language_probabilities(audio, rate))
        (tmp / "songs" / f"{song['id']}.transcript.txt").write_text(to_txt(transcript), encoding="utf-8")
        song["transcript"] = transcript.text
        counts = score_pair(song["lyrics"], transcript.text, language, phonemes=False)
        song["lyrics_counts"] = {kind: asdict(c) for kind, c in counts.items()}
        song["wer"], song["cer"] = counts["wer"].rate, counts["cer"].rate
    return vectors


def singing_contrast(songs: list[dict], without_lyrics: list[dict], tmp: Path) -> dict:
    """Voiced seconds (the transcriber's VAD) of every song, written into the records; summary: vocal prompts with
    their lyrics vs the same prompt and seed with empty lyrics (paired), and the instrumental prompts."""
    for song in songs + without_lyrics:
        audio, rate = load_audio(tmp / song["audio"])
        song["voiced_seconds"] = voiced_seconds(audio, rate)
    twin = {s["id"].removesuffix(NO_LYRICS_SUFFIX): s for s in without_lyrics}
    pairs = [(s, twin[s["id"]]) for s in songs if s["id"] in twin]
    paired = paired_summary([a["voiced_seconds"] for a, _ in pairs], [b["voiced_seconds"] for _, b in pairs])
    # Songs may end early, and a shorter song has fewer voiced seconds: the voiced share of each song too.
    shares = paired_summary([_voiced_share(a) for a, _ in pairs], [_voiced_share(b) for _, b in pairs])
    instrumental = [s["voiced_seconds"] for s in songs if not s["language"]]
    return {"pairs": paired["songs"], "with_lyrics_mean": paired.get("own_mean"),
            "without_lyrics_mean": paired.get("shuffled_mean"), "mean_difference": paired.get("mean_difference"),
            "cohens_dz": paired.get("cohens_dz"), "lyrics_above": paired.get("own_above_shuffled"),
            "with_lyrics_share": shares.get("own_mean"), "without_lyrics_share": shares.get("shuffled_mean"),
            "share_cohens_dz": shares.get("cohens_dz"),
            "instrumental_prompts_mean": float(np.mean(instrumental)) if instrumental else None,
            "seconds": float(np.mean([s["seconds"] for s in songs + without_lyrics])) if songs else None}


def _voiced_share(song: dict) -> float:
    return song["voiced_seconds"] / song["seconds"] if song["seconds"] else 0.0


def corpus_reference(rows: list[dict], count: int, clap, seconds: float = 30.0, progress: bool = False,
                     codec=None, transcriber=None) -> dict:
    """The tag-adherence measures on real corpus songs (the first `count` held-out items by id, their first
    `seconds`): what the same features and CLAP give where the tags are known to be true, so the generated songs'
    numbers can be read against it (a feature that cannot separate the corpus' own slow and fast songs says
    little about a model). With a `codec` that can encode, the same songs after its round trip too
    ("codec_round_trip"): what an LM that predicted the codec's tokens of a real song perfectly would score. With a
    `transcriber`, the language heard in each vocal song's singing ("sung_language")."""
    from tqdm import tqdm

    held_out = sorted((r for r in rows if r.get("split") in ("val", "test")), key=lambda r: r["id"])[:count]
    partners = shuffled_partners([r["tags"] for r in held_out])
    round_trip = codec is not None and codec.can_encode

    def measure(row, partner, audio, rate, vectors):
        tags = tag_set(row["tags"])
        vectors.append(audio_embedding(audio, rate, clap))
        heard = None
        if transcriber is not None and row.get("language"):
            heard = heard_language(transcriber.language_probabilities(audio, rate))
        return {"id": row["id"], "language": row.get("language"), "heard_language": heard,
                "tempo_tag": next((t for t in ("slow", "moderate", "fast") if t in tags), None),
                "drums": "drums" in tags, "tempo_bpm": estimate_tempo(audio, rate),
                "true_tempo_bpm": row.get("tempo_bpm"), "spectral_flatness": spectral_flatness(audio, rate),
                "tags": row["tags"], "clap_own": float(vectors[-1] @ tags_embedding(row["tags"], clap)),
                "clap_shuffled": None if partner is None else
                float(vectors[-1] @ tags_embedding(held_out[partner]["tags"], clap))}

    items, unreadable, vectors, coded_items, coded_vectors = [], [], [], [], []
    for row, partner in zip(tqdm(held_out, desc="corpus reference", unit="song", disable=not progress), partners):
        try:
            audio, rate = load_audio(row["audio"])
        except HeartMuLaError:  # a missing or broken corpus file should not cost the whole report
            unreadable.append(row["id"])
            continue
        audio = audio[:, : int(seconds * rate)]
        items.append(measure(row, partner, audio, rate, vectors))
        if round_trip:
            coded, coded_rate = codec.decode(codec.encode(audio, rate), seed=0)
            coded_items.append(measure(row, partner, coded, coded_rate, coded_vectors))
    ratios = [s["tempo_bpm"] / s["true_tempo_bpm"] for s in items
              if s["true_tempo_bpm"] and s["tempo_bpm"] is not None and math.isfinite(s["tempo_bpm"])]
    exact = [abs(r - 1) < 0.04 for r in ratios]
    metrical = [min(abs(r / m - 1) for m in (1, 2, 0.5, 2 / 3, 1.5)) < 0.04 for r in ratios]
    sung = transcriber is not None
    return {"songs": len(items), "seconds": seconds, "unreadable": unreadable, **tag_summaries(items),
            "text_search": text_search_summary(vectors, [s["tags"] for s in items], clap),
            "sung_language": sung_language_summary(items) if sung else None,
            "tempo_exact": float(np.mean(exact)) if exact else None,
            "tempo_metrical": float(np.mean(metrical)) if metrical else None, "items": items,
            "codec_round_trip": {**tag_summaries(coded_items), "items": coded_items,
                                 "text_search": text_search_summary(coded_vectors, [s["tags"] for s in coded_items],
                                                                    clap),
                                 "sung_language": sung_language_summary(coded_items) if sung else None}
            if round_trip else None}


def text_search_summary(vectors: list[np.ndarray], tags: list[str], clap) -> dict:
    """Text -> song search with each tag prompt over all the songs: the win rate of the prompt's own songs over the
    songs of other tag sets in similarity to its tags (per prompt; 0.5 = chance), and whether its own song comes
    first. Unlike own-vs-shuffled tags on one song, a tag text that sits close to every song (or far from all)
    cannot tip this measure: each prompt is compared with itself only."""
    groups: dict[frozenset, tuple[str, list[int]]] = {}
    for i, text in enumerate(tags):
        groups.setdefault(tag_set(text), (text, []))[1].append(i)
    if len(groups) < 2:
        return {"prompts": 0}
    matrix = np.stack(vectors)
    win_rates, first, chance = [], [], []
    for text, members in groups.values():
        scores = matrix @ tags_embedding(text, clap)
        own = set(members)
        win_rates.append(pairwise_win_rate([float(scores[i]) for i in members],
                                           [float(scores[i]) for i in range(len(tags)) if i not in own]))
        first.append(int(np.argmax(scores)) in own)
        chance.append(len(members) / len(tags))
    wins = np.array(win_rates)
    sd = float(wins.std(ddof=1)) if len(wins) > 1 else 0.0
    return {"prompts": len(wins), "songs": len(tags), "mean_win_rate": float(wins.mean()),
            "above_chance": float(np.mean(wins > 0.5)), "top1": float(np.mean(first)),
            "top1_chance": float(np.mean(chance)),
            # one-sample effect size over prompts: how many standard deviations the mean win rate is above 0.5
            "cohens_d": float((wins.mean() - 0.5) / sd) if sd > 0 else None}


def _codec_section(config: ReportConfig, codec, tmp: Path) -> dict:
    from tqdm import tqdm

    files = []
    for i, path in enumerate(tqdm(config.codec_audio, desc="codec round trips", unit="file",
                                  disable=not config.progress or not config.codec_audio)):
        plot = f"plots/codec-{i:02d}-{Path(path).stem}.png"
        entry = roundtrip(codec, path, plot=tmp / plot)
        entry["plot"] = plot
        files.append(entry)
    summary = {}
    if files:
        for key in files[0]["metrics"]:
            values = [f["metrics"][key] for f in files if f["metrics"][key] is not None
                      and math.isfinite(f["metrics"][key])]
            summary[key] = float(np.mean(values)) if values else None
    return {"files": files, "mean": summary, "sample_rate": codec.sample_rate,
            "codebooks": codec.config.num_quantizers, "codebook_size": codec.config.codebook_size}


def _checked_inputs(config: ReportConfig) -> tuple[list[Prompt], Path]:
    """The prompts and the output folder, once every setting a user can get wrong is checked."""
    prompts = select_prompts(config.languages, config.quick)
    if not config.seconds > 0:
        raise HeartMuLaError(f"--duration must be > 0 seconds, got {config.seconds}")
    check_at_least("--threads", config.threads)
    check_at_least("--seeds", config.seeds)
    out = Path(config.out)
    check_out(out)
    for path in config.codec_audio:
        if not Path(path).is_file():
            raise HeartMuLaError(f"--codec-audio file {path} does not exist")
    return prompts, out


def _staging_folder(out: Path) -> Path:
    """A new folder beside `out` to write the report into, once the ones left by killed runs are removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.partial-*"):  # left by a killed run (not by one still running)
        pid = stale.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and process_alive(int(pid))):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    tmp.mkdir()
    return tmp


def _measured_ceiling(config: ReportConfig, prompts: list[Prompt], corpus_rows: list[dict], tmp: Path):
    """The intelligibility ceiling measured on the corpus's sung stems (saved as ceiling.json) and its source."""
    wanted = {p.language for p in prompts if p.language}
    rows = [r for r in corpus_rows if r.get("language") in wanted]
    ceiling = measure_intelligibility(rows, config.ceiling_items, config.transcriber, progress=config.progress)
    (tmp / "ceiling.json").write_text(json.dumps(ceiling, ensure_ascii=False, indent=1), encoding="utf-8")
    return ceiling, (f"computed now on {config.corpus} ({config.ceiling_items} sung stems per language; "
                     "saved as ceiling.json, reusable with --ceiling)")


def _corpus_reference(config: ReportConfig, corpus_rows: list[dict] | None, clap, codec) -> dict | None:
    """The tag and lyrics measures of real corpus songs, for comparison (None without --corpus)."""
    import torch

    if corpus_rows is None or config.reference_items <= 0:
        return None

    transcriber = Transcriber(TranscribeConfig(model=config.transcriber, threads=config.threads))
    torch.set_num_threads(config.threads)
    return corpus_reference(corpus_rows, config.reference_items, clap, progress=config.progress, codec=codec,
                            transcriber=transcriber)


def _speed_section(songs: list[dict], threads: int, lm_int8: bool) -> dict:
    audio_seconds = sum(s["seconds"] for s in songs)
    lm_seconds, decode_seconds = sum(s["lm_seconds"] for s in songs), sum(s["decode_seconds"] for s in songs)
    return {"threads": threads, "lm_int8": lm_int8, "audio_seconds": audio_seconds,
            "lm_seconds": lm_seconds, "decode_seconds": decode_seconds,
            "lm_rtf": lm_seconds / audio_seconds if audio_seconds else None,
            "decode_rtf": decode_seconds / audio_seconds if audio_seconds else None,
            "total_rtf": (lm_seconds + decode_seconds) / audio_seconds if audio_seconds else None}


def _write_report(report: dict, tmp: Path) -> None:
    write_plots(report, tmp / "plots")
    (tmp / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    (tmp / "report.md").write_text(render_markdown(report), encoding="utf-8")  # last: its presence = complete


def build_report(config: ReportConfig) -> dict:
    """Run everything and publish the report folder at config.out; returns the report (as in report.json)."""
    import torch

    # Every check that can fail on user input runs before the minutes of generation.
    prompts, out = _checked_inputs(config)
    ceiling, ceiling_source = None, None
    if config.ceiling is not None:
        ceiling, ceiling_source = _read_ceiling(config.ceiling), str(config.ceiling)
    corpus_rows = None
    if config.corpus is not None:
        corpus_rows = read_manifest(config.corpus)
    model_path = resolve_lm(config.model, config.version)
    codec_path = resolve_codec(config.codec, model_path)

    torch.set_num_threads(config.threads)
    tmp = _staging_folder(out)
    try:
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        songs, codec, parameters, sampling = _generate(config, prompts, tmp, model_path, codec_path)
        without_lyrics = [s for s in songs if s["id"].endswith(NO_LYRICS_SUFFIX)]
        songs = [s for s in songs if not s["id"].endswith(NO_LYRICS_SUFFIX)]
        vectors = _measure(config, prompts, songs, tmp)
        if corpus_rows is not None and ceiling is None:
            ceiling, ceiling_source = _measured_ceiling(config, prompts, corpus_rows, tmp)
        # CTranslate2 may reset the OpenMP thread count torch shares; the codec timings below must use --threads.
        torch.set_num_threads(config.threads)
        threads, lm_int8 = parameters.pop("threads"), parameters.pop("lm_int8")

        clap = load_clap(config.clap_model)
        text_search = text_search_summary(vectors, [s["tags"] for s in songs], clap)
        reference = _corpus_reference(config, corpus_rows, clap, codec)
        lyrics = _lyrics_section(songs, ceiling)
        lyrics["ceiling_source"] = ceiling_source
        lyrics["sung_language"] = sung_language_summary(songs)
        lyrics["singing"] = singing_contrast(songs, without_lyrics, tmp) if config.lyrics_contrast else None
        report = {
            "version": REPORT_VERSION, "started": started,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": config.command,
            "settings": {"duration": config.seconds, "seed": config.seed, "seeds": config.seeds,
                         "threads": config.threads, "quick": config.quick, "languages": config.languages or "all",
                         "sampling": asdict(sampling)},
            "models": {"lm": str(model_path), "version": config.version, "codec": str(codec_path),
                       "parameters": parameters, "sample_rate": songs[0]["sample_rate"] if songs else None},
            "songs": songs, "songs_without_lyrics": without_lyrics,
            "lyrics": lyrics,
            "tags": {**tag_summaries(prompt_means(songs)), "songs_per_prompt": config.seeds,
                     "text_search": text_search, "corpus_reference": reference},
            "codec": _codec_section(config, codec, tmp),
            "speed": _speed_section(songs, threads, lm_int8),
        }
        report = finite_or_none(report)
        _write_report(report, tmp)
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


# The names other modules, benchmarks and tests take from here (the report's pieces live in report_*.py).
__all__ = ["INSTRUMENTAL", "LANGUAGES", "PROMPTS", "Prompt", "ReportConfig", "build_report", "estimate_tempo",
           "heard_language", "paired_summary", "pairwise_win_rate", "select_prompts", "shuffled_partners",
           "spectral_flatness", "sung_language_summary", "text_search_summary"]
