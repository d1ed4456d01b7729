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

from heartmula.constants import FRAME_RATE
from heartmula.errors import HeartMuLaError
from heartmula.extras import require

REPORT_VERSION = "heartmula-report-v1"
LANGUAGES = ("en", "zh", "ja", "ko", "es")
INSTRUMENTAL = "instrumental"
# Headline lyric unit per language: words where the script separates them, characters where it does not (ko words
# are space-separated, but syllable blocks carry the sound, and a one-block slip should not cost a whole word).
HEADLINE_UNIT = {"en": "wer", "es": "wer", "zh": "cer", "ja": "cer", "ko": "cer"}
NO_LYRICS_SUFFIX = "-nolyrics"  # id suffix of a vocal prompt's song generated again with empty lyrics


@dataclass(frozen=True)
class Prompt:
    id: str
    language: str | None  # None: instrumental (empty lyrics)
    tags: str  # in the corpus' order: style, instruments, mood, tempo, vocal, language, key
    lyrics: str = ""

    @property
    def tag_list(self) -> list[str]:
        return [t.strip() for t in self.tags.split(",") if t.strip()]

    @property
    def tempo(self) -> str | None:
        """The tempo tag (slow < 80 BPM, moderate, fast >= 115 BPM in the corpus), or None."""
        return next((t for t in self.tag_list if t in ("slow", "moderate", "fast")), None)

    @property
    def drums(self) -> bool:
        return "drums" in self.tag_list


# The fixed prompt set. Never edit a prompt in place: runs are compared across model versions; add new ones and
# bump REPORT_VERSION. Tags use only the corpus engine's vocabulary (heartmula.data.corpus.song_tags: the styles'
# real instrument sets and tempo ranges, so "rock" comes with electric guitar, bass, drums and is fast). The first
# prompt of each language is what --quick runs; they alternate slow / fast so a quick run still has both. The
# lyrics are short (about 30 sung syllables) so a 30 s song can hold them at the corpus' one syllable per note.
PROMPTS: tuple[Prompt, ...] = (
    Prompt("en-ballad", "en", "ballad,piano,strings,calm,slow,female vocal,english,c major",
           "[verse]\nthe morning light is on the hill\ni hear the river running still\n\n"
           "[chorus]\nstay with me until the night\nsing with me and hold me tight"),
    Prompt("en-rock", "en", "rock,electric guitar,bass,drums,energetic,fast,male vocal,english,e major",
           "[verse]\nwe run along the empty road\nthe city lights are burning gold\n\n"
           "[chorus]\nraise your voice and let it ring\ntonight we are the ones who sing"),
    Prompt("en-folk", "en", "folk,flute,acoustic guitar,bass,drums,happy,moderate,female vocal,english,g major",
           "[verse]\ndown by the meadow where the grass grows tall\nmy father sang it every fall\n\n"
           "[chorus]\nsing it high and sing it low\nhome is where the rivers flow"),
    Prompt("zh-rock", "zh", "rock,electric guitar,bass,drums,energetic,fast,male vocal,chinese,d major",
           "[verse]\n夜里的风吹过城市\n我们一起向前奔跑\n\n[chorus]\n燃烧吧我的心\n唱出明天的歌"),
    Prompt("zh-ballad", "zh", "ballad,piano,strings,romantic,slow,female vocal,chinese,f major",
           "[verse]\n月光照在小河上\n你的笑容在心里\n\n[chorus]\n我会一直等着你\n直到花开的季节"),
    Prompt("zh-pop", "zh", "pop,synthesizer,electric piano,bass,drums,uplifting,fast,female vocal,chinese,a major",
           "[verse]\n阳光洒满了街道\n每个人都在微笑\n\n[chorus]\n跟我一起唱\n快乐就在今天"),
    Prompt("ja-hymn", "ja", "hymn,organ,peaceful,slow,female vocal,japanese,g major",
           "[verse]\nしずかな朝に鳥がうたう\nやさしい光が空にひろがる\n\n[chorus]\nありがとうこの日に\nこころからうたおう"),
    Prompt("ja-electronic", "ja", "electronic,synthesizer,synth bass,drums,intense,fast,male vocal,japanese,a minor",
           "[verse]\n夜の街をかけぬけて\n光の中でおどりだす\n\n[chorus]\n止まらないこのリズム\nいつまでも歌いたい"),
    Prompt("ja-classical", "ja", "classical,violin,viola,cello,strings,melancholic,slow,male vocal,japanese,d minor",
           "[verse]\n遠い海の波の音\nひとりきりで聞いている\n\n[chorus]\nさよならは言わないで\nまた会える日まで"),
    Prompt("ko-electronic", "ko", "electronic,synthesizer,synth bass,drums,happy,fast,female vocal,korean,c major",
           "[verse]\n밤하늘에 별이 빛나\n우리 함께 춤을 춰요\n\n[chorus]\n멈추지 마 이 노래\n끝까지 함께 가요"),
    Prompt("ko-ballad", "ko", "ballad,piano,sad,slow,male vocal,korean,a minor",
           "[verse]\n비 오는 거리에 서서\n너의 이름을 불러\n\n[chorus]\n보고 싶어 너를\n다시 만날 수 있을까"),
    Prompt("ko-folk", "ko", "folk,flute,acoustic guitar,bass,drums,uplifting,moderate,female vocal,korean,d major",
           "[verse]\n푸른 들판 바람 불어\n작은 꽃이 노래해요\n\n[chorus]\n웃으며 걸어가요\n내일은 더 밝을 거야"),
    Prompt("es-rock", "es", "rock,electric guitar,bass,drums,happy,fast,female vocal,spanish,g major",
           "[verse]\ncorremos por la calle gris\nel fuego vive en mi voz\n\n"
           "[chorus]\ncanta conmigo esta noche\nnadie nos puede parar"),
    Prompt("es-ballad", "es", "ballad,piano,strings,melancholic,slow,male vocal,spanish,e minor",
           "[verse]\nla luna duerme sobre el mar\ny tu recuerdo vuelve a mí\n\n"
           "[chorus]\nno me olvides amor\nte esperaré aquí"),
    Prompt("es-pop", "es", "pop,synthesizer,electric piano,bass,strings,drums,uplifting,moderate,male vocal,spanish,"
           "bb major",
           "[verse]\nel sol despierta la ciudad\nbailamos juntos sin pensar\n\n"
           "[chorus]\nven y canta hoy\nla vida es una canción"),
    Prompt("inst-ballad", None, "ballad,piano,strings,peaceful,slow,instrumental,f major"),
    Prompt("inst-electronic", None, "electronic,synthesizer,synth bass,drums,energetic,fast,instrumental,d major"),
    Prompt("inst-classical", None, "classical,violin,viola,cello,strings,dark,slow,instrumental,c minor"),
)


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
def select_prompts(languages: str | None = None, quick: bool = False) -> list[Prompt]:
    """The prompts of the chosen languages ("instrumental" for the instrumentals), in PROMPTS order; quick: the
    first prompt of each."""
    known = (*LANGUAGES, INSTRUMENTAL)
    if languages is None:
        chosen = set(known)
    else:
        chosen = {x.strip().lower() for x in languages.split(",") if x.strip()}
        unknown = sorted(chosen - set(known))
        if unknown or not chosen:
            raise HeartMuLaError(f"--languages takes a comma-separated subset of {','.join(known)}; got "
                                 f"{languages!r}" + (f" ({', '.join(unknown)} unknown)" if unknown else ""))
    prompts, seen = [], set()
    for prompt in PROMPTS:
        group = prompt.language or INSTRUMENTAL
        if group not in chosen or (quick and group in seen):
            continue
        seen.add(group)
        prompts.append(prompt)
    return prompts


def _tag_set(tags: str) -> frozenset[str]:
    return frozenset(t.strip() for t in tags.split(",") if t.strip())


def shuffled_partners(tags: list[str]) -> list[int | None]:
    """For song i (of tag strings `tags`), the index of the song whose tags serve as its shuffled-tag baseline:
    i + n//2 (mod n), a fixed derangement that never pairs a song with itself and spreads partners across languages
    and styles; moved on when the partner happens to have the same tags. None when no other song has other tags."""
    n = len(tags)
    partners: list[int | None] = []
    for i in range(n):
        partner = None
        for step in range(n - 1):
            j = (i + max(1, n // 2) + step) % n
            if j != i and _tag_set(tags[j]) != _tag_set(tags[i]):
                partner = j
                break
        partners.append(partner)
    return partners


# --- signal features -------------------------------------------------------------------------------------------
def _mono(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float64)
    return audio.mean(axis=0) if audio.ndim == 2 else audio


def _power_frames(mono: np.ndarray, rate: int, hop_seconds: float = 0.01) -> tuple[np.ndarray, float]:
    """Power spectra [frames, bins] with a ~40 ms Hann window and a 10 ms hop, and the frame rate."""
    hop = max(1, int(round(rate * hop_seconds)))
    n_fft = 1 << int(math.ceil(math.log2(max(16, rate * 0.04))))
    if len(mono) < n_fft:
        mono = np.pad(mono, (0, n_fft - len(mono)))
    frames = np.lib.stride_tricks.sliding_window_view(mono, n_fft)[::hop]
    spectra = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)) ** 2
    return spectra, rate / hop


def onset_strength(audio: np.ndarray, rate: int) -> tuple[np.ndarray, float]:
    """Spectral flux (rise of log-compressed magnitude, summed over bins) at 100 frames/s, with its local mean
    (0.5 s) removed so slow loudness swells do not count as onsets; returns (envelope, frames per second)."""
    power, frame_rate = _power_frames(_mono(audio), rate)
    magnitude = np.log1p(1000.0 * np.sqrt(power) / (np.sqrt(power).max() + 1e-12))
    flux = np.maximum(np.diff(magnitude, axis=0), 0.0).sum(axis=1)
    if len(flux) == 0:
        return flux, frame_rate
    width = max(1, min(int(frame_rate * 0.5), len(flux)))
    local = np.convolve(flux, np.ones(width) / width, mode="same")
    return np.maximum(flux - local, 0.0), frame_rate


def estimate_tempo(audio: np.ndarray, rate: int, low_bpm: float = 50.0, high_bpm: float = 220.0) -> float:
    """Beats per minute from the autocorrelation of the onset envelope. Autocorrelation peaks at the beat period
    and its multiples, so lags are weighted by a broad prior (log-normal around 120 BPM, one octave wide, as beat
    trackers commonly use) to pick the beat rather than the bar or the eighth note; the peak lag is refined by a
    parabola through its neighbours. NaN for audio without onsets."""
    envelope, frame_rate = onset_strength(audio, rate)
    n = len(envelope)
    if n < 4 or not np.any(envelope):
        return float("nan")
    envelope = envelope - envelope.mean()
    spectrum = np.fft.rfft(envelope, 2 * n)
    acf = np.fft.irfft(spectrum * np.conj(spectrum))[:n]
    acf /= acf[0] + 1e-12
    lags = np.arange(n, dtype=np.float64)
    lo, hi = int(math.floor(60.0 * frame_rate / high_bpm)), int(math.ceil(60.0 * frame_rate / low_bpm))
    hi = min(hi, n - 2)
    if hi <= lo + 1:
        return float("nan")
    candidates = lags[lo:hi + 1]
    prior = np.exp(-0.5 * np.log2(60.0 * frame_rate / candidates / 120.0) ** 2)
    best = lo + int(np.argmax(np.maximum(acf[lo:hi + 1], 0.0) * prior))
    a, b, c = acf[best - 1], acf[best], acf[best + 1]
    shift = 0.5 * (a - c) / (a - 2 * b + c) if (a - 2 * b + c) < 0 else 0.0
    return float(60.0 * frame_rate / (best + float(np.clip(shift, -0.5, 0.5))))


def spectral_flatness(audio: np.ndarray, rate: int, top_db: float = 40.0) -> float:
    """Mean spectral flatness (geometric / arithmetic mean of the power spectrum, 100 Hz - 8 kHz) over the frames
    within `top_db` of the loudest one; 0 = pure tones, 1 = white noise. Why this is the instrument feature: drum
    hits (snare, hi-hat, cymbals) are broadband noise, while piano, strings, organ and voice are sums of harmonic
    partials with empty bands between them, so songs with drums sit higher. It is a coarse, model-free check that
    a 'drums' tag changes the sound in the right direction; it cannot tell a piano from a guitar. NaN for silence."""
    power, _ = _power_frames(_mono(audio), rate)
    freqs = np.fft.rfftfreq(2 * (power.shape[1] - 1), 1.0 / rate)
    band = power[:, (freqs >= 100.0) & (freqs <= 8000.0)] + 1e-12
    energy = band.sum(axis=1)
    if energy.max() <= 1e-12 * band.shape[1] * 10:
        return float("nan")
    loud = energy >= energy.max() * 10 ** (-top_db / 10)
    flatness = np.exp(np.log(band[loud]).mean(axis=1)) / band[loud].mean(axis=1)
    return float(flatness.mean())


def level_stats(audio: np.ndarray) -> dict:
    """RMS and peak in dBFS and the fraction of clipped samples (|x| >= 0.999): silent or clipped output shows here."""
    audio = np.asarray(audio, dtype=np.float64)
    rms = float(np.sqrt(np.mean(audio**2))) if audio.size else 0.0
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    return {"rms_dbfs": round(20 * math.log10(rms), 2) if rms > 0 else None,
            "peak_dbfs": round(20 * math.log10(peak), 2) if peak > 0 else None,
            "clipped_fraction": round(float(np.mean(np.abs(audio) >= 0.999)), 6) if audio.size else 0.0}


# --- statistics --------------------------------------------------------------------------------------------------
def pairwise_win_rate(high: list[float], low: list[float]) -> float | None:
    """P(a value of `high` > a value of `low`) over all pairs, ties counted half (the ROC AUC / common-language
    effect size); 0.5 = no separation. None when a group is empty."""
    high = [x for x in high if x is not None and math.isfinite(x)]
    low = [x for x in low if x is not None and math.isfinite(x)]
    if not high or not low:
        return None
    wins = sum((h > lo) + 0.5 * (h == lo) for h in high for lo in low)
    return wins / (len(high) * len(low))


def paired_summary(own: list[float], other: list[float]) -> dict:
    """Own vs baseline per song: means, mean difference, paired effect size (Cohen's d_z = mean / sd of the
    differences) and the fraction of songs where own > baseline."""
    pairs = [(a, b) for a, b in zip(own, other) if a is not None and b is not None]
    if not pairs:
        return {"songs": 0}
    a, b = np.array(pairs).T
    diff = a - b
    sd = float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
    return {"songs": len(diff), "own_mean": float(a.mean()), "shuffled_mean": float(b.mean()),
            "mean_difference": float(diff.mean()), "cohens_dz": float(diff.mean() / sd) if sd > 0 else None,
            "own_above_shuffled": float(np.mean(diff > 0))}


def group_summary(values: dict[str, list[float]], high: str, low: str) -> dict:
    """Mean per group and the win rate of group `high` over group `low`."""
    clean = {k: [x for x in v if x is not None and math.isfinite(x)] for k, v in values.items()}
    summary = {"groups": {k: {"songs": len(v), "mean": float(np.mean(v)) if v else None} for k, v in clean.items()}}
    h, lo = clean.get(high, []), clean.get(low, [])
    summary["difference"] = float(np.mean(h) - np.mean(lo)) if h and lo else None
    summary["win_rate"] = pairwise_win_rate(h, lo)
    return summary


def finite_or_none(value):
    """JSON-safe copy: NaN and infinities become null (strict JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if isinstance(value, np.generic):
        return finite_or_none(value.item())
    return value


# --- the output folder ---------------------------------------------------------------------------------------------
def _check_out(out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise HeartMuLaError(f"--out {out} is a file; give a folder for the report")
        if any(out.iterdir()) and not (out / "report.json").is_file():
            raise HeartMuLaError(f"--out {out} is a non-empty folder that holds no report; give a new or empty "
                                 "folder (a previous report folder is replaced when the new report is complete)")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished temporary folder onto `out`, replacing an old report only now."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- the run -------------------------------------------------------------------------------------------------------
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
    from heartmula.eval.lyrics import RECIPE, EditCounts

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

    from heartmula.audio import fit_peak, save_audio
    from heartmula.codec.pretrained import load_codec
    from heartmula.lm.generation import SamplingParams, SongRequest, frames_for_duration
    from heartmula.song_models import load_lm

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

    from heartmula.audio import load_audio
    from heartmula.clap import audio_embedding, load_clap, tags_embedding
    from heartmula.eval.lyrics import score_pair
    from heartmula.transcribe.pipeline import TranscribeConfig, Transcriber
    from heartmula.transcribe.result import to_txt

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
    from heartmula.audio import load_audio
    from heartmula.transcribe.pipeline import voiced_seconds

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


def heard_language(probabilities: dict[str, float]) -> str | None:
    """Of the five prompt languages, the one Whisper finds likeliest for a recording's singing (None: no voice)."""
    known = {language: probabilities.get(language, 0.0) for language in LANGUAGES}
    return max(known, key=known.get) if probabilities else None


def sung_language_summary(items: list[dict]) -> dict:
    """How often the language heard in the singing is the one the lyrics are in, over the vocal items."""
    vocal = [s for s in items if s.get("language") in LANGUAGES]
    correct = [s for s in vocal if s.get("heard_language") == s["language"]]
    by_language = {language: {"songs": sum(s["language"] == language for s in vocal),
                              "correct": sum(s["language"] == language for s in correct)}
                   for language in LANGUAGES if any(s["language"] == language for s in vocal)}
    return {"songs": len(vocal), "correct": len(correct), "accuracy": len(correct) / len(vocal) if vocal else None,
            "chance": 1 / len(LANGUAGES), "by_language": by_language}


def corpus_reference(rows: list[dict], count: int, clap, seconds: float = 30.0, progress: bool = False,
                     codec=None, transcriber=None) -> dict:
    """The tag-adherence measures on real corpus songs (the first `count` held-out items by id, their first
    `seconds`): what the same features and CLAP give where the tags are known to be true, so the generated songs'
    numbers can be read against it (a feature that cannot separate the corpus' own slow and fast songs says
    little about a model). With a `codec` that can encode, the same songs after its round trip too
    ("codec_round_trip"): what an LM that predicted the codec's tokens of a real song perfectly would score. With a
    `transcriber`, the language heard in each vocal song's singing ("sung_language")."""
    from tqdm import tqdm

    from heartmula.audio import load_audio
    from heartmula.clap import audio_embedding, tags_embedding

    held_out = sorted((r for r in rows if r.get("split") in ("val", "test")), key=lambda r: r["id"])[:count]
    partners = shuffled_partners([r["tags"] for r in held_out])
    round_trip = codec is not None and codec.can_encode

    def measure(row, partner, audio, rate, vectors):
        tags = _tag_set(row["tags"])
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
    from heartmula.clap import tags_embedding

    groups: dict[frozenset, tuple[str, list[int]]] = {}
    for i, text in enumerate(tags):
        groups.setdefault(_tag_set(text), (text, []))[1].append(i)
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


def prompt_means(songs: list[dict]) -> list[dict]:
    """One record per prompt, its songs (one per seed) averaged: CLAP similarities and flatness by their mean, the
    tempo estimate by its median (octave errors make means of BPM misleading). The tag-adherence statistics count
    prompts, not songs: the seeds of one prompt share its tags, so they are not independent samples of adherence."""
    groups: dict[str, list[dict]] = {}
    for song in songs:
        groups.setdefault(song.get("prompt", song["id"]), []).append(song)

    def mean(values, average=np.mean):
        values = [v for v in values if v is not None and math.isfinite(v)]
        return float(average(values)) if values else None

    return [{"id": prompt, "songs": len(group), "tempo_tag": group[0]["tempo_tag"], "drums": group[0]["drums"],
             "clap_own": mean(s.get("clap_own") for s in group),
             "clap_shuffled": mean(s.get("clap_shuffled") for s in group),
             "tempo_bpm": mean((s.get("tempo_bpm") for s in group), np.median),
             "spectral_flatness": mean(s.get("spectral_flatness") for s in group)}
            for prompt, group in groups.items()]


def tag_summaries(songs: list[dict]) -> dict:
    """CLAP own vs shuffled, tempo by tempo tag, flatness by drums: the tag-adherence numbers of a set of songs."""
    return {
        "clap": paired_summary([s.get("clap_own") for s in songs], [s.get("clap_shuffled") for s in songs]),
        "tempo": group_summary({t: [s["tempo_bpm"] for s in songs if s["tempo_tag"] == t]
                                for t in ("slow", "moderate", "fast")}, "fast", "slow"),
        "drums": group_summary({"drums": [s["spectral_flatness"] for s in songs if s["drums"]],
                                "no drums": [s["spectral_flatness"] for s in songs if not s["drums"]]},
                               "drums", "no drums"),
    }


def _codec_section(config: ReportConfig, codec, tmp: Path) -> dict:
    from tqdm import tqdm

    from heartmula.eval.codec_roundtrip import roundtrip

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


def build_report(config: ReportConfig) -> dict:
    """Run everything and publish the report folder at config.out; returns the report (as in report.json)."""
    import torch

    from heartmula.song_models import resolve_codec, resolve_lm

    # Every check that can fail on user input runs before the minutes of generation.
    prompts = select_prompts(config.languages, config.quick)
    if not config.seconds > 0:
        raise HeartMuLaError(f"--duration must be > 0 seconds, got {config.seconds}")
    if config.threads < 1:
        raise HeartMuLaError(f"--threads must be >= 1, got {config.threads}")
    if config.seeds < 1:
        raise HeartMuLaError(f"--seeds must be >= 1, got {config.seeds}")
    out = Path(config.out)
    _check_out(out)
    for path in config.codec_audio:
        if not Path(path).is_file():
            raise HeartMuLaError(f"--codec-audio file {path} does not exist")
    ceiling, ceiling_source = None, None
    if config.ceiling is not None:
        ceiling, ceiling_source = _read_ceiling(config.ceiling), str(config.ceiling)
    corpus_rows = None
    if config.corpus is not None:
        from heartmula.manifest import read_manifest

        corpus_rows = read_manifest(config.corpus)
    model_path = resolve_lm(config.model, config.version)
    codec_path = resolve_codec(config.codec, model_path)

    torch.set_num_threads(config.threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.partial-*"):  # left by a killed run (not by one still running)
        pid = stale.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and _process_alive(int(pid))):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    tmp.mkdir()
    try:
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        songs, codec, parameters, sampling = _generate(config, prompts, tmp, model_path, codec_path)
        without_lyrics = [s for s in songs if s["id"].endswith(NO_LYRICS_SUFFIX)]
        songs = [s for s in songs if not s["id"].endswith(NO_LYRICS_SUFFIX)]
        vectors = _measure(config, prompts, songs, tmp)
        if corpus_rows is not None and ceiling is None:
            from heartmula.eval.intelligibility import measure_intelligibility

            wanted = {p.language for p in prompts if p.language}
            rows = [r for r in corpus_rows if r.get("language") in wanted]
            ceiling = measure_intelligibility(rows, config.ceiling_items, config.transcriber,
                                              progress=config.progress)
            (tmp / "ceiling.json").write_text(json.dumps(ceiling, ensure_ascii=False, indent=1), encoding="utf-8")
            ceiling_source = f"computed now on {config.corpus} ({config.ceiling_items} sung stems per language; " \
                             "saved as ceiling.json, reusable with --ceiling)"
        # CTranslate2 may reset the OpenMP thread count torch shares; the codec timings below must use --threads.
        torch.set_num_threads(config.threads)
        threads, lm_int8 = parameters.pop("threads"), parameters.pop("lm_int8")
        from heartmula.clap import load_clap

        clap = load_clap(config.clap_model)
        text_search = text_search_summary(vectors, [s["tags"] for s in songs], clap)
        reference = None
        if corpus_rows is not None and config.reference_items > 0:
            from heartmula.transcribe.pipeline import TranscribeConfig, Transcriber

            transcriber = Transcriber(TranscribeConfig(model=config.transcriber, threads=config.threads))
            torch.set_num_threads(config.threads)
            reference = corpus_reference(corpus_rows, config.reference_items, clap, progress=config.progress,
                                         codec=codec, transcriber=transcriber)
        lyrics = _lyrics_section(songs, ceiling)
        lyrics["ceiling_source"] = ceiling_source
        lyrics["sung_language"] = sung_language_summary(songs)
        lyrics["singing"] = singing_contrast(songs, without_lyrics, tmp) if config.lyrics_contrast else None
        audio_seconds = sum(s["seconds"] for s in songs)
        lm_seconds, decode_seconds = sum(s["lm_seconds"] for s in songs), sum(s["decode_seconds"] for s in songs)
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
            "speed": {"threads": threads, "lm_int8": lm_int8, "audio_seconds": audio_seconds,
                      "lm_seconds": lm_seconds, "decode_seconds": decode_seconds,
                      "lm_rtf": lm_seconds / audio_seconds if audio_seconds else None,
                      "decode_rtf": decode_seconds / audio_seconds if audio_seconds else None,
                      "total_rtf": (lm_seconds + decode_seconds) / audio_seconds if audio_seconds else None},
        }
        report = finite_or_none(report)
        write_plots(report, tmp / "plots")
        (tmp / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
        (tmp / "report.md").write_text(render_markdown(report), encoding="utf-8")  # last: its presence = complete
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


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

    def clap_cell(c, unit):
        if not c or not c.get("songs"):
            return "n/a"
        return (f"{_f(c['own_mean'])} vs {_f(c['shuffled_mean'])} (diff {_f(c['mean_difference'])}, d_z "
                f"{_f(c['cohens_dz'], 2)}, own higher for {100 * c['own_above_shuffled']:.0f}% of {c['songs']} "
                f"{unit})")

    def search_cell(c):
        if not c or not c.get("prompts"):
            return "n/a"
        return (f"win rate {_f(c['mean_win_rate'], 2)} (d {_f(c['cohens_d'], 2)}, above 0.5 for "
                f"{100 * c['above_chance']:.0f}% of {c['prompts']} prompts); own song first for "
                f"{100 * c['top1']:.0f}% (chance {100 * c['top1_chance']:.0f}%)")

    def group_cell(g, digits, unit=""):
        if not g:
            return "n/a"
        means = ", ".join(f"{k} {_f(v['mean'], digits)} (n={v['songs']})" for k, v in g["groups"].items()
                          if v["songs"])
        return f"{means}; difference {_f(g['difference'], digits, unit)}, win rate {_f(g['win_rate'], 2)}"

    ref = reference or {}
    coded = ref.get("codec_round_trip") or {}
    lines += [f"| HeartCLAP similarity, own vs shuffled tags | {clap_cell(clap, 'prompts')} | "
              f"{clap_cell(ref.get('clap'), 'songs')} | {clap_cell(coded.get('clap'), 'songs')} |",
              f"| HeartCLAP text -> song search, own songs vs the others | {search_cell(tags.get('text_search'))} | "
              f"{search_cell(ref.get('text_search'))} | {search_cell(coded.get('text_search'))} |",
              f"| estimated tempo (BPM) by tempo tag | {group_cell(tags['tempo'], 1, ' BPM')} | "
              f"{group_cell(ref.get('tempo'), 1, ' BPM')} | {group_cell(coded.get('tempo'), 1, ' BPM')} |",
              f"| spectral flatness, drums vs no drums | {group_cell(tags['drums'], 4)} | "
              f"{group_cell(ref.get('drums'), 4)} | {group_cell(coded.get('drums'), 4)} |", ""]
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
    return "\n".join(lines)


__all__ = ["PROMPTS", "Prompt", "ReportConfig", "build_report", "estimate_tempo", "select_prompts",
           "shuffled_partners", "spectral_flatness"]
