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
    longer = pipe.extend(song, duration=20, seed=1)                   # 20 s more after the song's end
    varied = pipe.extend("song.npy", from_seconds=12, seed=2)         # the first 12 s kept, the rest anew
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from heartmula.audio import fit_peak, load_audio, save_audio
from heartmula.codec.pretrained import load_codec
from heartmula.constants import FRAME_RATE
from heartmula.errors import HeartMuLaError
from heartmula.files import load_codes
from heartmula.lm.generation import SamplingParams, SongRequest, frames_for_duration, min_frames_for
from heartmula.song_models import clap_reference, load_lm, resolve_codec, resolve_lm
from heartmula.stream import StreamControls, StreamSession


@dataclass
class Song:
    """One generated song."""

    audio: np.ndarray  # float32 [channels, samples], peak at most -0.2 dBFS
    sample_rate: int
    codes: np.ndarray  # int64 [8, frames] at 12.5 frames per second
    lyrics: str = ""
    tags: str = ""
    seed: int | None = None
    prompt_frames: int = 0  # leading frames of `codes` kept from the song it continues (0: all new)

    @property
    def duration(self) -> float:
        return self.audio.shape[-1] / self.sample_rate

    def save(self, path: str | os.PathLike) -> Path:
        """Write the audio; the format follows the suffix (.wav, .flac, .mp3, .ogg). Returns the path."""
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
                        decode: bool = True, lora: str | os.PathLike | None = None,
                        lora_scale: float = 1.0, quant: str | None = None) -> HeartMuLaPipeline:
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
        lora: a LoRA adapter folder (`heartmula train lora`, PEFT layout) merged into the LM's weights at load, its
            update times `lora_scale` (0 = the base model, 1 = as trained).
        quant: "int8" or "int4": weight-only quantised LM weights on the CPU's native kernels, quantised one tensor at
            a time while the checkpoint loads (docs/quantization.md); a quantised folder loads as such without it.
        """
        model_path = resolve_lm(model, version)
        codec_path = resolve_codec(codec, model_path) if decode else None  # a wrong folder fails before the LM loads
        device = resolve_device(device)
        dtype = dtype or default_dtype(device)
        generator = load_lm(model_path, version, dtype, str(device), int8, lora, lora_scale, quant)
        if compile:
            generator.compile()
        return cls(generator, codec_path, device, dtype, model_path)

    @property
    def codec(self):
        if self._codec is None:
            if self.codec_path is None:
                raise HeartMuLaError("this pipeline was loaded with decode=False: it makes codes, not audio")

            self._codec = load_codec(self.codec_path, "float32", self.device)
        return self._codec

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    def __call__(self, lyrics: str | Sequence[str] = "", tags: str | Sequence[str] = "", *, duration: float = 30.0,
                 seed: int | Sequence[int | None] | None = None, temperature: float = 1.0, top_k: int = 50,
                 cfg_scale: float = 1.5, lyrics_scale: float | None = None, min_duration: float = 0.0,
                 reference_audio: tuple[np.ndarray, int] | None = None, compat: bool = False,
                 progress: bool = False, continue_from=None,
                 from_seconds: float | None = None) -> Song | list[Song]:
        """A song for `lyrics` (empty: instrumental) in the style of `tags`; lists make one batch and return a list.

        duration: the most seconds (of new music when continuing); the model may end the song earlier unless
        `min_duration` says otherwise. seed: makes the song reproducible (the same alone or in a batch).
        reference_audio: (audio [C, N], rate) whose HeartCLAP embedding fills the reference slot (the embedded LM
        was trained with it).
        continue_from: a song to continue (see `prompt_codes`; one for every song of a batch); its frames come out
        unchanged at the start of the new song's codes. from_seconds: keep only its first seconds.
        """
        prompt = self.continuation_prompt(continue_from, from_seconds)
        requests = self.requests(lyrics, tags, seed, reference_audio, prompt=prompt)
        codes = self.generate_codes(requests, SamplingParams(temperature, top_k, cfg_scale, lyrics_scale),
                                    duration, min_duration, compat, progress)
        songs = [self.song_from_codes(c, r.lyrics, str(r.tags), r.seed, _frames(r.audio_codes))
                 for c, r in zip(codes, requests)]
        return songs if isinstance(lyrics, (list, tuple)) else songs[0]

    def extend(self, song, lyrics: str | None = None, tags: str | None = None, *, duration: float = 30.0,
               from_seconds: float | None = None, **options) -> Song:
        """`song` (a Song, codes [8, T], a .npy or audio file, or (audio, rate)) continued by up to `duration`
        seconds; from_seconds: keep only its first seconds and make the rest anew. Lyrics and tags default to the
        Song's own; other options as for a call."""
        if isinstance(song, Song):
            lyrics = song.lyrics if lyrics is None else lyrics
            tags = song.tags if tags is None else tags
        return self(lyrics or "", tags or "", duration=duration, continue_from=song, from_seconds=from_seconds,
                    **options)

    def continuation_prompt(self, continue_from, from_seconds: float | None = None) -> np.ndarray | None:
        """`prompt_codes(continue_from, from_seconds)`, or None when there is nothing to continue."""
        if continue_from is not None:
            return self.prompt_codes(continue_from, from_seconds)
        if from_seconds is not None:
            raise HeartMuLaError("from_seconds needs continue_from: the song whose start is kept")
        return None

    def prompt_codes(self, source, from_seconds: float | None = None) -> np.ndarray:
        """The frames [8, T] int64 a continuation starts from: a Song; codes [8, T] (numpy or torch); a .npy file of
        codes as `heartmula generate --codes-out` writes them; an audio file or (audio [C, N], rate), encoded with
        the codec (which needs an encoder). from_seconds: only the first seconds (whole frames of 80 ms)."""
        if isinstance(source, Song):
            source = source.codes
        if isinstance(source, (str, os.PathLike)):
            codes = self._codes_of_file(Path(source))
        elif isinstance(source, tuple):
            codes = self._encode(*source)
        else:
            codes = check_prompt_codes(source, self.generator)
        return keep_seconds(codes, from_seconds)

    def _codes_of_file(self, path: Path) -> np.ndarray:
        if path.suffix.lower() != ".npy":
            return self._encode(*load_audio(path))
        return check_prompt_codes(load_codes(path), self.generator, str(path))

    def _encode(self, audio, rate: int) -> np.ndarray:
        if self.codec_path is None:
            raise HeartMuLaError("continuing from audio needs the codec to encode it; this pipeline was loaded with "
                                 "decode=False (continue from codes, .npy, instead)")
        return encode_prompt(self.codec, self.generator, audio, rate)

    def requests(self, lyrics, tags, seed, reference_audio=None, clap=None, prompt=None) -> list[SongRequest]:
        """SongRequests from one value or parallel lists (a single value is used for every song); `clap`: the
        HeartCLAP that embeds `reference_audio` (default: the shipped one); `prompt`: codes [8, T] to continue."""
        count = len(lyrics) if isinstance(lyrics, (list, tuple)) else 1
        lyrics, tags, seeds = (_per_song(value, count, name) for value, name in
                               ((lyrics, "lyrics"), (tags, "tags"), (seed, "seed")))
        reference = None
        if reference_audio is not None:
            reference = clap_reference(self.generator.model.config.muq_dim, reference_audio, clap)
        prompt = None if prompt is None else torch.from_numpy(check_prompt_codes(prompt, self.generator))
        return [SongRequest(lyrics=text, tags=style, seed=song_seed, reference_embedding=reference,
                            audio_codes=prompt)
                for text, style, song_seed in zip(lyrics, tags, seeds)]

    def generate_codes(self, requests: Sequence[SongRequest], sampling: SamplingParams | None = None,
                       duration: float = 30.0, min_duration: float = 0.0, compat: bool = False,
                       progress: bool = False) -> list[np.ndarray]:
        """The LM alone: int64 codes [8, frames] for each request, generated as one batch. A request with
        `audio_codes` continues them: its codes start with those frames, unchanged."""
        sampling = (sampling or SamplingParams()).validate()
        max_new_frames = frames_for_duration(duration)
        min_new_frames = min_frames_for(min_duration, duration)
        for request in requests:
            if request.audio_codes is not None:
                check_fits_context(self.generator, request, duration)
        if requests and requests[0].seed is not None:
            torch.manual_seed(requests[0].seed)  # what torch draws outside the songs' own generators
        codes = self.generator.generate(list(requests), sampling, max_new_frames, compat=compat, progress=progress,
                                        min_new_frames=min_new_frames)
        return [_after_prompt(r.audio_codes, c) for c, r in zip(codes, requests)]

    def decode(self, codes: np.ndarray, seed: int | None = None) -> tuple[np.ndarray, int]:
        """Codes [8, frames] -> (audio float32 [channels, samples] with its peak at most -0.2 dBFS, sample rate)."""
        audio, rate = self.codec.decode(codes, seed=seed)
        return fit_peak(audio), rate

    def song_from_codes(self, codes: np.ndarray, lyrics: str = "", tags: str = "", seed: int | None = None,
                        prompt_frames: int = 0) -> Song:
        """A Song of all `codes`, decoded in one pass: a continuation's join is decoded across, like any frame."""
        audio, rate = self.decode(codes, seed)
        return Song(audio=audio, sample_rate=rate, codes=codes, lyrics=lyrics, tags=tags, seed=seed,
                    prompt_frames=prompt_frames)

    def stream(self, lyrics: str = "", tags: str = "", *, duration: float = 30.0, seed: int | None = None,
               continue_from=None, from_seconds: float | None = None, **session_options):
        """A `heartmula.stream.StreamSession`: iterate it for audio chunks (`chunk.audio` [channels, samples]) as
        they are made; `session.update(prompts=..., cfg_scale=...)` steers it live. Options as StreamSession's.

        continue_from, from_seconds: as for a call; the stream plays the kept frames first, then `duration` seconds
        of new music, the codes that a call with the same seed makes."""
        controls = session_options.pop("controls", None) or StreamControls(prompts=tags)
        prompt = self.continuation_prompt(continue_from, from_seconds)
        if prompt is not None:
            request = SongRequest(lyrics=lyrics, tags=list(controls.prompts), audio_codes=prompt)
            check_fits_context(self.generator, request, duration)
            session_options.update(prompt_codes=prompt, play_prompt=True)
        return StreamSession(self.generator, self.codec, lyrics=lyrics, controls=controls, seed=seed,
                             max_seconds=duration, **session_options)


def check_prompt_codes(codes, generator, what: str = "the codes to continue") -> np.ndarray:
    """Codes [K, T] the LM can continue, as int64 numpy; a HeartMuLaError says what is wrong otherwise."""
    codes = codes.cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    k, size = generator.model.num_codebooks, generator.codebook_size
    if codes.ndim != 2 or codes.shape[0] != k or codes.shape[1] == 0 or codes.dtype.kind not in "iu":
        raise HeartMuLaError(f"{what}: expected integer codes of shape [{k}, frames] (as `heartmula generate "
                             f"--codes-out` writes them), got {list(codes.shape)} {codes.dtype}")
    low, high = int(codes.min()), int(codes.max())
    if low < 0 or high >= size:
        raise HeartMuLaError(f"{what}: codes must lie in [0, {size}) for this model, found {low}..{high}; they come "
                             "from a codec with another codebook size")
    return codes.astype(np.int64)


def encode_prompt(codec, generator, audio, rate: int) -> np.ndarray:
    """Audio [C, N] -> codes [8, T] of its whole frames to continue (a partial last frame would end the prompt in
    padding); a codec without an encoder is a HeartMuLaError that says what to do instead."""
    if not codec.can_encode:
        raise HeartMuLaError("this codec has no encoder, so it cannot turn audio into codes to continue: continue "
                             "from the song's codes (.npy, `generate --codes-out`) or use a codec with an encoder "
                             "(the embedded default has one)")
    audio = np.asarray(audio, dtype=np.float32)
    whole = int(audio.shape[-1] / rate * FRAME_RATE + 1e-6)
    if whole < 1:
        raise HeartMuLaError(f"the audio to continue is shorter than one frame ({1 / FRAME_RATE:.2f} s)")
    return check_prompt_codes(codec.encode(audio, rate)[:, :whole], generator, "the encoded audio")


def keep_seconds(codes: np.ndarray, from_seconds: float | None) -> np.ndarray:
    """The first `from_seconds` of codes [K, T] (whole frames; None: all of them)."""
    if from_seconds is None:
        return codes
    length = codes.shape[1] / FRAME_RATE
    if not 0 <= from_seconds < float("inf"):
        raise HeartMuLaError(f"from_seconds must be between 0 and the song's length ({length:.2f} s), got "
                             f"{from_seconds}")
    if from_seconds > length + 1e-6:
        raise HeartMuLaError(f"from_seconds {from_seconds:g} is beyond the end of the song ({length:.2f} s)")
    frames = int(from_seconds * FRAME_RATE + 1e-6)
    if frames < 1:
        raise HeartMuLaError(f"from_seconds {from_seconds:g} keeps no frame (one frame is {1 / FRAME_RATE:.2f} s); "
                             "to start afresh, generate without continuing")
    return codes[:, :frames]


def context_room(generator, lyrics: str, tags, prompt_frames: int = 0) -> tuple[int, int]:
    """(frames of new music that fit in the model's context after this prompt, positions the prompt takes)."""
    request = SongRequest(lyrics=lyrics, tags=tags)
    used = max(len(generator.build_prompt(p.tags, lyrics)[0]) for p in request.tag_prompts()) + prompt_frames
    return max(0, generator.model.config.backbone.max_seq_len - used), used


def check_fits_context(generator, request: SongRequest, duration: float) -> None:
    """A continuation must fit: its kept frames, lyrics, tags and `duration` of new music."""
    prompt_frames = _frames(request.audio_codes)
    room, used = context_room(generator, request.lyrics, request.tags, prompt_frames)
    if frames_for_duration(duration) <= room:
        return
    kept, fit = prompt_frames / FRAME_RATE, math.floor(room / FRAME_RATE * 10) / 10
    raise HeartMuLaError(f"the kept {kept:.1f} s of the song, the lyrics and the tags take {used} of the model's "
                         f"{generator.model.config.backbone.max_seq_len} positions: at most {fit:.1f} s of new music "
                         "fit; ask for less, or keep fewer seconds of the song")


def _after_prompt(prompt: torch.Tensor | None, new: torch.Tensor) -> np.ndarray:
    """A song's codes: the kept frames (if any) unchanged, then the new ones."""
    new = new.numpy().astype(np.int64)
    return new if prompt is None else np.concatenate([prompt.numpy().astype(np.int64), new], axis=1)


def _frames(codes) -> int:
    return 0 if codes is None else int(codes.shape[1])


def _per_song(value, count: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise HeartMuLaError(f"{name}: {len(value)} values for {count} songs")
        return list(value)
    return [value] * count
