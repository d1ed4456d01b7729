"""Building the corpus: real scores arranged, rendered with FluidSynth, sung in five languages, mixed, written.

Every item is a pure function of (seed, item index), so a build is deterministic whatever the number of workers,
and resumable: an item counts as done once its JSON record exists (written last, atomically). The build stops at
the shortest prefix of items whose durations reach the requested hours.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from heartmula.audio import resample, save_audio
from heartmula.data.arrangement import CHORALE_STYLES, STYLE_BY_NAME, STYLES, Arrangement, arrange
from heartmula.data.card import write_data_card
from heartmula.data.lyrics import LANGUAGE_NAMES, LANGUAGES, LyricWriter, text_source
from heartmula.data.mandarin import LICENSE
from heartmula.data.render import available_soundfonts, render_arrangement
from heartmula.data.scores import COLLECTION_LICENSES, Piece, WorkRef, catalogue, load_piece
from heartmula.data.singing import Note, Singer, SungUnit, VoiceConfig
from heartmula.errors import HeartMuLaError, check_at_least
from heartmula.files import atomic_output
from heartmula.manifest import MANIFEST_NAME, write_manifest

KEY_NAMES = ("c", "c#", "d", "eb", "e", "f", "f#", "g", "ab", "a", "bb", "b")
VOICE_LICENSE = "espeak-ng voice data (GPL-3.0; synthesized audio is not covered) + WORLD vocoder (BSD-3-Clause)"


def voice_license(language: str) -> str:
    """The singing voice's license: Mandarin is sung by a neural voice (heartmula.data.mandarin), the rest by espeak."""
    if language == "zh":
        return LICENSE
    return VOICE_LICENSE


@dataclass(frozen=True)
class BuildConfig:
    out_dir: Path
    hours: float = 10.0
    seed: int = 0
    workers: int = 2
    sample_rate: int = 48000
    instrumental_every: int = 6  # item slots 0-4 are sung (one per language), slot 5 is instrumental
    chorale_share: float = 0.4  # the rest are folk songs
    song_seconds: tuple[float, float] = (45.0, 100.0)
    passes: tuple[int, int] = (2, 4)  # times the piece is played (verse, chorus, verse, chorus)
    items: int | None = None  # build exactly this many items instead of `hours` (previews and tests)
    # Split by source work (hash of its id), so a work never appears in two splits whatever the seed.
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    progress: bool = True

    def validate(self) -> BuildConfig:
        if self.items is not None:
            check_at_least("--items", self.items)
        if not self.hours > 0:
            raise HeartMuLaError(f"--hours must be > 0, got {self.hours}")
        check_at_least("--workers", self.workers)
        if self.sample_rate < 16000:
            raise HeartMuLaError(f"sample rate {self.sample_rate} is too low for music; use 44100 or 48000")
        return self


@dataclass(frozen=True)
class ItemPlan:
    index: int
    item_id: str
    language: str | None  # None: instrumental
    gender: str | None
    collection_draw: float
    style_draw: float
    soundfont_draw: float
    target_seconds: float


def plan_item(config: BuildConfig, index: int) -> ItemPlan:
    rng = np.random.default_rng([config.seed, index])
    slot = index % config.instrumental_every
    language = LANGUAGES[(index // config.instrumental_every + slot) % len(LANGUAGES)] if slot < 5 else None
    gender = str(rng.choice(["female", "male"])) if language else None
    return ItemPlan(index, f"s{config.seed}-{index:06d}", language, gender, float(rng.random()), float(rng.random()),
                    float(rng.random()), float(rng.uniform(*config.song_seconds)))


def split_of_work(work_id: str, val_fraction: float = 0.05, test_fraction: float = 0.05) -> str:
    position = int(hashlib.sha1(work_id.encode()).hexdigest()[:8], 16) / 2**32
    if position < test_fraction:
        return "test"
    if position < test_fraction + val_fraction:
        return "val"
    return "train"


def _pick_piece(plan: ItemPlan, chorale_share: float, rng: np.random.Generator) -> Piece:
    works = catalogue()
    chorales = [w for w in works if w.collection == "bach-chorales"]
    folk = [w for w in works if w.collection == "essen-folksongs"]
    pool = chorales if plan.collection_draw < chorale_share else folk
    for _ in range(20):  # a few works are unusable (too short, unparsable): draw again, deterministically
        work: WorkRef = pool[int(rng.integers(len(pool)))]
        try:
            return load_piece(work)
        except HeartMuLaError:
            continue
    raise HeartMuLaError(f"item {plan.item_id}: no usable work found in 20 draws")


_SINGERS: dict[str, Singer] = {}


def _singer(gender: str) -> Singer:
    """One singer per voice per process (espeak-ng and WORLD state are per process)."""
    if gender not in _SINGERS:
        voice = VoiceConfig(gender=gender, formant_shift=1.15 if gender == "female" else 1.0)
        _SINGERS[gender] = Singer(voice)
    return _SINGERS[gender]


def syllable_slots(notes: list[tuple[Note, float]], min_seconds: float = 0.14) -> list[list[Note]]:
    """Group a phrase's notes into syllables: a note too short to carry a syllable extends the previous one."""
    slots: list[list[Note]] = []
    for note, _ in notes:
        if slots and note.duration < min_seconds:
            slots[-1].append(note)
        else:
            slots.append([note])
    return slots


def sung_lyrics(arrangement: Arrangement, piece: Piece, language: str, rng: np.random.Generator):
    """Lyrics (text with [section] headers), the sung units and their line timing for every sung pass."""
    writer = LyricWriter(language, rng)
    shift = arrangement.transpose + arrangement.vocal_octave_shift
    phrase_starts = [0] + [e + 1 for e in piece.phrase_ends[:-1]]
    chorus_lines: list | None = None
    units: list[SungUnit] = []
    text_sections, timing = [], []
    for section, melody in zip(arrangement.sections, arrangement.melody):
        phrases = []
        for start, end in zip(phrase_starts, piece.phrase_ends):
            notes = [(Note(s, e - s, melody_note.pitch + shift), s) for melody_note, s, e in melody[start:end + 1]]
            if notes:
                phrases.append(syllable_slots(notes))
        if section == "chorus" and chorus_lines is not None:
            lines = chorus_lines  # a chorus repeats its words
        else:
            lines = [writer.line(len(slots)) for slots in phrases]
            if section == "chorus":
                chorus_lines = lines
        section_text = [f"[{section}]"]
        for words, slots in zip(lines, phrases):
            used = sum(len(word.syllables) for word in words)
            if used < len(slots):  # running text a word short of the phrase: the last syllable holds the spare notes
                slots = slots[:used - 1] + [[note for slot in slots[used - 1:] for note in slot]]
            line_units, cursor = [], 0
            for word in words:
                n = len(word.syllables)
                line_units.append(SungUnit(word.spoken, list(word.syllables), slots[cursor:cursor + n],
                                           line=len(timing)))
                cursor += n
            units.extend(line_units)
            text = writer.join(words)
            section_text.append(text)
            last = slots[-1][-1]
            timing.append({
                "section": section, "text": text, "start": round(slots[0][0].onset, 3),
                "end": round(last.onset + last.duration, 3),
                "syllables": [{"text": syl, "start": round(ns[0].onset, 3),
                               "end": round(ns[-1].onset + ns[-1].duration, 3)}
                              for u in line_units for syl, ns in zip(u.syllables, u.notes)],
            })
        text_sections.append("\n".join(section_text))
    return "\n\n".join(text_sections), units, timing


def song_tags(arrangement: Arrangement, piece: Piece, language: str | None, gender: str | None,
              rng: np.random.Generator) -> str:
    """Upstream-style tags: genre, instruments, mood, tempo, vocal, language, key."""
    style = arrangement.style
    minor = piece.mode == "minor"
    tempo = arrangement.tempo
    if minor:
        mood = ("sad", "melancholic", "dark") if tempo < 100 else ("dramatic", "intense", "dark")
    else:
        mood = ("calm", "peaceful", "romantic") if tempo < 100 else ("happy", "energetic", "uplifting")
    tempo_word = "slow" if tempo < 80 else "moderate" if tempo < 115 else "fast"
    tags = [style.name, *arrangement.instrument_tags(), str(rng.choice(mood)), tempo_word]
    tags += [f"{gender} vocal", LANGUAGE_NAMES[language]] if language else ["instrumental"]
    tonic = (piece.tonic + arrangement.transpose) % 12
    tags.append(f"{KEY_NAMES[tonic]} {piece.mode}")
    return ",".join(tags)


def mix_levels(accompaniment: np.ndarray, vocals: np.ndarray | None, rng: np.random.Generator):
    """Scale vocals a few dB above the accompaniment (pop mixing practice), then the mix to about -16 dBFS RMS
    with peaks under -0.5 dBFS. Returns (mix, scaled vocal stem)."""
    mix = accompaniment.copy()
    stem = None
    if vocals is not None:
        active = np.abs(vocals) > 1e-3
        if active.any():
            vocal_rms = np.sqrt(np.mean(vocals[active] ** 2))
            backing_rms = np.sqrt(np.mean(accompaniment[:, active] ** 2)) + 1e-9
            gain = backing_rms / vocal_rms * 10 ** (rng.uniform(1.0, 5.0) / 20)
            stem = (vocals * gain).astype(np.float32)
            mix = mix + stem[None]
        else:
            stem = vocals
    rms = np.sqrt(np.mean(mix**2)) + 1e-9
    scale = min(10 ** (-16 / 20) / rms, 0.944 / (np.abs(mix).max() + 1e-9))
    return (mix * scale).astype(np.float32), (stem * scale).astype(np.float32) if stem is not None else None


def build_item(config: BuildConfig, index: int) -> dict:
    """Render one item to disk and return its manifest row (the JSON record is written last)."""
    plan = plan_item(config, index)
    record_path = config.out_dir / "items" / f"{plan.item_id}.json"
    if record_path.is_file():
        return json.loads(record_path.read_text(encoding="utf-8"))
    rng = np.random.default_rng([config.seed, index, 1])
    piece = _pick_piece(plan, config.chorale_share, rng)
    choices = CHORALE_STYLES if piece.parts else tuple(s.name for s in STYLES)
    style = STYLE_BY_NAME[choices[int(plan.style_draw * len(choices))]]
    soundfonts = available_soundfonts()
    soundfont = soundfonts[0] if plan.soundfont_draw < 0.8 or len(soundfonts) == 1 else soundfonts[1]
    vocal = plan.language is not None
    arrangement = arrange(piece, style, plan.gender, vocal, rng, plan.target_seconds, config.passes)
    backing = render_arrangement(arrangement, soundfont, config.sample_rate)
    lyrics, timing, vocals = "", [], None
    if vocal:
        lyrics, units, timing = sung_lyrics(arrangement, piece, plan.language, rng)
        sung = _singer(plan.gender).sing(units, plan.language, arrangement.duration)
        vocals = resample(sung.audio[None], sung.sample_rate, config.sample_rate)[0]
        vocals = np.pad(vocals, (0, max(0, backing.shape[1] - len(vocals))))[: backing.shape[1]]
    mix, stem = mix_levels(backing, vocals, rng)
    audio_rel = f"audio/{plan.item_id}.flac"
    save_audio(config.out_dir / audio_rel, mix, config.sample_rate)
    vocals_rel = None
    if stem is not None:
        vocals_rel = f"vocals/{plan.item_id}.flac"
        save_audio(config.out_dir / vocals_rel, stem[None], config.sample_rate)
    licenses = [f"score: {COLLECTION_LICENSES[piece.work.collection]}",
                f"soundfont {soundfont.name}: {soundfont.license}"]
    if vocal:
        licenses += [f"lyrics text: {text_source(plan.language)}", f"voice: {voice_license(plan.language)}"]
    row = {
        "id": plan.item_id,
        "audio": audio_rel,
        "vocals": vocals_rel,
        "lyrics": lyrics,
        "timing": timing,
        "language": plan.language,
        "tags": song_tags(arrangement, piece, plan.language, plan.gender, rng),
        "duration": round(mix.shape[1] / config.sample_rate, 3),
        "sample_rate": config.sample_rate,
        "source": {"corpus": "music21", "collection": piece.work.collection, "work": piece.work.work_id,
                   "title": piece.title},
        "license": "; ".join(licenses),
        "split": split_of_work(piece.work.work_id, config.val_fraction, config.test_fraction),
        "style": style.name,
        "tempo_bpm": arrangement.tempo,
        "key": f"{KEY_NAMES[(piece.tonic + arrangement.transpose) % 12]} {piece.mode}",
        "vocal_gender": plan.gender,
        "soundfont": soundfont.name,
        "seed": config.seed,
        "index": index,
    }
    with atomic_output(record_path) as tmp:
        tmp.write_text(json.dumps(row, ensure_ascii=False, sort_keys=True), encoding="utf-8")
    return row


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (FluidSynth): what the build costs on free cores."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _build_item_timed(config: BuildConfig, index: int) -> tuple[int, dict, float, float]:
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    row = build_item(config, index)
    return index, row, time.perf_counter() - start, _cpu_seconds() - cpu_start


def _worker_init() -> None:
    # Each worker is one process on one core: keep BLAS/OpenMP libraries from spawning extra threads.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"


def build_corpus(config: BuildConfig) -> list[dict]:
    """Build (or resume) a corpus of at least `config.hours` hours; write the manifest and data card."""
    from tqdm import tqdm

    config = config.validate()
    out = config.out_dir
    (out / "items").mkdir(parents=True, exist_ok=True)
    settings = {"seed": config.seed, "sample_rate": config.sample_rate,
                "instrumental_every": config.instrumental_every, "song_seconds": list(config.song_seconds)}
    settings_path = out / "build.json"
    if settings_path.is_file():
        previous = json.loads(settings_path.read_text())
        if previous != settings:
            raise HeartMuLaError(f"{out} was built with other settings ({previous}); use a new --out folder or the "
                                 "same --seed/--sample-rate to resume")
    else:
        with atomic_output(settings_path) as tmp:
            tmp.write_text(json.dumps(settings, indent=1))
    target = config.hours * 3600.0 if config.items is None else float("inf")
    rows: dict[int, dict] = {}
    log_path = out / "build-log.jsonl"
    if config.items is not None:
        return _build_fixed_count(config, log_path)
    bar = tqdm(total=round(target), unit="s", desc="corpus (audio seconds)", disable=not config.progress)
    prefix_end, prefix_seconds, next_index = 0, 0.0, 0
    started = time.perf_counter()

    def advance_prefix() -> None:
        nonlocal prefix_end, prefix_seconds
        while prefix_end in rows and prefix_seconds < target:
            prefix_seconds += rows[prefix_end]["duration"]
            prefix_end += 1
            bar.update(round(min(prefix_seconds, target)) - bar.n)

    def needs_more() -> bool:
        # Items in flight or done past the prefix may still be needed; submit while the prefix is short.
        planned = prefix_seconds + sum(r["duration"] for i, r in rows.items() if i >= prefix_end)
        return planned < target

    with ProcessPoolExecutor(max_workers=config.workers, initializer=_worker_init) as pool, \
            log_path.open("a", encoding="utf-8") as log:
        running = set()
        while True:
            while len(running) < config.workers * 2 and needs_more():
                running.add(pool.submit(_build_item_timed, config, next_index))
                next_index += 1
            if not running:
                break
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                index, row, seconds, cpu = future.result()
                rows[index] = row
                log.write(json.dumps({"index": index, "duration": row["duration"], "build_seconds": round(seconds, 3),
                                      "cpu_seconds": round(cpu, 3), "time": round(time.perf_counter() - started, 3),
                                      "load": round(os.getloadavg()[0], 2)}) + "\n")
                log.flush()
            advance_prefix()
            if prefix_seconds >= target:
                for future in running:
                    future.cancel()
                wait(running)
                break
    bar.close()
    return _finish(config, [rows[i] for i in range(prefix_end)])


def _build_fixed_count(config: BuildConfig, log_path: Path) -> list[dict]:
    from tqdm import tqdm

    rows: dict[int, dict] = {}
    with ProcessPoolExecutor(max_workers=config.workers, initializer=_worker_init) as pool, \
            log_path.open("a", encoding="utf-8") as log:
        futures = [pool.submit(_build_item_timed, config, i) for i in range(config.items)]
        for future in tqdm(futures, desc="corpus (items)", unit="item", disable=not config.progress):
            index, row, seconds, cpu = future.result()
            rows[index] = row
            log.write(json.dumps({"index": index, "duration": row["duration"], "build_seconds": round(seconds, 3),
                                  "cpu_seconds": round(cpu, 3)}) + "\n")
    return _finish(config, [rows[i] for i in range(config.items)])


def _finish(config: BuildConfig, manifest_rows: list[dict]) -> list[dict]:
    write_manifest(config.out_dir / MANIFEST_NAME, manifest_rows)
    write_data_card(manifest_rows, config.out_dir / "data-card.md", title=f"heartmula corpus (seed {config.seed})",
                    build=asdict(config) | {"out_dir": str(config.out_dir)})
    return manifest_rows
