"""Codes -> audio in windows: the upstream-exact `compat` mode, the default mode, and streaming.

compat   reproduces heartlib's `detokenize`: 29.76 s windows (372 codes), short inputs tiled up to a full window,
         the code sequence tiled up to a whole number of hops, each later window continuing the last 104 latent
         frames of the previous one, every window decoded to audio separately and cross-faded over 4.16 s, noise
         drawn in the same order (including the draws upstream throws away). Given the same seed or the same
         per-window noise it matches upstream sample for sample.
default  the same model and solver without the waste: a window is only as long as the content (a 5 s clip costs
         5 s, not 29.76 s), nothing is tiled, and windows are stitched in the latent domain: the overlap frames of a
         window ARE the previous window's frames (the in-context prefix is copied back), so the latent sequence
         is continuous and the SQ decoder runs once over all of it, carrying its convolution state across chunks.
         There is no cross-fade to get wrong and no audio computed twice.
stream   `StreamingDecoder`: push codes as the LM makes them, get audio as soon as a window is complete; with the
         same window, overlap and noise it produces the default mode's output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from heartmula.codec.config import LATENT_PER_CODE
from heartmula.constants import FRAME_RATE
from heartmula.errors import HeartMuLaError

MODES = ("default", "compat")
SQ_CHUNK_LATENT_FRAMES = 250  # 10 s of latent per SQ decoder call: bounds memory for long songs


@dataclass
class DecodeOptions:
    mode: str = "default"
    steps: int = 10  # Euler steps of the flow-matching solver
    guidance_scale: float = 1.25  # classifier-free guidance (1 = off, half the work)
    window_frames: int = 372  # code frames per window (29.76 s)
    overlap_frames: int = 52  # code frames a window shares with the previous one (default mode)
    seed: int | None = None  # noise seed; None draws from torch's global generator
    progress: bool = False

    def validate(self) -> DecodeOptions:
        if self.mode not in MODES:
            raise HeartMuLaError(f"decode mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.steps < 1:
            raise HeartMuLaError("decode steps must be at least 1")
        if self.window_frames < 2:
            raise HeartMuLaError("the decode window must hold at least 2 code frames")
        if not 0 <= self.overlap_frames < self.window_frames:
            raise HeartMuLaError("the window overlap must be at least 0 and smaller than the window")
        return self


class NoiseSource:
    """Initial noise per window: explicit tensors (for sample-exact comparisons) or a seeded generator."""

    def __init__(self, seed: int | None = None, noise: Sequence[torch.Tensor] | None = None):
        self.explicit = list(noise) if noise is not None else None
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)
        self.windows_drawn = 0

    def draw(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator)

    def window(self, length: int, latent_dim: int) -> torch.Tensor:
        """The starting noise [1, length, latent_dim] of the next window."""
        index = self.windows_drawn
        self.windows_drawn += 1
        if self.explicit is None:
            return self.draw((1, length, latent_dim))
        if index >= len(self.explicit):
            raise HeartMuLaError(f"explicit noise given for {len(self.explicit)} windows, but window {index + 1} "
                                 "needs some")
        noise = self.explicit[index]
        noise = noise[None] if noise.dim() == 2 else noise
        if tuple(noise.shape) != (1, length, latent_dim):
            raise HeartMuLaError(f"explicit noise for window {index + 1} has shape {list(noise.shape[1:])}, "
                                 f"expected {[length, latent_dim]}")
        return noise

    def discard(self, shape: tuple[int, ...]) -> None:
        """Consume a draw upstream makes and never uses, so seeded compat runs see the same random stream."""
        if self.explicit is None:
            self.draw(shape)


def check_codes(codes, codec) -> torch.Tensor:
    codes = torch.as_tensor(np.asarray(codes) if not isinstance(codes, torch.Tensor) else codes)
    expected = codec.config.num_quantizers
    if codes.dim() != 2 or codes.shape[0] != expected:
        raise HeartMuLaError(f"codes must have shape [{expected}, frames], got {list(codes.shape)}")
    if codes.shape[1] == 0:
        raise HeartMuLaError("the code sequence is empty: nothing to decode")
    if codes.is_floating_point():
        raise HeartMuLaError("codes must be integers")
    size = codec.config.codebook_size
    if int(codes.min()) < 0 or int(codes.max()) >= size:
        raise HeartMuLaError(f"codes must lie in [0, {size}); found {int(codes.min())}..{int(codes.max())} "
                             "(end-of-audio or special tokens must be cut off before decoding)")
    return codes.long()


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False)


# --- windows ------------------------------------------------------------------------------------------------------
def plan_windows(num_frames: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Default-mode windows [start, end) over the codes: full windows every `window - overlap` frames, the last one
    ending at the content (never padded, never tiled)."""
    hop = window - overlap
    windows, start = [], 0
    while True:
        end = min(start + window, num_frames)
        windows.append((start, end))
        if end >= num_frames:
            return windows
        start += hop


def solve_window(codec, codes, noise, prefix, options: DecodeOptions, progress=None, valid_length=None):
    condition = codec.condition(codes)
    return codec.flow_matching.solve(condition, noise.to(codec.device, codec.dtype), prefix,
                                     valid_length=valid_length, steps=options.steps,
                                     guidance_scale=options.guidance_scale, progress=progress)


@torch.no_grad()
def decode_latent_default(codec, codes: torch.Tensor, options: DecodeOptions, noise: NoiseSource) -> torch.Tensor:
    """codes [8, T] -> latent [1, 2T, latent_dim], window by window, stitched in the latent domain."""
    if codec.config.decoder_type == "direct":
        return direct_latent(codec, codes)
    windows = plan_windows(codes.shape[1], options.window_frames, options.overlap_frames)
    bar = _progress(options.steps * len(windows), options.progress, "decode")
    parts, previous, previous_end = [], None, 0
    for start, end in windows:
        shared = LATENT_PER_CODE * (previous_end - start) if previous is not None else 0
        prefix = previous[:, previous.shape[1] - shared:] if shared else None
        window_noise = noise.window(LATENT_PER_CODE * (end - start), codec.config.latent_dim)
        latent = solve_window(codec, codes[None, :, start:end], window_noise, prefix, options, bar)
        parts.append(latent[:, shared:])
        previous, previous_end = latent, end
    if bar is not None:
        bar.close()
    return torch.cat(parts, dim=1)


def direct_context_frames(codec) -> tuple[int, int]:
    """Code frames before and after a code frame that the direct decoder reads to make its latent."""
    decoder = codec.direct_decoder
    return -(-decoder.left_context // LATENT_PER_CODE), -(-decoder.right_context // LATENT_PER_CODE)


def direct_latent(codec, codes: torch.Tensor, chunk: int = 2000) -> torch.Tensor:
    """The direct decoder over the whole sequence, in chunks with enough context to be exact."""
    condition = codec.condition(codes[None])
    left, right = codec.direct_decoder.left_context, codec.direct_decoder.right_context
    length = condition.shape[1]
    parts = []
    for start in range(0, length, chunk):
        lo, hi = max(0, start - left), min(length, start + chunk + right)
        out = codec.direct_decoder(condition[:, lo:hi])
        parts.append(out[:, start - lo: start - lo + min(chunk, length - start)])
    return torch.cat(parts, dim=1)


def latent_to_audio_chunked(codec, latent: torch.Tensor) -> torch.Tensor:
    """latent [1, L, D] -> audio [C, L * hop], the SQ decoder carried across chunks (exact, bounded memory)."""
    cache: dict = {}
    pieces = [codec.latent_to_audio(latent[:, i: i + SQ_CHUNK_LATENT_FRAMES], cache)
              for i in range(0, latent.shape[1], SQ_CHUNK_LATENT_FRAMES)]
    pieces.append(codec.flush_audio(cache))
    return torch.cat(pieces, dim=-1)[0]


# --- compat: heartlib's detokenize, step for step ------------------------------------------------------------------
@torch.no_grad()
def decode_compat(codec, codes: torch.Tensor, options: DecodeOptions, noise: NoiseSource) -> torch.Tensor:
    if codec.config.decoder_type != "flow_matching":
        raise HeartMuLaError("compat mode needs a flow-matching codec (this one has a direct decoder)")
    latent_dim = 256  # upstream hard-codes this width for its throw-away draws
    window = options.window_frames
    hop = window // 93 * 80  # upstream's hop formula (320 of 372)
    overlap = window - hop
    shared_latent = LATENT_PER_CODE * overlap
    window_latent = LATENT_PER_CODE * window
    rate = codec.sample_rate
    target_samples = int(codes.shape[1] / FRAME_RATE * rate)
    noise.discard((1, window_latent, latent_dim))  # upstream's unused `first_latent`

    codes = codes[None]
    if codes.shape[-1] < window:  # tile short inputs up to one window
        while codes.shape[-1] < window:
            codes = torch.cat([codes, codes], -1)
        codes = codes[:, :, :window]
    if (codes.shape[-1] - shared_latent) % hop > 0:  # tile up to a whole number of hops (upstream's test)
        padded = math.ceil((codes.shape[-1] - overlap) / float(hop)) * hop + overlap
        while codes.shape[-1] < padded:
            codes = torch.cat([codes, codes], -1)
        codes = codes[:, :, :padded]

    starts = list(range(0, codes.shape[-1] - hop + 1, hop))
    bar = _progress(options.steps * len(starts), options.progress, "decode (compat)")
    latents = []
    for i, start in enumerate(starts):
        prefix = None
        if i > 0 and shared_latent > 0:
            prefix = latents[-1][:, -shared_latent:]
            noise.discard((1, window_latent - prefix.shape[1], prefix.shape[-1]))  # upstream's masked-out padding
        window_noise = noise.window(window_latent, codec.config.latent_dim)
        latents.append(solve_window(codec, codes[:, :, start: start + window], window_noise, prefix, options, bar,
                                    valid_length=window_latent))
    if bar is not None:
        bar.close()

    window_samples = int(window / FRAME_RATE * rate)
    hop_samples = window_samples // 93 * 80
    overlap_samples = window_samples - hop_samples
    fade_in = torch.from_numpy(np.linspace(0, 1, overlap_samples)[None, :])  # float64, as upstream
    output = None
    for latent in latents:
        audio = codec.latent_to_audio(latent)[0][:, :window_samples].float().cpu()
        if output is None:
            output = audio
        elif overlap_samples == 0:
            output = torch.cat([output, audio], -1)
        else:
            # Computed in float64 (the window is float64) and stored back in float32, as upstream does.
            output[:, -overlap_samples:] = (
                output[:, -overlap_samples:] * (1 - fade_in) + audio[:, :overlap_samples] * fade_in
            )
            output = torch.cat([output, audio[:, overlap_samples:]], -1)
    return output[:, :target_samples]


# --- the public entry points --------------------------------------------------------------------------------------
@torch.no_grad()
def decode(codec, codes, options: DecodeOptions | None = None,
           noise: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """codes [8, T] -> audio [channels, T * 3840] float32 at codec.sample_rate.

    `noise`: the initial noise of each window ([2 x window frames, 256] each), overriding the seed.
    """
    options = (options or DecodeOptions()).validate()
    codes = check_codes(codes, codec)
    source = NoiseSource(options.seed, noise)
    if options.mode == "compat":
        return decode_compat(codec, codes, options, source)
    latent = decode_latent_default(codec, codes, options, source)
    return latent_to_audio_chunked(codec, latent).float().cpu()


class StreamingDecoder:
    """Decode codes while they are being generated (state object in the spirit of Magenta RealTime).

        stream = StreamingDecoder(codec, chunk_frames=25)
        for frame in lm_frames:            # [8] or [8, n] codes
            audio = stream.push(frame)     # [channels, samples], possibly empty
        audio = stream.flush()             # the rest

    Windows hold `chunk_frames + overlap_frames` codes and advance by `chunk_frames`; each continues the previous
    one's last `overlap_frames` codes of latent (in-context prefix), and the SQ decoder keeps its convolution
    state, so consecutive chunks join without a seam. Latency: the first audio needs one window of codes, then
    each chunk needs `chunk_frames` more (2 s by default) plus its compute; the SQ decoder's two-frame
    look-ahead holds back 80 ms until the next chunk or `flush`.
    """

    def __init__(self, codec, chunk_frames: int = 25, overlap_frames: int = 12, steps: int = 10,
                 guidance_scale: float = 1.25, seed: int | None = None,
                 noise: Sequence[torch.Tensor] | None = None,
                 on_window: Callable[[int, int], None] | None = None):
        if chunk_frames < 1:
            raise HeartMuLaError("chunk_frames must be at least 1")
        self.codec = codec
        self.options = DecodeOptions(steps=steps, guidance_scale=guidance_scale,
                                     window_frames=chunk_frames + overlap_frames,
                                     overlap_frames=overlap_frames).validate()
        self.noise = NoiseSource(seed, noise)
        self.codes = torch.zeros(codec.config.num_quantizers, 0, dtype=torch.long)
        self.next_start = 0  # first code frame of the next window
        self.decoded_until = 0  # code frames whose latent is final
        self.previous_latent: torch.Tensor | None = None
        self.sq_cache: dict = {}
        self.on_window = on_window
        self.finished = False

    @property
    def window(self) -> int:
        return self.options.window_frames

    @torch.no_grad()
    def push(self, codes) -> torch.Tensor:
        if self.finished:
            raise HeartMuLaError("this stream was flushed; start a new StreamingDecoder")
        codes = torch.as_tensor(codes)
        codes = codes[:, None] if codes.dim() == 1 else codes
        self.codes = torch.cat([self.codes, check_codes(codes, self.codec)], dim=1)
        pieces = []
        if self.codec.config.decoder_type == "direct":
            pieces.append(self._direct(final=False))
        else:
            while self.codes.shape[1] >= self.next_start + self.window:
                pieces.append(self._decode_window(self.next_start + self.window))
        return self._join(pieces)

    @torch.no_grad()
    def flush(self) -> torch.Tensor:
        """Decode what is left and end the stream."""
        pieces = []
        if self.codec.config.decoder_type == "direct":
            pieces.append(self._direct(final=True))
        elif self.codes.shape[1] > self.decoded_until:
            pieces.append(self._decode_window(self.codes.shape[1]))
        if self.codes.shape[1]:
            pieces.append(self.codec.flush_audio(self.sq_cache)[0].float().cpu())
        self.finished = True
        return self._join(pieces)

    def _join(self, pieces) -> torch.Tensor:
        channels = self.codec.config.audio_channels
        return torch.cat(pieces, dim=-1) if pieces else torch.zeros(channels, 0)

    @torch.no_grad()
    def _decode_window(self, end: int) -> torch.Tensor:
        start = self.next_start
        shared = LATENT_PER_CODE * (self.decoded_until - start) if self.previous_latent is not None else 0
        prefix = self.previous_latent[:, self.previous_latent.shape[1] - shared:] if shared else None
        noise = self.noise.window(LATENT_PER_CODE * (end - start), self.codec.config.latent_dim)
        latent = solve_window(self.codec, self.codes[None, :, start:end], noise, prefix, self.options)
        self.previous_latent, self.decoded_until = latent, end
        self.next_start = start + self.options.window_frames - self.options.overlap_frames
        if self.on_window is not None:
            self.on_window(start, end)
        return self.codec.latent_to_audio(latent[:, shared:], self.sq_cache)[0].float().cpu()

    @torch.no_grad()
    def _direct(self, final: bool) -> torch.Tensor:
        # Decode the code frames whose right context has arrived, recomputing just enough left context to be exact.
        left, right = direct_context_frames(self.codec)
        total = self.codes.shape[1]
        ready = total if final else max(0, total - right)
        begin = self.decoded_until
        if ready <= begin:
            return self._join([])
        lo, hi = max(0, begin - left), min(total, ready + right)
        latent = self.codec.direct_decoder(self.codec.condition(self.codes[None, :, lo:hi]))
        latent = latent[:, LATENT_PER_CODE * (begin - lo): LATENT_PER_CODE * (ready - lo)]
        self.decoded_until = ready
        return self.codec.latent_to_audio(latent, self.sq_cache)[0].float().cpu()
