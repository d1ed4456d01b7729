"""A spectral (STFT-domain) stand-in for the SQ waveform codec: mono audio <-> a tanh latent at 25 Hz.

Selected by `waveform_codec = "istft"` in config.json (this project's extension; the official SQ codec stays the
default). It keeps the SQ codec's interface (`encode`, `decode(latent, cache)`, `flush_decoder`) and its place in
the state dict (`scalar_model.*`), so the RVQ, the direct decoder and every decode mode work unchanged.

Why: every layer of the SQ codec runs at a waveform rate (24-48 kHz) with few channels, which is slow to train on a
CPU and needed far more steps than a shared 2-core machine gives (a 16 kHz SQ codec trained for an hour here stayed
at mel distance ~1.0 even without the RVQ). Here all layers run at the STFT frame rate (100 Hz) with wide channels,
and the waveform comes from an inverse STFT of a predicted log-magnitude and phase (as in Vocos), so a step is cheap
and decoding is much faster than real time.

    encode  audio [B, 1, S] -> log |STFT| (frames [j*hop, j*hop + n_fft)) -> convs at 100 Hz -> stride 4 -> 25 Hz
            -> convs -> tanh latent [B, latent_hidden_dim, S / (4 hop)]
    decode  latent -> causal conv -> x4 (repeat) -> causal residual convs at 100 Hz -> log-magnitude, phase
            -> irfft * window -> overlap-add (frame j lands on samples [j*hop, j*hop + n_fft))

The decoder is causal and the overlap-add only ever adds to later samples, so streaming keeps, per call, the conv
input tails (as the SQ decoder does) and the overlap-add tail: chunked decoding equals one full pass exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from heartmula.codec.sq_codec import Conv

DILATIONS = (1, 2, 4, 1, 2, 4, 1, 2)
LOG_MAGNITUDE_CENTRE, LOG_MAGNITUDE_SCALE = 5.0, 4.0


class CausalBlock(nn.Module):
    """x + 1x1(gelu(causal conv(gelu(x)))): streams with the SQ codec's conv cache."""

    def __init__(self, dim: int, kernel_size: int, dilation: int, causal: bool = True):
        super().__init__()
        self.conv = Conv(dim, dim, kernel_size, dilation=dilation, causal=causal, weight_normed=False)
        self.mix = Conv(dim, dim, 1, causal=True, weight_normed=False)

    def forward(self, x, cache=None):
        return x + self.mix(F.gelu(self.conv(F.gelu(x), cache)), cache)


class SpectralEncoder(nn.Module):
    def __init__(self, config, latent_channels: int):
        super().__init__()
        s = config.spectral
        self.n_fft, self.hop = s.n_fft, s.hop_length
        self.stride = config.sample_rate // 25 // s.hop_length
        bins = s.n_fft // 2 + 1
        self.conv_in = nn.Conv1d(bins, s.hidden_dim, s.kernel_size, padding=s.kernel_size // 2)
        self.frame_blocks = nn.ModuleList(CausalBlock(s.hidden_dim, s.kernel_size, d, causal=False)
                                          for d in DILATIONS[: s.num_blocks // 2])
        self.down = nn.Conv1d(s.hidden_dim, s.hidden_dim, 2 * self.stride, stride=self.stride,
                              padding=self.stride // 2)
        self.latent_blocks = nn.ModuleList(CausalBlock(s.hidden_dim, 3, d, causal=False)
                                           for d in DILATIONS[: s.num_blocks - s.num_blocks // 2])
        self.norm = nn.LayerNorm(s.hidden_dim)
        self.conv_out = nn.Conv1d(s.hidden_dim, latent_channels, 3, padding=1)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """[B, 1, S] (S a multiple of the latent hop) -> tanh latent [B, C, S / (stride * hop)]."""
        x = F.pad(audio[:, 0], (0, self.n_fft - self.hop))
        window = torch.hann_window(self.n_fft, dtype=x.dtype, device=x.device)  # not a buffer: models load on meta
        spec = torch.stft(x, self.n_fft, self.hop, window=window, center=False, return_complex=True)
        # Log magnitudes of music lie around -12 (the floor) .. +4: centre and scale them, or the first layers start
        # so large that the tanh output saturates and the encoder never learns (seen in training).
        x = self.conv_in((spec.abs().clamp_min(1e-5).log() + LOG_MAGNITUDE_CENTRE) / LOG_MAGNITUDE_SCALE)
        for block in self.frame_blocks:
            x = block(x)
        x = self.down(F.gelu(x))[..., : audio.shape[-1] // (self.hop * self.stride)]
        for block in self.latent_blocks:
            x = block(x)
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)  # bounded input to the tanh: it must not saturate
        return torch.tanh(self.conv_out(F.gelu(x)))


class SpectralDecoder(nn.Module):
    def __init__(self, config, latent_channels: int):
        super().__init__()
        s = config.spectral
        self.n_fft, self.hop = s.n_fft, s.hop_length
        self.repeat = config.sample_rate // 25 // s.hop_length
        self.bins = s.n_fft // 2 + 1
        # Overlap-add of squared Hann windows is constant (sum w^2 = 3/8 n_fft per hop, away from the first frames):
        # one scale instead of a position-dependent envelope, so streaming is exact.
        self.ola_scale = 0.375 * s.n_fft / s.hop_length
        self.conv_in = Conv(latent_channels, s.hidden_dim, 3, causal=True, weight_normed=False)
        self.blocks = nn.ModuleList(CausalBlock(s.hidden_dim, s.kernel_size, d) for d in DILATIONS[: s.num_blocks])
        self.norm = nn.LayerNorm(s.hidden_dim)
        self.head = nn.Linear(s.hidden_dim, 2 * self.bins)

    def forward(self, latent: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        x = self.conv_in(latent, cache).repeat_interleave(self.repeat, dim=-1)
        for block in self.blocks:
            x = block(x, cache)
        log_magnitude, phase = self.head(self.norm(x.transpose(1, 2))).float().chunk(2, dim=-1)  # [B, N, bins]
        spectrum = torch.polar(log_magnitude.clamp(max=6.0).exp(), phase)
        window = torch.hann_window(self.n_fft, device=latent.device)
        frames = torch.fft.irfft(spectrum, n=self.n_fft) * window / self.ola_scale  # [B, N, n_fft]
        count = frames.shape[1]
        audio = F.fold(frames.transpose(1, 2), output_size=(1, (count - 1) * self.hop + self.n_fft),
                       kernel_size=(1, self.n_fft), stride=(1, self.hop))[:, 0]  # [B, 1, samples]
        if cache is not None:
            tail = cache.get(self)
            if tail is not None:
                audio[..., : tail.shape[-1]] += tail
            cache[self] = audio[..., count * self.hop:].clone()
        return audio[..., : count * self.hop].to(latent.dtype)


class SpectralModel(nn.Module):
    """Drop-in for ScalarModel (`scalar_model.*` in the state dict) with a spectral encoder and decoder."""

    lookahead_frames = 0

    def __init__(self, config):
        super().__init__()
        self.encoder = SpectralEncoder(config, config.latent_hidden_dim)
        self.decoder = SpectralDecoder(config, config.latent_hidden_dim)

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        return self.encoder(audio)

    def decode(self, latent: torch.Tensor, cache: dict | None = None, snap: bool = True) -> torch.Tensor:
        """latent [B, C, frames] -> [B, 1, frames * hop]; no grid to snap to (`snap` is accepted and ignored)."""
        return self.decoder(latent, cache)

    def flush_decoder(self, cache: dict, batch: int, dtype, device) -> torch.Tensor:
        """Nothing is held back (the decoder is causal); the overlap-add tail lies past the end and is dropped."""
        return torch.zeros(batch, 1, 0, dtype=dtype, device=device)
