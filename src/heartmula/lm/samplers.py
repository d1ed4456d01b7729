"""The two ways a frame's codes are drawn from the rows' logits: upstream's (compat mode) and the default one.

Both guide the row logits (`heartmula.lm.guidance`) and sample top-k with temperature. `UpstreamSampler` keeps
upstream's operations, sampler, random stream and end rule (any code >= EOS ends a song from frame 1 on).
`DefaultSampler` guides and masks in one product, never samples a code the codec cannot decode, never ends a song
at frame 0 (or before its minimum length) and draws the noise of codebooks 1..K-1 of a frame at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from heartmula.errors import HeartMuLaError
from heartmula.lm.guidance import Guidance
from heartmula.nn.sampling import exponential_noise, sample_among_top_k, sample_top_k


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_k: int = 50
    cfg_scale: float = 1.5
    lyrics_scale: float | None = None  # guidance of the lyrics over the same tags alone; None: the model's default

    def validate(self) -> SamplingParams:
        if not (0 <= self.temperature < float("inf")):
            raise HeartMuLaError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise HeartMuLaError(f"top_k must be an integer >= 1, got {self.top_k!r}")
        if not (0 <= self.cfg_scale < float("inf")):
            raise HeartMuLaError(f"cfg_scale must be >= 0, got {self.cfg_scale}")
        if self.lyrics_scale is not None and not (0 <= self.lyrics_scale < float("inf")):
            raise HeartMuLaError(f"lyrics_scale must be >= 0, got {self.lyrics_scale}")
        return self


class UpstreamSampler:
    """Compat mode: upstream's guidance operations (its float32 rounding), sampler and random stream."""

    upstream_products = True  # the model computes with F.linear, as upstream does

    def __init__(self, generators: list[torch.Generator | None], eos: int):
        self.generators = generators
        self.eos = eos
        self.frame_index = 0

    def start_frame(self, guidance: Guidance, sampling: SamplingParams, frame_index: int) -> None:
        self.guidance, self.sampling, self.frame_index = guidance, sampling, frame_index

    def guide(self, logits: torch.Tensor) -> torch.Tensor:
        """Row logits [rows, V] -> guided logits [songs, V]."""
        return self.guidance.upstream(logits.float(), self.sampling.cfg_scale, self.sampling.lyrics_scale)

    def sample(self, logits: torch.Tensor, codebook: int, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Row logits [rows, V] -> codes [songs]."""
        return sample_top_k(self.guide(logits), self.sampling.top_k, self.sampling.temperature, self.generators)

    def later_noise(self, songs: int, codebooks: int, vocab: int) -> None:
        return None  # upstream draws its noise per codebook, inside `sample`

    def is_end(self, codes: torch.Tensor) -> torch.Tensor:
        """[songs] bool: upstream keeps frame 0 whatever it holds, then ends on any code >= EOS."""
        if self.frame_index == 0:
            return torch.zeros(len(codes), dtype=torch.bool, device=codes.device)
        return (codes >= self.eos).any(dim=1)


class DefaultSampler:
    """The default mode: guidance and the mask of undecodable codes in one product per codebook."""

    upstream_products = False
    fused_local_frame = True  # codebooks 1..K-1 may run as one native call (`heartmula.lm.backends`)

    def __init__(self, generators: list[torch.Generator | None], eos: int, codebook_size: int, vocab: int,
                 num_codebooks: int, min_new_frames: int, device):
        self.generators = generators
        self.eos = eos
        self.min_new_frames = min_new_frames
        self.frame_index = 0
        self.masks = self._invalid_masks(codebook_size, vocab, num_codebooks, device)
        self.later_masks = torch.stack(self.masks[1:])  # codebooks 1..K-1 at once, for the native local frame
        self.first_frames_mask = self.masks[0].clone()
        self.first_frames_mask[eos] = float("-inf")  # a song has at least one frame (or min_new_frames)

    def _invalid_masks(self, codebook_size: int, vocab: int, num_codebooks: int, device) -> list[torch.Tensor]:
        """Per codebook, -inf where a code must never be sampled and 0 elsewhere, added to the logits (one add is
        cheaper than a masked fill, once per codebook per frame)."""
        masks = []
        for codebook in range(num_codebooks):
            invalid = torch.full((vocab,), float("-inf"), device=device)
            invalid[:codebook_size] = 0.0
            if codebook == 0:
                invalid[self.eos] = 0.0
            masks.append(invalid)
        return masks

    def start_frame(self, guidance: Guidance, sampling: SamplingParams, frame_index: int) -> None:
        """Controls may change between frames: the guidance matrix is taken once per frame."""
        self.sampling, self.frame_index = sampling, frame_index
        self.matrix = guidance.matrix(sampling.cfg_scale, sampling.lyrics_scale)

    def guide(self, logits: torch.Tensor) -> torch.Tensor:
        """Row logits [rows, V] -> guided logits [songs, V] (one product; float32 rounding differs from upstream)."""
        return self.matrix @ logits.float()

    def sample(self, logits: torch.Tensor, codebook: int, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Row logits [rows, V] -> codes [songs]; `noise`: pre-drawn sampling noise [songs, k]."""
        invalid = self.masks[codebook]
        if codebook == 0 and self.frame_index < max(1, self.min_new_frames):
            invalid = self.first_frames_mask
        guided = torch.addmm(invalid, self.matrix, logits.float())  # guidance and mask, one call
        s = self.sampling
        return sample_among_top_k(guided, s.top_k, s.temperature, self.generators, noise)

    def later_noise(self, songs: int, codebooks: int, vocab: int) -> torch.Tensor | None:
        """The sampling noise of this frame's codebooks 1..K-1, [songs, K-1, k], drawn at once from each song's
        generator (None where the most likely code is taken)."""
        s = self.sampling
        if s.temperature <= 0 or s.top_k == 1:
            return None
        return exponential_noise((songs, codebooks - 1, min(s.top_k, vocab)), torch.float32, self.matrix.device,
                                 self.generators)

    def is_end(self, codes: torch.Tensor) -> torch.Tensor:
        """[songs] bool: only EOS on codebook 0 ends a song."""
        return codes[:, 0] == self.eos
