"""`HeartMuLaPipeline`: lyrics + tags -> a song, in one call. The one place that decides which models, device,
dtype, int8 and native kernels a song uses; the CLI, the server and the stream are built on it.

    from heartmula import HeartMuLaPipeline

    pipe = HeartMuLaPipeline.from_pretrained()                      # the embedded default models
    pipe = HeartMuLaPipeline.from_pretrained("ckpt", device="auto")  # official weights (`heartmula download`)
    song = pipe("[verse]\\nHello world", tags="pop,piano", duration=30, seed=0)
    song.save("song.wav")                                            # song.audio [channels, samples] float32
    songs = pipe(["first lyrics", "second lyrics"], tags=["pop", "rock"], seed=[0, 1])  # one batch
    for chunk in pipe.stream("lyrics", tags="jazz", duration=20):    # audio chunks as they are made
        ...
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from heartmula.errors import HeartMuLaError
from heartmula.lm.generation import SamplingParams, SongRequest, frames_for_duration, min_frames_for
from heartmula.song_models import load_lm, resolve_codec, resolve_lm


@dataclass
class Song:
    """One generated song."""

    audio: np.ndarray  # float32 [channels, samples], peak at most -0.2 dBFS
    sample_rate: int
    codes: np.ndarray  # int64 [8, frames] at 12.5 frames per second
    lyrics: str = ""
    tags: str = ""
    seed: int | None = None

    @property
    def duration(self) -> float:
        return self.audio.shape[-1] / self.sample_rate

    def save(self, path: str | os.PathLike) -> Path:
        """Write the audio; the format follows the suffix (.wav, .flac, .mp3, .ogg). Returns the path."""
        from heartmula.audio import save_audio

        return save_audio(path, self.audio, self.sample_rate)


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """"auto": CUDA if present, else Apple's MPS, else the CPU; anything else as torch reads it."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    return torch.device("mps" if mps is not None and mps.is_available() else "cpu")


def default_dtype(device: torch.device) -> str:
    """The LM's weights: bfloat16 on CUDA (as upstream runs the 3B release), float32 elsewhere."""
    return "bfloat16" if device.type == "cuda" else "float32"


class HeartMuLaPipeline:
    """A HeartMuLa LM and the HeartCodec that decodes its codes. The codec loads on the first decode, so a
    codes-only caller never pays for it."""

    def __init__(self, generator, codec_path: Path | None, device: torch.device, dtype: str, model_path: Path):
        self.generator = generator
        self.codec_path = codec_path
        self.device = device
        self.dtype = dtype
        self.model_path = model_path
        self._codec = None

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike | None = None, *, version: str = "3B",
                        codec: str | os.PathLike | None = None, device: str | torch.device = "auto",
                        dtype: str | None = None, int8: bool | None = None, compile: bool = False,
                        decode: bool = True, quant: str | None = None) -> HeartMuLaPipeline:
        """Load a pipeline.

        model: a checkpoint root in the official layout (HeartMuLa-oss-<version>/, tokenizer.json, gen_config.json,
            HeartCodec-oss/), a model folder, or None for the embedded default models.
        codec: a codec folder or root; default HeartCodec-oss/ beside the LM, or the embedded codec with the
            embedded LM.
        device: "auto" (CUDA, else MPS, else the CPU), "cpu", "cuda", "cuda:1" or "mps".
        dtype: of the LM's weights; default bfloat16 on CUDA, float32 elsewhere (the codec always decodes in float32,
            as upstream).
        int8: int8 weight-only LM layers; None: on only for the embedded LM on a CPU without the native kernels.
        decode: False skips finding a codec (codes only).
        quant: "int8" or "int4": weight-only quantised LM weights on the CPU's native kernels, quantised one tensor at
            a time while the checkpoint loads (docs/quantization.md); a quantised folder loads as such without it.
        """
        model_path = resolve_lm(model, version)
        codec_path = resolve_codec(codec, model_path) if decode else None  # a wrong folder fails before the LM loads
        device = resolve_device(device)
        dtype = dtype or default_dtype(device)
        generator = load_lm(model_path, version, dtype, str(device), int8, quant)
        if compile:
            generator.compile()
        return cls(generator, codec_path, device, dtype, model_path)

    @property
    def codec(self):
        if self._codec is None:
            if self.codec_path is None:
                raise HeartMuLaError("this pipeline was loaded with decode=False: it makes codes, not audio")
            from heartmula.codec.pretrained import load_codec

            self._codec = load_codec(self.codec_path, "float32", self.device)
        return self._codec

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    def __call__(self, lyrics: str | Sequence[str] = "", tags: str | Sequence[str] = "", *, duration: float = 30.0,
                 seed: int | Sequence[int | None] | None = None, temperature: float = 1.0, top_k: int = 50,
                 cfg_scale: float = 1.5, lyrics_scale: float | None = None, min_duration: float = 0.0,
                 reference_audio: tuple[np.ndarray, int] | None = None, compat: bool = False,
                 progress: bool = False) -> Song | list[Song]:
        """A song for `lyrics` (empty: instrumental) in the style of `tags`; lists make one batch and return a list.

        duration: the most seconds; the model may end the song earlier unless `min_duration` says otherwise.
        seed: makes the song reproducible (the same alone or in a batch). reference_audio: (audio [C, N], rate)
        whose HeartCLAP embedding fills the reference slot (the embedded LM was trained with it).
        """
        requests = self.requests(lyrics, tags, seed, reference_audio)
        codes = self.generate_codes(requests, SamplingParams(temperature, top_k, cfg_scale, lyrics_scale),
                                    duration, min_duration, compat, progress)
        songs = [self.song_from_codes(c, r.lyrics, str(r.tags), r.seed) for c, r in zip(codes, requests)]
        return songs if isinstance(lyrics, (list, tuple)) else songs[0]

    def requests(self, lyrics, tags, seed, reference_audio=None, clap=None) -> list[SongRequest]:
        """SongRequests from one value or parallel lists (a single value is used for every song); `clap`: the
        HeartCLAP that embeds `reference_audio` (default: the shipped one)."""
        count = len(lyrics) if isinstance(lyrics, (list, tuple)) else 1
        lyrics, tags, seeds = (_per_song(value, count, name) for value, name in
                               ((lyrics, "lyrics"), (tags, "tags"), (seed, "seed")))
        reference = None
        if reference_audio is not None:
            from heartmula.song_models import clap_reference

            reference = clap_reference(self.generator.model.config.muq_dim, reference_audio, clap)
        return [SongRequest(lyrics=text, tags=style, seed=song_seed, reference_embedding=reference)
                for text, style, song_seed in zip(lyrics, tags, seeds)]

    def generate_codes(self, requests: Sequence[SongRequest], sampling: SamplingParams | None = None,
                       duration: float = 30.0, min_duration: float = 0.0, compat: bool = False,
                       progress: bool = False) -> list[np.ndarray]:
        """The LM alone: int64 codes [8, frames] for each request, generated as one batch."""
        sampling = (sampling or SamplingParams()).validate()
        max_new_frames = frames_for_duration(duration)
        min_new_frames = min_frames_for(min_duration, duration)
        if requests and requests[0].seed is not None:
            torch.manual_seed(requests[0].seed)  # what torch draws outside the songs' own generators
        codes = self.generator.generate(list(requests), sampling, max_new_frames, compat=compat, progress=progress,
                                        min_new_frames=min_new_frames)
        return [c.numpy().astype(np.int64) for c in codes]

    def decode(self, codes: np.ndarray, seed: int | None = None) -> tuple[np.ndarray, int]:
        """Codes [8, frames] -> (audio float32 [channels, samples] with its peak at most -0.2 dBFS, sample rate)."""
        from heartmula.audio import fit_peak

        audio, rate = self.codec.decode(codes, seed=seed)
        return fit_peak(audio), rate

    def song_from_codes(self, codes: np.ndarray, lyrics: str = "", tags: str = "", seed: int | None = None) -> Song:
        audio, rate = self.decode(codes, seed)
        return Song(audio=audio, sample_rate=rate, codes=codes, lyrics=lyrics, tags=tags, seed=seed)

    def stream(self, lyrics: str = "", tags: str = "", *, duration: float = 30.0, seed: int | None = None,
               **session_options):
        """A `heartmula.stream.StreamSession`: iterate it for audio chunks (`chunk.audio` [channels, samples]) as
        they are made; `session.update(prompts=..., cfg_scale=...)` steers it live. Options as StreamSession's."""
        from heartmula.stream import StreamControls, StreamSession

        controls = session_options.pop("controls", None) or StreamControls(prompts=tags)
        return StreamSession(self.generator, self.codec, lyrics=lyrics, controls=controls, seed=seed,
                             max_seconds=duration, **session_options)


def _per_song(value, count: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise HeartMuLaError(f"{name}: {len(value)} values for {count} songs")
        return list(value)
    return [value] * count
