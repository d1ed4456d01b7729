"""Whisper backends: CTranslate2 (faster-whisper, the fast default) and Hugging Face transformers (official
HeartTranscriptor-oss folders, converted models, fine-tuning).

Both take one chunk of 16 kHz mono audio of at most 30 s and return segments with word times relative to the
chunk; long-form chunking, vocal isolation and guards live in the pipeline so that both backends share them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from heartmula.errors import HeartMuLaError, check_at_least
from heartmula.extras import require
from heartmula.transcribe.models import ModelLocation
from heartmula.transcribe.result import Segment, Word

SAMPLE_RATE = 16000
CHUNK_SECONDS = 30.0


@dataclass(frozen=True)
class DecodingOptions:
    """Whisper decoding with its hallucination guards: a window whose text compresses too well (repetition) or
    whose mean log-probability is too low is decoded again at the next temperature; a window with a high
    no-speech probability and a low log-probability is dropped as silence."""

    beam_size: int = 5
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float | None = 2.4
    log_prob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    max_new_tokens: int | None = None
    word_timestamps: bool = True
    # The fallback temperatures sample; seeded, a run that transcribes the same files in the same order gives the
    # same text (unseeded, an unclear song read differently from run to run). None: not seeded.
    seed: int | None = 0
    # Text the decoder is conditioned on as preceding context (Whisper's initial prompt), e.g. the lyrics expected
    # in the chunk: it biases spelling and vocabulary towards them. ctranslate2 only.
    prompt: str | None = None

    def validate(self) -> DecodingOptions:
        check_at_least("beam size", self.beam_size)
        if not self.temperatures or any(t < 0 for t in self.temperatures):
            raise HeartMuLaError(f"temperatures must be a non-empty list of values >= 0, got {self.temperatures}")
        return self


# Upstream HeartTranscriptor's pipeline settings (beams 2, fallback 0-0.4, stricter compression and no-speech).
UPSTREAM_DECODING = DecodingOptions(
    beam_size=2, temperatures=(0.0, 0.1, 0.2, 0.4), compression_ratio_threshold=1.8, log_prob_threshold=-1.0,
    no_speech_threshold=0.4, max_new_tokens=256,
)
DECODING_PRESETS = {"fast": DecodingOptions(), "upstream": UPSTREAM_DECODING}


class CTranslate2Backend:
    """faster-whisper on CTranslate2: int8 by default, the fastest CPU choice."""

    name = "ctranslate2"

    def __init__(self, location: ModelLocation, compute_type: str = "int8", device: str = "cpu", threads: int = 0):
        require("transcribe", "faster_whisper")
        from faster_whisper import WhisperModel

        try:
            self.model = WhisperModel(str(location.path), device=device, compute_type=compute_type,
                                      cpu_threads=threads)
        except (RuntimeError, ValueError) as exc:
            raise HeartMuLaError(f"cannot load the CTranslate2 model in {location.path}: {exc}") from None
        self.multilingual = self.model.model.is_multilingual
        self.compute_type = compute_type
        self.seeded = False

    def supported_languages(self) -> list[str]:
        return list(self.model.supported_languages)

    def language_probabilities(self, audio: np.ndarray) -> dict[str, float]:
        _, _, probabilities = self.model.detect_language(audio=audio)
        return {language: float(p) for language, p in probabilities}

    def transcribe_chunk(self, audio: np.ndarray, language: str | None, options: DecodingOptions) -> list[Segment]:
        if options.seed is not None and not self.seeded:
            # CTranslate2 draws from a per-thread generator made from the global seed at its first draw, so
            # seeding counts once, before any sampling: runs, not single calls, repeat.
            import ctranslate2

            ctranslate2.set_random_seed(options.seed)
            self.seeded = True
        segments, _ = self.model.transcribe(
            audio, language=language, task="transcribe", beam_size=options.beam_size,
            temperature=list(options.temperatures),
            compression_ratio_threshold=options.compression_ratio_threshold,
            log_prob_threshold=options.log_prob_threshold, no_speech_threshold=options.no_speech_threshold,
            # Each chunk is one song phrase group; feeding the previous text back spreads hallucinations.
            condition_on_previous_text=False, word_timestamps=options.word_timestamps, vad_filter=False,
            max_new_tokens=options.max_new_tokens, initial_prompt=options.prompt,
        )
        out = []
        for s in segments:
            words = [Word(float(w.start), float(w.end), w.word.strip(), float(w.probability)) for w in s.words or []]
            out.append(Segment(float(s.start), float(s.end), s.text.strip(), words, float(s.avg_logprob),
                               float(s.no_speech_prob), float(s.compression_ratio)))
        return out

    def force_align(self, audio: np.ndarray, language: str | None, pieces: list[str]) -> list[tuple[float, float]]:
        """(start, end) in seconds of each text piece in one chunk of at most 30 s, by dynamic time warping over
        the cross-attention of Whisper's alignment heads while the decoder reads the given text (no decoding).
        Pieces are joined as written: a piece carries its own leading space or separator."""
        from faster_whisper.tokenizer import Tokenizer

        tokenizer = Tokenizer(self.model.hf_tokenizer, self.multilingual, task="transcribe",
                              language=language if self.multilingual else None)
        token_pieces = [tokenizer.encode(piece) for piece in pieces]
        tokens = [t for piece in token_pieces for t in piece]
        if not tokens:
            return [(0.0, 0.0)] * len(pieces)
        features = self.model.feature_extractor(audio)
        frames = min(features.shape[-1], self.model.feature_extractor.nb_max_frames)
        features = np.pad(features[:, :frames], ((0, 0), (0, self.model.feature_extractor.nb_max_frames - frames)))
        encoded = self.model.encode(features)
        result = self.model.model.align(encoded, tokenizer.sot_sequence, [tokens], frames)[0]
        text_index = np.array([pair[0] for pair in result.alignments])
        time_index = np.array([pair[1] for pair in result.alignments])
        jumps = np.pad(np.diff(text_index), (1, 0), constant_values=1).astype(bool)
        token_times = np.append(time_index[jumps] / self.model.tokens_per_second, frames / 100.0)
        bounds = np.cumsum([0] + [len(piece) for piece in token_pieces])
        return [(float(token_times[min(a, len(token_times) - 1)]), float(token_times[min(b, len(token_times) - 1)]))
                for a, b in zip(bounds[:-1], bounds[1:])]


class TransformersBackend:
    """transformers' WhisperForConditionalGeneration: any Hugging Face Whisper folder, e.g. HeartTranscriptor-oss."""

    name = "transformers"

    def __init__(self, location: ModelLocation, dtype: str = "float32", device: str = "cpu", threads: int = 0):
        import torch

        require("transcribe", "transformers")
        from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizerFast
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()  # its deprecation chatter would bury the lyrics on stderr
        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = device
        try:
            self.model = WhisperForConditionalGeneration.from_pretrained(
                str(location.path), dtype=getattr(torch, dtype)).to(device).eval()
            self.features = WhisperFeatureExtractor.from_pretrained(str(location.path))
            self.tokenizer = WhisperTokenizerFast.from_pretrained(str(location.path))
        except (OSError, ValueError) as exc:
            raise HeartMuLaError(f"cannot load the Whisper folder {location.path}: {exc}") from None
        generation = self.model.generation_config
        if not getattr(generation, "no_timestamps_token_id", None):
            raise HeartMuLaError(
                f"{location.path}/generation_config.json lacks Whisper's token ids (no_timestamps_token_id, "
                "lang_to_id, ...): use the folder as released; for CTranslate2 weights use "
                "`heartmula transcribe --export-transformers DIR`"
            )
        self.multilingual = bool(getattr(generation, "is_multilingual", False))
        self.has_alignment_heads = bool(getattr(generation, "alignment_heads", None))
        self.compute_type = dtype

    def _inputs(self, audio: np.ndarray):
        inputs = self.features(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=True)
        dtype = next(self.model.parameters()).dtype
        return inputs.input_features.to(self.device, dtype), inputs.attention_mask.to(self.device)

    def supported_languages(self) -> list[str]:
        if not self.multilingual:
            return ["en"]
        return [token.strip("<|>") for token in self.model.generation_config.lang_to_id]

    def language_probabilities(self, audio: np.ndarray) -> dict[str, float]:
        features, _ = self._inputs(audio)
        with self.torch.no_grad():
            encoder_out = self.model.model.encoder(features)
            start = self.torch.tensor([[self.model.generation_config.decoder_start_token_id]], device=self.device)
            logits = self.model(encoder_outputs=encoder_out, decoder_input_ids=start).logits[0, -1]
        lang_to_id = self.model.generation_config.lang_to_id
        ids = self.torch.tensor(list(lang_to_id.values()), device=self.device)
        probs = logits[ids].float().softmax(-1).tolist()
        return {token.strip("<|>"): p for token, p in zip(lang_to_id, probs)}

    def transcribe_chunk(self, audio: np.ndarray, language: str | None, options: DecodingOptions) -> list[Segment]:
        if options.prompt:
            raise HeartMuLaError("prompting with text runs on the ctranslate2 backend only")
        features, mask = self._inputs(audio)
        word_times = options.word_timestamps and self.has_alignment_heads
        kwargs = dict(
            attention_mask=mask, task="transcribe" if self.multilingual else None,
            language=language if self.multilingual else None, return_timestamps=True, return_segments=True,
            return_token_timestamps=word_times, num_beams=options.beam_size,
            max_new_tokens=options.max_new_tokens or 224,
        )
        if len(options.temperatures) > 1:  # temperature fallback with its thresholds
            kwargs.update(temperature=options.temperatures,
                          compression_ratio_threshold=options.compression_ratio_threshold,
                          logprob_threshold=options.log_prob_threshold,
                          no_speech_threshold=options.no_speech_threshold)
        with self.torch.no_grad(), self.torch.random.fork_rng():
            if options.seed is not None:
                self.torch.manual_seed(options.seed)
            generated = self.model.generate(features, **kwargs)
        out = []
        eot = self.model.generation_config.eos_token_id
        for raw in generated["segments"][0]:
            tokens = [int(t) for t in raw["tokens"] if int(t) < eot]
            text = self.tokenizer.decode(tokens).strip()
            if not text:
                continue
            start, end = float(raw["start"]), float(raw["end"])
            words = self._words(raw, start, end) if word_times else []
            out.append(Segment(start, end, text, words))
        return out

    def _words(self, raw: dict, start: float, end: float) -> list[Word]:
        """Group sub-word tokens into words (a word starts at a token that begins with a space) and time each word
        from its first token's alignment time to the next word's."""
        eot = self.model.generation_config.eos_token_id
        pieces = [(int(t), float(ts)) for t, ts in zip(raw["tokens"], raw["token_timestamps"]) if int(t) < eot]
        words: list[tuple[float, str]] = []
        for token, time in pieces:
            piece = self.tokenizer.decode([token])
            if not words or piece.startswith(" "):
                words.append((time, piece))
            else:
                words[-1] = (words[-1][0], words[-1][1] + piece)
        out = []
        for i, (time, text) in enumerate(words):
            next_time = words[i + 1][0] if i + 1 < len(words) else end
            w_start = min(max(time, start), end)
            out.append(Word(w_start, max(min(next_time, end), w_start), text.strip()))
        return [w for w in out if w.text]


def load_backend(location: ModelLocation, backend: str | None = None, compute_type: str | None = None,
                 device: str = "cpu", threads: int = 0):
    """The backend for a model: its natural one unless `backend` asks for another (a transformers folder cannot run
    on CTranslate2 without conversion and vice versa)."""
    backend = backend or location.backend
    if backend != location.backend:
        hint = ("convert it with `heartmula transcribe --model M --export-transformers OUT_DIR`"
                if backend == "transformers" else "use --backend transformers")
        raise HeartMuLaError(f"{location.name} is a {location.backend} model, not {backend}: {hint}")
    if backend == "ctranslate2":
        return CTranslate2Backend(location, compute_type or "int8", device, threads)
    if backend == "transformers":
        return TransformersBackend(location, compute_type or "float32", device, threads)
    raise HeartMuLaError(f"unknown backend {backend!r}: use ctranslate2 or transformers")


def with_overrides(options: DecodingOptions, **overrides) -> DecodingOptions:
    return replace(options, **{k: v for k, v in overrides.items() if v is not None}).validate()
