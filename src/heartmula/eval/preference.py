"""Rewards that preference tuning (`heartmula train prefer`) optimises, judges it does not, and the held-out
evaluation that compares a tuned LM with its base.

Rewards (each a number per song; higher is better):
    tag      HeartCLAP cosine between the song and its own tag prompt (`heartmula.clap.tag_similarity`)
    tempo    minus the distance, in octaves, of the onset-autocorrelation tempo (`estimate_tempo`) from the tempo
             tag's range (slow < 80 BPM, moderate 80-115, fast >= 115, as the corpus tags them); 0 inside it
    drums    spectral flatness (noise-likeness) for prompts with drums, its negative for prompts without
    voice    with lyrics: the share of the song in which the transcriber's VAD hears a voice
Judges (not rewards, so a policy cannot learn their quirks):
    fourier tempo   the strongest periodicity of the onset envelope by its Fourier transform, no tempo prior
    onset rate      onsets per second picked from the onset envelope (fast music has more of them)
"""

from __future__ import annotations

import math
import time

import numpy as np

from heartmula.clap import audio_embedding, tag_similarity, tags_embedding
from heartmula.eval.report_prompts import Prompt
from heartmula.eval.report_statistics import pairwise_win_rate
from heartmula.eval.signal_features import estimate_tempo, onset_strength, spectral_flatness
from heartmula.lm.generation import SamplingParams
from heartmula.transcribe.pipeline import voiced_seconds

TEMPO_RANGES = {"slow": (40.0, 80.0), "moderate": (80.0, 115.0), "fast": (115.0, 220.0)}
REWARDS = ("tag", "tempo", "drums", "voice")


def tempo_reward(bpm: float, tempo_tag: str | None) -> float | None:
    """0 inside the tag's range, else minus the distance in octaves to it; -2 when no tempo is heard."""
    if tempo_tag is None:
        return None
    if not math.isfinite(bpm) or bpm <= 0:
        return -2.0
    low, high = TEMPO_RANGES[tempo_tag]
    return -max(0.0, math.log2(low / bpm), math.log2(bpm / high))


def voiced_share(audio: np.ndarray, rate: int) -> float:
    return voiced_seconds(audio, rate) / max(audio.shape[-1] / rate, 1e-9)


def song_rewards(audio: np.ndarray, rate: int, prompt: Prompt, clap) -> dict[str, float | None]:
    """The four rewards of one song ([channels, samples]); None where a reward does not apply to the prompt."""
    flatness = spectral_flatness(audio, rate)
    return {
        "tag": tag_similarity(audio, prompt.tags, rate, clap),
        "tempo": tempo_reward(estimate_tempo(audio, rate), prompt.tempo),
        "drums": None if not math.isfinite(flatness) else (flatness if prompt.drums else -flatness),
        "voice": voiced_share(audio, rate) if prompt.lyrics.strip() else None,
    }


def fourier_tempo(audio: np.ndarray, rate: int, low_bpm: float = 50.0, high_bpm: float = 220.0) -> float:
    """Judge: BPM of the largest Fourier magnitude of the onset envelope between low and high (no prior)."""
    envelope, frame_rate = onset_strength(audio, rate)
    if len(envelope) < 8 or not np.any(envelope):
        return float("nan")
    envelope = (envelope - envelope.mean()) * np.hanning(len(envelope))
    size = 1 << int(math.ceil(math.log2(len(envelope) * 8)))
    magnitude = np.abs(np.fft.rfft(envelope, size))
    bpm = np.fft.rfftfreq(size, 1.0 / frame_rate) * 60.0
    band = (bpm >= low_bpm) & (bpm <= high_bpm)
    return float(bpm[band][np.argmax(magnitude[band])])


def onset_rate(audio: np.ndarray, rate: int, min_gap: float = 0.07) -> float:
    """Judge: onsets per second: envelope peaks above the envelope's mean + one standard deviation, at least
    `min_gap` seconds apart."""
    envelope, frame_rate = onset_strength(audio, rate)
    if len(envelope) < 3:
        return 0.0
    threshold = envelope.mean() + envelope.std()
    peaks = np.flatnonzero((envelope[1:-1] > threshold) & (envelope[1:-1] >= envelope[:-2])
                           & (envelope[1:-1] > envelope[2:])) + 1
    kept, last = 0, -1e9
    for peak in peaks:
        if peak - last >= min_gap * frame_rate:
            kept, last = kept + 1, peak
    return kept / (len(envelope) / frame_rate)


def song_measures(audio: np.ndarray, rate: int, prompt: Prompt, partner: Prompt, clap) -> dict:
    """What the held-out evaluation reads from one song: CLAP own vs a partner prompt's tags, both tempi, the onset
    rate, flatness and the voiced share."""
    vector = audio_embedding(audio, rate, clap)
    return {
        "prompt": prompt.id, "tempo_tag": prompt.tempo, "drums": prompt.drums, "lyrics": bool(prompt.lyrics.strip()),
        "clap_own": float(vector @ tags_embedding(prompt.tags, clap)),
        "clap_other": float(vector @ tags_embedding(partner.tags, clap)),
        "tempo_bpm": estimate_tempo(audio, rate), "fourier_bpm": fourier_tempo(audio, rate),
        "onset_rate": onset_rate(audio, rate), "flatness": spectral_flatness(audio, rate),
        "voiced_share": voiced_share(audio, rate),
    }


def summarise(songs: list[dict]) -> dict:
    """Win rates: own tags over the partner's (per song), fast over slow (estimated tempo; judges: Fourier tempo,
    onset rate), drums over none (flatness); voiced share with and without lyrics."""
    def by(key, field, value):
        return [s[field] for s in songs if s[key] == value]

    def mean(values):
        values = [v for v in values if v is not None and math.isfinite(v)]
        return float(np.mean(values)) if values else None

    return {
        "songs": len(songs),
        "tag_win_rate": mean([float(s["clap_own"] > s["clap_other"]) for s in songs]),
        "clap_own_mean": mean([s["clap_own"] for s in songs]),
        "tempo_win_rate": pairwise_win_rate(by("tempo_tag", "tempo_bpm", "fast"), by("tempo_tag", "tempo_bpm", "slow")),
        "judge_fourier_tempo_win_rate": pairwise_win_rate(by("tempo_tag", "fourier_bpm", "fast"),
                                                          by("tempo_tag", "fourier_bpm", "slow")),
        "judge_onset_rate_win_rate": pairwise_win_rate(by("tempo_tag", "onset_rate", "fast"),
                                                       by("tempo_tag", "onset_rate", "slow")),
        "drums_win_rate": pairwise_win_rate(by("drums", "flatness", True), by("drums", "flatness", False)),
        "voiced_share_with_lyrics": mean(by("lyrics", "voiced_share", True)),
        "voiced_share_instrumental": mean(by("lyrics", "voiced_share", False)),
    }


def evaluate_pipeline(pipe, prompts: list[Prompt], seeds: list[int], seconds: float, clap,
                      cfg_scale: float = 1.5) -> dict:
    """Generate every prompt with every seed (one batch per prompt), decode, measure; returns the summary, the
    songs' measures and the LM's real-time factor."""
    partners = [prompts[(i + len(prompts) // 2) % len(prompts)] for i in range(len(prompts))]
    songs, lm_seconds, audio_seconds = [], 0.0, 0.0
    for prompt, partner in zip(prompts, partners):
        requests = pipe.requests([prompt.lyrics] * len(seeds), prompt.tags, seeds)
        started = time.perf_counter()
        codes = pipe.generate_codes(requests, SamplingParams(cfg_scale=cfg_scale), seconds, seconds)
        lm_seconds += time.perf_counter() - started
        for song_codes, seed in zip(codes, seeds):
            audio, rate = pipe.decode(song_codes, seed)
            audio_seconds += audio.shape[-1] / rate
            songs.append({**song_measures(audio, rate, prompt, partner, clap), "seed": seed})
    return {"summary": summarise(songs), "lm_rtf": lm_seconds / max(audio_seconds, 1e-9), "songs": songs}
