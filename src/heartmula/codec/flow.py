"""Codes -> latent: RVQ de-quantisation, the condition, and the flow-matching Euler solver.

Official names: `flow_matching.vq_embed.*`, `flow_matching.cond_feature_emb`, `flow_matching.zero_cond_embedding1`,
`flow_matching.estimator.*`.
"""

from __future__ import annotations

import torch
from torch import nn

from heartmula.codec.config import LATENT_PER_CODE, HeartCodecConfig
from heartmula.codec.estimator import Estimator
from heartmula.codec.rvq import ResidualVQ


class FlowMatching(nn.Module):
    def __init__(self, config: HeartCodecConfig):
        super().__init__()
        self.vq_embed = ResidualVQ(config.dim, config.codebook_size, config.codebook_dim, config.num_quantizers,
                                   config.decay, config.threshold_ema_dead_code)
        self.cond_feature_emb = nn.Linear(config.dim, config.dim)
        if config.decoder_type == "flow_matching":
            # Stands in for the condition of frames beyond the valid length (padding).
            self.zero_cond_embedding1 = nn.Parameter(torch.randn(config.dim))
            self.estimator = Estimator(config)
        self.latent_dim = config.out_channels

    def condition(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, Q, T] -> condition mu [B, 2T, dim] at 25 Hz (nearest-neighbour x2 upsampling)."""
        features = self.cond_feature_emb(self.vq_embed.embed_codes(codes.transpose(1, 2)))
        return features.repeat_interleave(LATENT_PER_CODE, dim=1)

    @torch.no_grad()
    def solve(
        self,
        condition: torch.Tensor,
        noise: torch.Tensor,
        prefix: torch.Tensor | None = None,
        valid_length: int | None = None,
        steps: int = 10,
        guidance_scale: float = 1.25,
        progress=None,
    ) -> torch.Tensor:
        """Integrate the flow from `noise` (t=0) to a latent (t=1) with fixed Euler steps.

        condition [B, L, dim], noise [B, L, latent_dim]. `prefix` [B, P, latent_dim] is in-context audio: its frames
        are held on the straight noise->data path at every step (so the model continues it) and copied back at the
        end. Frames from `valid_length` on get the learned padding condition. Guidance runs the batch
        [unconditional (mu = 0), conditional] and extrapolates: v = v_u + g (v_c - v_u).
        """
        batch, length, _ = noise.shape
        prefix_length = 0 if prefix is None else prefix.shape[1]
        if valid_length is not None and valid_length < length:
            keep = torch.arange(length, device=noise.device) < valid_length
            condition = torch.where(keep[None, :, None], condition, self.zero_cond_embedding1.to(condition.dtype))
        in_context = torch.zeros_like(noise)
        if prefix_length:
            in_context[:, :prefix_length] = prefix.to(noise.dtype)

        t_span = torch.linspace(0, 1, steps + 1, device=noise.device)
        t, dt = t_span[0], t_span[1] - t_span[0]
        x = noise.clone()
        for step in range(1, steps + 1):
            if prefix_length:
                held = (1 - (1 - 1e-6) * t) * noise[:, :prefix_length] + t * in_context[:, :prefix_length]
                x[:, :prefix_length] = held
            if guidance_scale > 1.0:
                model_input = torch.cat([
                    torch.cat([x, x], 0),
                    torch.cat([in_context, in_context], 0),
                    torch.cat([torch.zeros_like(condition), condition], 0),
                ], dim=2)
                velocity_uncond, velocity_cond = self.estimator(model_input, t.unsqueeze(-1).repeat(2 * batch)).chunk(2)
                velocity = velocity_uncond + guidance_scale * (velocity_cond - velocity_uncond)
            else:
                velocity = self.estimator(torch.cat([x, in_context, condition], dim=2), t.unsqueeze(-1).repeat(batch))
            x = x + dt * velocity
            # Accumulate t exactly as the reference does (t += dt; dt = next - t): float32 rounding included.
            t = t + dt
            if step < steps:
                dt = t_span[step + 1] - t
            if progress is not None:
                progress.update(1)
        if prefix_length:
            x[:, :prefix_length] = in_context[:, :prefix_length]
        return x
