"""Codes -> audio while the codes are being generated, with a state that can be saved and restored.

Two decoders behind one interface (`push(codes) -> audio`, `flush() -> audio`, `state()`, `load_state()`):
- flow-matching codecs (the official HeartCodec) go through `heartmula.codec.StreamingDecoder`: audio comes out a
  window at a time (`chunk_frames` new code frames per window, `overlap_frames` shared with the previous one);
- direct-decoder codecs (this project's fast CPU decoder) decode a code frame as soon as `lookahead_frames` later
  frames exist. With the decoder's whole right context (the default) the output equals the one-shot decode; a
  shorter look-ahead trades exactness at the edge for latency (a frame's audio is computed before all of its right
  context is known, and the missing context counts as zero padding). A decoder trained with a short look-ahead
  (config `direct_decoder.lookahead`) is exact and fast to react at once, and streams from convolution caches:
  each push runs the decoder over its new frames only, instead of again over the whole left context.

Both keep the SQ waveform decoder's convolution state across calls, so chunks join without a seam.
"""

from __future__ import annotations

import torch

from heartmula.codec.config import LATENT_PER_CODE
from heartmula.codec.decoding import StreamingDecoder, check_codes, direct_context_frames
from heartmula.errors import HeartMuLaError


def _cache_tensors(codec, cache: dict, prefix: str) -> dict[str, torch.Tensor]:
    names = {id(module): name for name, module in codec.named_modules()}
    return {f"{prefix}{names[id(module)]}": tail for module, tail in cache.items()}


def _cache_from_tensors(codec, tensors: dict[str, torch.Tensor], prefix: str) -> dict:
    modules = dict(codec.named_modules())
    cache = {}
    for key, tail in tensors.items():
        if key.startswith(prefix):
            name = key[len(prefix):]
            if name not in modules:
                raise HeartMuLaError("this saved stream state belongs to a different codec")
            cache[modules[name]] = tail.to(codec.device, codec.dtype)
    return cache


class DirectAudioStream:
    """Streaming decode for codecs with a direct (convolutional) decoder."""

    def __init__(self, codec, lookahead_frames: int | None = None):
        self.codec = codec
        self.left_frames, self.right_frames = direct_context_frames(codec)
        if lookahead_frames is None:
            lookahead_frames = self.right_frames
        if not 0 <= lookahead_frames:
            raise HeartMuLaError("lookahead_frames must be >= 0")
        self.lookahead_frames = min(lookahead_frames, self.right_frames)
        self.codes = torch.zeros(codec.config.num_quantizers, 0, dtype=torch.long)
        self.decoded_until = 0
        self.frames_pushed = 0
        self.sq_cache: dict = {}
        # A causal decoder at its own look-ahead carries its convolution inputs across pushes (module -> tail).
        self.direct_cache: dict | None = {} if codec.direct_decoder.causal and self.exact else None

    @property
    def exact(self) -> bool:
        return self.lookahead_frames >= self.right_frames

    @property
    def latency_frames(self) -> int:
        """Code frames that must follow a frame before its audio can be produced (the SQ waveform decoder holds
        back one more; the spectral one none)."""
        return self.lookahead_frames + -(-self.codec.scalar_model.lookahead_frames // LATENT_PER_CODE)

    @torch.no_grad()
    def push(self, codes: torch.Tensor) -> torch.Tensor:
        codes = check_codes(codes, self.codec)
        self.frames_pushed += codes.shape[1]
        if self.direct_cache is not None:
            return self._audio(self.codec.direct_decoder(self.codec.condition(codes[None]), self.direct_cache))
        self.codes = torch.cat([self.codes, codes], dim=1)
        return self._decode(self.codes.shape[1] - self.lookahead_frames)

    @torch.no_grad()
    def flush(self) -> torch.Tensor:
        if not self.frames_pushed:
            return torch.zeros(self.codec.config.audio_channels, 0)
        if self.direct_cache is not None:
            audio = self._audio(self.codec.direct_decoder.end_stream(self.direct_cache))
        else:
            audio = self._decode(self.codes.shape[1])
        return torch.cat([audio, self.codec.flush_audio(self.sq_cache)[0].float().cpu()], dim=-1)

    def _audio(self, latent: torch.Tensor) -> torch.Tensor:
        return self.codec.latent_to_audio(latent, self.sq_cache)[0].float().cpu()

    def _decode(self, ready: int) -> torch.Tensor:
        begin, total = self.decoded_until, self.codes.shape[1]
        if ready <= begin:
            return torch.zeros(self.codec.config.audio_channels, 0)
        lo, hi = max(0, begin - self.left_frames), min(total, ready + self.right_frames)
        latent = self.codec.direct_decoder(self.codec.condition(self.codes[None, :, lo:hi]))
        latent = latent[:, LATENT_PER_CODE * (begin - lo) : LATENT_PER_CODE * (ready - lo)]
        self.decoded_until = ready
        # Older codes are never read again: keep only the left context the next call needs.
        drop = max(0, ready - self.left_frames)
        if drop > 4 * self.left_frames:
            self.codes, self.decoded_until = self.codes[:, drop:], self.decoded_until - drop
        return self._audio(latent)

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {"codes": self.codes, **_cache_tensors(self.codec, self.sq_cache, "sq.")}
        if self.direct_cache is not None:
            tensors.update(_cache_tensors(self.codec, self.direct_cache, "direct."))
        return tensors, dict(kind="direct", decoded_until=self.decoded_until, frames_pushed=self.frames_pushed,
                             lookahead_frames=self.lookahead_frames, cached=self.direct_cache is not None)

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.codes, self.decoded_until = tensors["codes"].long(), meta["decoded_until"]
        self.frames_pushed, self.lookahead_frames = meta["frames_pushed"], meta["lookahead_frames"]
        self.sq_cache = _cache_from_tensors(self.codec, tensors, "sq.")
        self.direct_cache = _cache_from_tensors(self.codec, tensors, "direct.") if meta.get("cached") else None


class FlowAudioStream:
    """Streaming decode for flow-matching codecs (windows of `chunk_frames` new frames)."""

    def __init__(self, codec, chunk_frames: int, overlap_frames: int, steps: int, guidance_scale: float,
                 seed: int | None):
        self.codec = codec
        self.decoder = StreamingDecoder(codec, chunk_frames=chunk_frames, overlap_frames=overlap_frames, steps=steps,
                                        guidance_scale=guidance_scale, seed=seed)
        self.chunk_frames, self.overlap_frames = chunk_frames, overlap_frames
        self.exact = True

    @property
    def latency_frames(self) -> int:
        """Worst case: a frame waits for the rest of its window, then the SQ decoder's look-ahead."""
        return self.chunk_frames + self.overlap_frames + 1

    def push(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder.push(codes)

    def flush(self) -> torch.Tensor:
        return self.decoder.flush()

    def set_quality(self, steps: int | None = None, guidance_scale: float | None = None) -> None:
        """Cheaper decoding from the next window on (used when the machine cannot keep up)."""
        options = self.decoder.options
        if steps is not None:
            options.steps = steps
        if guidance_scale is not None:
            options.guidance_scale = guidance_scale

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        d = self.decoder
        tensors = {"codes": d.codes, **_cache_tensors(self.codec, d.sq_cache, "sq.")}
        if d.previous_latent is not None:
            tensors["previous_latent"] = d.previous_latent
        if d.noise.generator is not None:
            tensors["noise_rng"] = d.noise.generator.get_state()
        meta = dict(kind="flow", next_start=d.next_start, decoded_until=d.decoded_until,
                    chunk_frames=self.chunk_frames, overlap_frames=self.overlap_frames,
                    windows_drawn=d.noise.windows_drawn, steps=d.options.steps,
                    guidance_scale=d.options.guidance_scale)
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        d = self.decoder
        d.codes = tensors["codes"].long()
        d.next_start, d.decoded_until = meta["next_start"], meta["decoded_until"]
        d.noise.windows_drawn = meta["windows_drawn"]
        d.options.steps, d.options.guidance_scale = meta["steps"], meta["guidance_scale"]
        if "previous_latent" in tensors:
            d.previous_latent = tensors["previous_latent"].to(self.codec.device, self.codec.dtype)
        if "noise_rng" in tensors:
            if d.noise.generator is None:
                d.noise.generator = torch.Generator()
            d.noise.generator.set_state(tensors["noise_rng"])
        d.sq_cache = _cache_from_tensors(self.codec, tensors, "sq.")
