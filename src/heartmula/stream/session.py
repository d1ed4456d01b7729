"""StreamSession: a song generated and decoded chunk by chunk, steerable while it plays; its state can be saved."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from heartmula.constants import FRAME_RATE
from heartmula.errors import HeartMuLaError
from heartmula.files import atomic_output
from heartmula.lm.generation import GenerationSession, SongRequest, frames_for_duration, min_frames_for
from heartmula.song_models import clap_reference
from heartmula.stream.controls import StreamControls
from heartmula.stream.decoding import DirectAudioStream, FlowAudioStream
from heartmula.stream.session_state import resumed_stream, stream_state_bytes

PROMPT_CONTEXT_FRAMES = 32  # frames of an audio prompt the codec decoder sees (its context), not played back

_model_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def model_lock(model) -> threading.Lock:
    """One lock per model: sessions sharing a model take turns frame by frame. Their KV caches are their own, so
    the turns only keep concurrent songs from splitting the cores (and torch's thread pool) between them."""
    with _locks_guard:
        lock = _model_locks.get(model)
        if lock is None:
            lock = _model_locks[model] = threading.Lock()
        return lock


@dataclass
class AudioChunk:
    """Audio of whole code frames [first_frame, first_frame + frames) of the song (80 ms each); the frames of a
    played prompt (`play_prompt`) come first and count."""

    audio: np.ndarray  # float32 [channels, samples], samples = frames * samples_per_frame
    sample_rate: int
    first_frame: int
    frames: int
    controls_version: int  # the newest controls version any frame of this chunk was generated under
    frame_versions: tuple[int, ...]  # the controls version of each frame
    final: bool = False  # the last chunk of the song

    @property
    def start_seconds(self) -> float:
        return self.first_frame / FRAME_RATE

    @property
    def seconds(self) -> float:
        return self.audio.shape[-1] / self.sample_rate


def _audio_prompt(codec, prompt_codes, prompt_audio: tuple[np.ndarray, int] | None) -> torch.Tensor | None:
    """The audio prompt as long codes [K, T] (encoded by the codec when given as audio), or None."""
    if prompt_audio is not None:
        if prompt_codes is not None:
            raise HeartMuLaError("give an audio prompt as audio or as codes, not both")
        audio, rate = prompt_audio
        prompt_codes = codec.encode(audio, rate)  # raises a clear error if the codec has no encoder
    return None if prompt_codes is None else torch.as_tensor(np.asarray(prompt_codes)).long()


def _style_reference(generator, reference_embedding: torch.Tensor | None,
                     reference_audio: tuple[np.ndarray, int] | None, clap) -> torch.Tensor | None:
    """The style reference's embedding: as given, or the HeartCLAP embedding of the reference audio."""
    if reference_audio is None:
        return reference_embedding
    if reference_embedding is not None:
        raise HeartMuLaError("give a style reference as audio or as an embedding, not both")
    return clap_reference(generator.model.config.muq_dim, reference_audio, clap)


def _check_pair(generator, codec) -> None:
    """The codec must decode the language model's codes."""
    k = generator.model.num_codebooks
    if codec.config.num_quantizers != k or codec.config.codebook_size < generator.codebook_size:
        raise HeartMuLaError(
            f"the codec ({codec.config.num_quantizers} codebooks of {codec.config.codebook_size}) cannot decode "
            f"this language model's codes ({k} codebooks of {generator.codebook_size}): use a matching pair"
        )


class StreamSession:
    """Generate a song frame by frame and hand out audio chunks as soon as the codec can decode them.

    Controls (`update`, `schedule`) apply from the next frame generated; see the package docstring for the
    latency this implies. Thread-safe: one thread may iterate chunks while another calls `update`.

    A prompt (`prompt_codes` or `prompt_audio`) is continued. By default it is only the codec decoder's context
    (the listener has just heard it); with `play_prompt` its audio comes first, decoded with the new frames in one
    stream, so the chunks make the whole continued song.
    """

    def __init__(
        self,
        generator,
        codec,
        lyrics: str = "",
        controls: StreamControls | dict | None = None,
        seed: int | None = None,
        max_seconds: float = 60.0,
        *,
        chunk_frames: int | None = None,
        lookahead_frames: int | None = None,
        overlap_frames: int = 12,
        codec_steps: int = 10,
        codec_guidance: float = 1.25,
        prompt_codes=None,
        prompt_audio: tuple[np.ndarray, int] | None = None,
        reference_embedding: torch.Tensor | None = None,
        reference_audio: tuple[np.ndarray, int] | None = None,
        clap=None,
        min_seconds: float = 0.0,
        play_prompt: bool = False,
    ):
        if isinstance(controls, dict):
            controls = StreamControls.from_dict(controls)
        self.controls = controls or StreamControls()
        self.generator, self.codec = generator, codec
        self.lyrics, self.seed, self.max_seconds = lyrics, seed, float(max_seconds)
        _check_pair(generator, codec)
        self.direct = codec.config.decoder_type == "direct"
        self.chunk_frames = chunk_frames or (2 if self.direct else 12)
        if self.chunk_frames < 1:
            raise HeartMuLaError("chunk_frames must be at least 1")
        prompt_codes = _audio_prompt(codec, prompt_codes, prompt_audio)
        reference_embedding = _style_reference(generator, reference_embedding, reference_audio, clap)
        self.samples_per_frame = codec.config.samples_per_code
        self.sample_rate, self.channels = codec.sample_rate, codec.config.audio_channels
        song = SongRequest(lyrics=lyrics, tags=list(self.controls.prompts), seed=seed,
                           reference_embedding=reference_embedding, audio_codes=prompt_codes)
        # Always guided: CFG can then be changed live (one unconditional row, whatever the scale).
        self.lm: GenerationSession = generator.start([song], self.controls.sampling(),
                                                     frames_for_duration(self.max_seconds), guided=True,
                                                     min_new_frames=min_frames_for(min_seconds, self.max_seconds))
        if self.direct:
            self.decoder = DirectAudioStream(codec, lookahead_frames)
        else:
            self.decoder = FlowAudioStream(codec, self.chunk_frames, overlap_frames, codec_steps, codec_guidance, seed)
        self.controls_version = 0  # newest accepted controls
        self._lm_version = 0  # the version the LM runs with (queued updates land before the next frame)
        self._queued: StreamControls | None = None
        self._controls_lock = threading.Lock()
        self.frame_versions: list[int] = []
        self.applied_at: dict[int, int] = {0: 0}  # controls version -> first frame generated under it (or after it)
        self.schedule_changes: list[tuple[int, dict]] = []
        self._unpushed: list[torch.Tensor] = []
        self._pending = np.zeros((self.channels, 0), dtype=np.float32)
        self._skip = 0  # decoder output samples that belong to the audio prompt (context only, not played)
        self.emitted_frames = 0
        self.played_prompt_frames = 0  # frames of the prompt handed out as audio before the generated ones
        self.lm_done = False
        self.finished = False
        self.closed = False
        self.degradations: list[str] = []
        self._lock = threading.RLock()
        if prompt_codes is not None and play_prompt:
            self.played_prompt_frames = prompt_codes.shape[1]
            self._take(self.decoder.push(prompt_codes))
        elif prompt_codes is not None:
            context = prompt_codes[:, -PROMPT_CONTEXT_FRAMES:]
            self._skip = context.shape[1] * self.samples_per_frame
            self._take(self.decoder.push(context))

    # --- information ----------------------------------------------------------------------------------------
    @property
    def frames_generated(self) -> int:
        return len(self.frame_versions)

    @property
    def seconds_generated(self) -> float:
        return self.frames_generated / FRAME_RATE

    @property
    def latency_frames(self) -> int:
        """Promised bound, in frames: a control change applies to the next frame generated; that frame's audio
        is out once `decoder latency + chunk_frames` more frames exist."""
        return 1 + self.decoder.latency_frames + self.chunk_frames

    def codes(self) -> np.ndarray:
        """All code frames generated so far, int64 [K, frames]."""
        frames = self.lm.history[: self.frames_generated]
        if not frames:
            return np.zeros((self.generator.model.num_codebooks, 0), dtype=np.int64)
        return torch.stack([f[0] for f in frames], dim=1).cpu().numpy().astype(np.int64)

    # --- controls -------------------------------------------------------------------------------------------
    def update(self, **changes) -> int:
        """Change controls (prompts, temperature, top_k, cfg_scale) from the next frame on; returns the new
        controls version. Invalid values raise HeartMuLaError and leave the session unchanged and running."""
        # Queued, not applied here: the producer applies the newest queued controls right before its next frame,
        # so an update never waits for the generation lock (which a busy producer would keep winning).
        with self._controls_lock:
            if self.closed:
                raise HeartMuLaError("this stream session is closed")
            new = self.controls.replace(**changes)
            self._check_prompts_fit(new)
            self.controls, self.controls_version = new, self.controls_version + 1
            self._queued = new
            return self.controls_version

    def schedule(self, frame: int, **changes) -> None:
        """Apply `changes` right before frame `frame` is generated (scripted, reproducible control changes)."""
        if frame < self.frames_generated:
            raise HeartMuLaError(f"frame {frame} has already been generated ({self.frames_generated} so far)")
        self._check_prompts_fit(self.controls.replace(**changes))  # checked against the current controls
        with self._lock:
            self.schedule_changes.append((int(frame), dict(changes)))
            self.schedule_changes.sort(key=lambda item: item[0])

    def _check_prompts_fit(self, new: StreamControls) -> None:
        current = {tags for tags, _ in self.controls.prompts}
        model = self.generator.model
        extra = 0 if self.lm.songs[0].audio_codes is None else self.lm.songs[0].audio_codes.shape[1]
        for tags, _ in new.prompts:
            if tags in current:
                continue
            if not tags:
                raise HeartMuLaError("an empty tag prompt cannot be added to a running stream; give it some tags")
            length = len(self.generator.build_prompt(tags, self.lyrics)[0]) + extra
            if length + self.lm.max_new_frames > model.config.backbone.max_seq_len:
                raise HeartMuLaError(f"tag prompt {tags!r} is too long for the model's context with these lyrics")

    def _sync_controls(self) -> None:
        """Bring the LM to the newest controls: queued updates, then scheduled changes due at this frame."""
        with self._controls_lock:
            queued, version, self._queued = self._queued, self.controls_version, None
        if queued is not None:
            self._apply_to_lm(queued)
            self._lm_version = version
        while self.schedule_changes and self.schedule_changes[0][0] <= self.frames_generated:
            _, changes = self.schedule_changes.pop(0)
            with self._controls_lock:
                new = self.controls.replace(**changes)  # on top of any update that raced in
                self.controls, self.controls_version, self._queued = new, self.controls_version + 1, None
                version = self.controls_version
            self._apply_to_lm(new)
            self._lm_version = version

    def _apply_to_lm(self, new: StreamControls) -> None:
        lm = self.lm
        weights = new.normalised_weights()
        old_tags = [tags for tags, _ in lm.prompt_tags(0)]
        for tags in weights:
            if tags not in old_tags:  # provisional weight 1: the final weights are set below, before any frame
                lm.add_prompt(0, tags, [1.0] * (len(old_tags) + 1))
                old_tags.append(tags)
        for tags in list(old_tags):
            if tags not in weights:
                index = old_tags.index(tags)
                old_tags.remove(tags)
                lm.remove_prompt(0, index, [1.0] * len(old_tags))
        lm.set_prompt_weights(0, [weights[tags] for tags in old_tags])
        lm.update_sampling(temperature=new.temperature, top_k=new.top_k, cfg_scale=new.cfg_scale)

    # --- generation -----------------------------------------------------------------------------------------
    def next_chunk(self) -> AudioChunk | None:
        """The next chunk of audio, or None once the song has ended (EOS or max_seconds)."""
        while True:
            with self._lock:
                if self.closed:
                    raise HeartMuLaError("this stream session is closed")
                if self.finished:
                    return None
                whole = self._pending.shape[1] // self.samples_per_frame
                if self.lm_done:
                    if whole == 0:
                        self.finished = True
                        return None
                    return self._emit(whole, final=True)
                if whole >= self.chunk_frames:
                    return self._emit(whole)
                self._generate_frame()
            # the lock is free here: an update() from another thread lands before the next frame

    def __iter__(self) -> Iterator[AudioChunk]:
        while (chunk := self.next_chunk()) is not None:
            yield chunk

    def _generate_frame(self) -> None:
        lm = self.lm
        with model_lock(self.generator.model):
            self._sync_controls()
            if lm.frame_index > lm.max_new_frames:
                valid = False
            else:
                step = lm.next_frame()
                valid = bool(step.valid[0])
        if valid:
            # every version set since the last frame (several updates may land between two frames) starts here
            for version in range(max(self.applied_at) + 1, self._lm_version + 1):
                self.applied_at[version] = self.frames_generated
            self.frame_versions.append(self._lm_version)
            self._unpushed.append(step.codes[0].cpu())
            if len(self._unpushed) >= (self.chunk_frames if self.direct else 1):
                self._push()
        else:
            self._push()
            self._take(self.decoder.flush())
            self.lm_done = True

    def _push(self) -> None:
        if self._unpushed:
            codes = torch.stack(self._unpushed, dim=1)
            self._unpushed = []
            self._take(self.decoder.push(codes))

    def _take(self, audio: torch.Tensor) -> None:
        audio = audio.numpy()
        if self._skip:
            dropped = min(self._skip, audio.shape[1])
            audio, self._skip = audio[:, dropped:], self._skip - dropped
        if audio.shape[1]:
            self._pending = np.concatenate([self._pending, audio.astype(np.float32, copy=False)], axis=1)

    def _emit(self, frames: int, final: bool = False) -> AudioChunk:
        samples = frames * self.samples_per_frame
        audio, self._pending = self._pending[:, :samples], self._pending[:, samples:]
        first = self.emitted_frames
        generated = first - self.played_prompt_frames  # negative within a played prompt (controls version 0)
        versions = (0,) * min(frames, max(0, -generated)) + \
            tuple(self.frame_versions[max(0, generated) : max(0, generated + frames)])
        self.emitted_frames += frames
        final = final and self._pending.shape[1] < self.samples_per_frame
        if final:
            self.finished = True
        return AudioChunk(np.ascontiguousarray(audio), self.sample_rate, first, frames, max(versions, default=0),
                          versions, final)

    def degrade(self) -> str | None:
        """Make decoding cheaper (fewer solver steps, then no codec guidance); returns what changed, or None when
        nothing is left to give (the direct decoder has no such knob)."""
        with self._lock:
            if self.direct:
                return None
            options = self.decoder.decoder.options
            if options.steps > 2:
                steps = max(2, options.steps // 2)
                change = f"codec steps {options.steps} -> {steps}"
                self.decoder.set_quality(steps=steps)
            elif options.guidance_scale != 1.0:
                change = f"codec guidance {options.guidance_scale} -> 1.0"
                self.decoder.set_quality(guidance_scale=1.0)
            else:
                return None
            self.degradations.append(change)
            return change

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                with model_lock(self.generator.model):
                    self.lm.close()
                self.closed = True

    def __enter__(self) -> StreamSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- state ----------------------------------------------------------------------------------------------
    def save_state(self, path: str | os.PathLike | None = None) -> bytes:
        """The whole session as safetensors bytes (tensors + JSON metadata, no pickle); also written to `path`."""
        with self._lock:
            if self.closed:
                raise HeartMuLaError("this stream session is closed")
            with model_lock(self.generator.model):
                self._sync_controls()
                lm_state = self.lm.state_dict()
            data = stream_state_bytes(self, *lm_state)
        if path is not None:
            with atomic_output(path) as tmp:
                Path(tmp).write_bytes(data)
        return data

    @classmethod
    def resume(cls, generator, codec, state: bytes | str | os.PathLike) -> StreamSession:
        """A session restored from `save_state` output (bytes or a file); it continues exactly where it was."""
        return resumed_stream(cls, generator, codec, state)
