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
        average and a lower bar, or every code counts as dead at every step).

        Layer by layer: layer i is updated with the residual left by the already updated layers before it (for the
        first layer that is the forward pass's input, `codes` included). Updating every layer from the forward
        pass's residuals instead breaks when codes are re-seeded: a layer re-seeded from residuals that the layer
        before it no longer leaves gets codes far from every residual it will see, all frames pick the same code,
        and the codebook collapses (seen in training: 1 code in use per layer)."""
        decay = self.decay if decay is None else decay
        threshold = self.threshold_ema_dead_code if dead_threshold is None else dead_threshold
        residual = residuals[0].detach().reshape(-1, residuals[0].shape[-1]).float()
        for i, layer in enumerate(self.layers):
            book = layer._codebook
            index = codes[..., 0].reshape(-1) if i == 0 else self._nearest(residual, book.embed[0])
            onehot = torch.zeros(residual.shape[0], self.codebook_size, device=residual.device)
            onehot[torch.arange(residual.shape[0]), index] = 1.0
            counts = onehot.sum(0)
            sums = onehot.t() @ residual
            book.cluster_size[0].mul_(decay).add_(counts, alpha=1 - decay)
            book.embed_avg[0].mul_(decay).add_(sums, alpha=1 - decay)
            # Laplace smoothing keeps rarely used codes from collapsing to zero.
            n = book.cluster_size.sum()
            smoothed = (book.cluster_size[0] + 1e-5) / (n + self.codebook_size * 1e-5) * n
            book.embed[0].copy_(book.embed_avg[0] / smoothed.unsqueeze(-1))
            dead = book.cluster_size[0] < threshold
            if dead.any():
                picks = torch.randint(0, residual.shape[0], (int(dead.sum()),), generator=generator)
                # jitter relative to the residuals' scale, so seeds drawn from the same frame stay distinct codes
                noise = torch.randn(residual[picks].shape, generator=generator).to(residual.device)
                seeds = residual[picks] + noise * 1e-2 * residual.std()
                book.embed[0][dead] = seeds
                book.embed_avg[0][dead] = seeds * max(threshold, 1e-3)
                book.cluster_size[0][dead] = max(threshold, 1e-3)
            residual = residual - book.embed[0][self._nearest(residual, book.embed[0])]

    @torch.no_grad()
    def resync_ema(self) -> None:
        """Make the EMA state reproduce the codebooks exactly (embed_avg = embed x the smoothed count that
        `ema_update` divides by). A checkpoint stored in float16, or trained on with frozen codebooks, can hold
        EMA sums that no longer give its codebooks: the first update would then move half of a codebook at once
        (seen in the default codec's last two codebooks)."""
        for layer in self.layers:
            book = layer._codebook
            n = book.cluster_size.sum()
            smoothed = (book.cluster_size[0] + 1e-5) / (n + self.codebook_size * 1e-5) * n
            book.embed_avg[0].copy_(book.embed[0] * smoothed.unsqueeze(-1))

    @staticmethod
    def _nearest(residual: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
        distances = residual.pow(2).sum(-1, keepdim=True) - 2 * residual @ book.t() + book.pow(2).sum(-1)
        return distances.argmin(dim=-1)
