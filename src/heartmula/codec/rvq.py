"""Residual vector quantiser with the official tensor names (those of vector-quantize-pytorch's ResidualVQ).

    project_in  Linear(dim, codebook_dim)      project_out  Linear(codebook_dim, dim)
    layers.{i}._codebook.embed       [1, K, codebook_dim]   the codebook
    layers.{i}._codebook.embed_avg   [1, K, codebook_dim]   EMA training state
    layers.{i}._codebook.cluster_size [1, K]                EMA training state
    layers.{i}._codebook.initted     []                     EMA training state

Decoding needs only `embed` and `project_out`; the EMA buffers are kept so official files load strictly and so
that `ema_update` can train the codebooks the way they were trained (exponential moving averages, with dead
codes re-seeded from the batch).
"""

from __future__ import annotations

import torch
from torch import nn


class Codebook(nn.Module):
    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("initted", torch.tensor(True))
        self.register_buffer("cluster_size", torch.ones(1, size))
        self.register_buffer("embed_avg", torch.zeros(1, size, dim))
        self.register_buffer("embed", torch.zeros(1, size, dim))


class Quantizer(nn.Module):
    def __init__(self, size: int, dim: int):
        super().__init__()
        self._codebook = Codebook(size, dim)

    @property
    def codebook(self) -> torch.Tensor:
        return self._codebook.embed[0]


class ResidualVQ(nn.Module):
    def __init__(self, dim: int, codebook_size: int, codebook_dim: int, num_quantizers: int, decay: float = 0.9,
                 threshold_ema_dead_code: float = 2.0):
        super().__init__()
        self.codebook_size = codebook_size
        self.decay = decay
        self.threshold_ema_dead_code = threshold_ema_dead_code
        self.project_in = nn.Linear(dim, codebook_dim)
        self.project_out = nn.Linear(codebook_dim, dim)
        self.layers = nn.ModuleList(Quantizer(codebook_size, codebook_dim) for _ in range(num_quantizers))

    @property
    def num_quantizers(self) -> int:
        return len(self.layers)

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, T, Q] -> [B, T, dim]: the sum of the Q codebook vectors, projected out."""
        vectors = torch.stack([layer.codebook[codes[..., i]] for i, layer in enumerate(self.layers)])
        return self.project_out(vectors.sum(dim=0))

    def quantize(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """features [B, T, dim] -> (codes [B, T, Q], quantised sum in codebook space, per-layer residual inputs).

        Each layer picks the nearest code (Euclidean) to what the previous layers left unexplained.
        """
        residual = self.project_in(features)
        total = torch.zeros_like(residual)
        codes, residuals = [], []
        for layer in self.layers:
            residuals.append(residual)
            book = layer.codebook
            distances = residual.pow(2).sum(-1, keepdim=True) - 2 * residual @ book.t() + book.pow(2).sum(-1)
            index = distances.argmin(dim=-1)
            chosen = book[index]
            codes.append(index)
            total = total + chosen
            residual = residual - chosen.detach()
        return torch.stack(codes, dim=-1), total, residuals

    @torch.no_grad()
    def ema_update(self, codes: torch.Tensor, residuals: list[torch.Tensor], decay: float | None = None,
                   dead_threshold: float | None = None, generator=None) -> None:
        """Move each codebook toward the mean of the residuals assigned to it; re-seed codes that went unused.

        `decay` / `dead_threshold` override the config's (0.9 / 2 suit large batches; small ones need a slower
        average and a lower bar, or every code counts as dead at every step)."""
        decay = self.decay if decay is None else decay
        threshold = self.threshold_ema_dead_code if dead_threshold is None else dead_threshold
        for i, layer in enumerate(self.layers):
            book = layer._codebook
            flat = residuals[i].detach().reshape(-1, residuals[i].shape[-1]).float()
            index = codes[..., i].reshape(-1)
            onehot = torch.zeros(flat.shape[0], self.codebook_size, device=flat.device)
            onehot[torch.arange(flat.shape[0]), index] = 1.0
            counts = onehot.sum(0)
            sums = onehot.t() @ flat
            book.cluster_size[0].mul_(decay).add_(counts, alpha=1 - decay)
            book.embed_avg[0].mul_(decay).add_(sums, alpha=1 - decay)
            # Laplace smoothing keeps rarely used codes from collapsing to zero.
            n = book.cluster_size.sum()
            smoothed = (book.cluster_size[0] + 1e-5) / (n + self.codebook_size * 1e-5) * n
            book.embed[0].copy_(book.embed_avg[0] / smoothed.unsqueeze(-1))
            dead = book.cluster_size[0] < threshold
            if dead.any():
                picks = torch.randint(0, flat.shape[0], (int(dead.sum()),), generator=generator)
                seeds = flat[picks] + 1e-3 * torch.randn(flat[picks].shape, generator=generator)
                book.embed[0][dead] = seeds
                book.embed_avg[0][dead] = seeds * max(threshold, 1e-3)
                book.cluster_size[0][dead] = max(threshold, 1e-3)
