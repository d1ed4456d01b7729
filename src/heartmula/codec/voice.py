"""A singing-voice branch for the spectral codec: vocoder parameters from the latent, rendered as harmonics + noise.

Why: the semitone-sinusoid synthesis keeps the pitch and timbre of music but not the formants of sung words
(`bench/codec_lyrics.py`: Whisper's word error on corpus vocals goes from 0.34 to 0.94 through the codec). A voice
is better described the way vocoders describe it: a fundamental frequency, a voicing decision, and the spectral
envelopes of its harmonic and its noise part (WORLD's analysis; `bench/envelope_lyrics.py`: envelopes of 32 log-mel
bands at 25 frames/s keep the words). This branch predicts those per 10 ms STFT frame from the codec latent and
renders them into the decoder's overlap-add frames, so streaming stays exact:

    latent [B, C, L] -> causal convs at 25 Hz, x4 repeat, causal convs at 100 Hz -> per frame j:
        log f0, voicing logit, harmonic envelope, noise envelope (`bands` log-mel powers each)
    frame j = window * sum_h a_jh sin(h * phase_j(m))            (h f0 below Nyquist; a from the harmonic envelope)
            + irfft(noise texture * noise envelope over the bins)

The phase of frame j's fundamental is anchored at the frame centre and advances between centres with the mean f0
of the two frames, so overlapping frames agree where they meet; the stream keeps the last centre's phase.

It is trained by regression on WORLD parameters of the corpus' vocal stems (`heartmula.train.codec_voice`); the
rest of the codec is untouched, so the codes (and any LM trained on them) stay valid.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from heartmula.codec.convnets import ResidualConv
from heartmula.codec.sq_codec import Conv

# The head's outputs are scaled into natural units around typical values of sung voices, so a fresh head starts
# near a quiet voice at a middle pitch (and targets, divided the same way, have a similar spread).
LOG_F0_CENTRE, LOG_F0_SCALE = math.log(220.0), 0.5
LOG_POWER_CENTRE, LOG_POWER_SCALE = -12.0, 4.0
MIN_F0, MAX_F0 = 50.0, 1100.0
LOWEST_BAND_HZ = 25.0
WAVETABLE_SIZE = 2048
DILATIONS = (1, 2, 4, 8, 1, 2, 4, 8)


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def band_centres_mel(bands: int, sample_rate: int) -> torch.Tensor:
    """Centres of the envelope bands, evenly spaced in mel from LOWEST_BAND_HZ to the Nyquist frequency."""
    top = hz_to_mel(torch.tensor(sample_rate / 2, dtype=torch.float64))
    return torch.linspace(float(hz_to_mel(torch.tensor(LOWEST_BAND_HZ))), float(top), bands).float()


def interpolate_bands(log_power: torch.Tensor, centres_mel: torch.Tensor, at_mel: torch.Tensor) -> torch.Tensor:
    """Linear interpolation (in mel) of band log powers [..., bands] at the mel positions `at_mel` [..., K]
    (clamped at the outer bands); `at_mel` broadcasts against the leading dimensions of `log_power`."""
    bands = centres_mel.numel()
    position = ((at_mel - centres_mel[0]) / (centres_mel[1] - centres_mel[0])).clamp(0, bands - 1)
    low = position.floor().long().clamp(max=bands - 2)
    weight = position - low
    low = low.expand(*log_power.shape[:-1], -1)
    return torch.gather(log_power, -1, low) * (1 - weight) + torch.gather(log_power, -1, low + 1) * weight


class VoiceDecoder(nn.Module):
    def __init__(self, latent_channels: int, config, sample_rate: int, n_fft: int, hop: int, repeat: int):
        super().__init__()
        self.config, self.sample_rate, self.n_fft, self.hop, self.repeat = config, sample_rate, n_fft, hop, repeat
        width = config.hidden_dim
        self.conv_in = Conv(latent_channels, width, 3, causal=True, weight_normed=False)
        # Most of the work at the latent rate (25 Hz: the envelope needs no more), the last blocks at the frame
        # rate (100 Hz: f0 glides and vibrato).
        self.latent_blocks = nn.ModuleList(ResidualConv(width, config.kernel_size, d, causal=True)
                                           for d in DILATIONS[: config.num_blocks])
        self.frame_blocks = nn.ModuleList(ResidualConv(width, config.kernel_size, d, causal=True)
                                          for d in DILATIONS[: config.frame_blocks])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 2 + 2 * config.bands)

    def parameters_from_latent(self, latent: torch.Tensor, cache: dict | None = None) -> dict[str, torch.Tensor]:
        """latent [B, C, L] -> per 10 ms frame [B, N = L * repeat]: log_f0, voicing (logit), harmonic and noise
        log-power envelopes [B, N, bands]."""
        x = self.conv_in(latent, cache)
        for block in self.latent_blocks:
            x = block(x, cache)
        x = x.repeat_interleave(self.repeat, dim=-1)
        for block in self.frame_blocks:
            x = block(x, cache)
        head = self.head(self.norm(x.transpose(1, 2))).float()
        bands = self.config.bands
        return {"log_f0": LOG_F0_CENTRE + LOG_F0_SCALE * head[..., 0],
                "voicing": head[..., 1],
                "harmonic": LOG_POWER_CENTRE + LOG_POWER_SCALE * head[..., 2: 2 + bands],
                "noise": LOG_POWER_CENTRE + LOG_POWER_SCALE * head[..., 2 + bands:]}

    def frames(self, voice: dict[str, torch.Tensor], cache: dict | None,
               noise_texture: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Voice parameters -> (harmonic frames [B, N, n_fft] before the synthesis window, noise spectrum
        [B, N, bins] to add to the decoder's STFT frames). `noise_texture` [N, bins]: the decoder's fixed noise."""
        sr, n_fft = self.sample_rate, self.n_fft
        f0 = voice["log_f0"].clamp(math.log(MIN_F0), math.log(MAX_F0)).exp()  # [B, N]
        on = torch.sigmoid(voice["voicing"])
        batch, count = f0.shape
        centres = band_centres_mel(self.config.bands, sr).to(f0.device)

        # Phase of the fundamental at each frame centre (cycles, float64: it runs for minutes).
        previous = cache.get((self, "phase")) if cache is not None else None
        start_cycles, last_f0 = (previous if previous is not None else
                                 (torch.zeros(batch, dtype=torch.float64, device=f0.device), f0[:, :1].double()))
        f0_64 = f0.double()
        step = torch.cat([last_f0, f0_64], dim=1)
        advance = (step[:, :-1] + step[:, 1:]) / 2 * (self.hop / sr)  # cycles from centre j-1 to centre j
        cycles = (start_cycles[:, None] + advance.cumsum(dim=1)) % 1.0
        if cache is not None:
            cache[(self, "phase")] = (cycles[:, -1], f0_64[:, -1:])

        harmonics = torch.arange(1, self.config.max_harmonics + 1, device=f0.device, dtype=f0.dtype)
        frequencies = f0[..., None] * harmonics  # [B, N, H]
        log_power = interpolate_bands(voice["harmonic"], centres, hz_to_mel(frequencies))
        # WORLD's convention (its synthesis, which the targets come from): each period adds a response of spectrum
        # sqrt(power * period), so harmonic h has amplitude 2 sqrt(power(h f0) f0 / sr).
        amplitude = 2 * (0.5 * log_power).exp() * (f0[..., None] / sr).sqrt() * on[..., None]
        amplitude = amplitude * (frequencies < sr / 2)
        # One period of each frame's waveform as a table (an inverse FFT of its harmonic amplitudes), read at the
        # frame's phases with linear interpolation: far cheaper than a sine per harmonic and sample, and exact to
        # about -60 dB for a table of WAVETABLE_SIZE points.
        coefficients = torch.zeros(batch, count, WAVETABLE_SIZE // 2 + 1, dtype=torch.complex64, device=f0.device)
        coefficients[..., 1: self.config.max_harmonics + 1] = -0.5j * WAVETABLE_SIZE * amplitude
        table = torch.fft.irfft(coefficients, n=WAVETABLE_SIZE)  # [B, N, size]: sum_h a_h sin(2 pi h k / size)
        offset = (torch.arange(n_fft, device=f0.device, dtype=torch.float64) - n_fft / 2) / sr  # s from the centre
        position = ((cycles[..., None] + f0_64[..., None] * offset) % 1.0 * WAVETABLE_SIZE).float()  # [B, N, n_fft]
        low = position.floor().long().clamp(max=WAVETABLE_SIZE - 1)
        weight = position - low
        harmonic = (torch.gather(table, -1, low) * (1 - weight)
                    + torch.gather(table, -1, (low + 1) % WAVETABLE_SIZE) * weight)

        bins = torch.linspace(0, sr / 2, n_fft // 2 + 1, device=f0.device)
        noise_power = interpolate_bands(voice["noise"], centres, hz_to_mel(bins)[None, None])
        noise = (0.5 * noise_power).exp() * NOISE_LEVEL
        return harmonic, noise.to(torch.complex64) * noise_texture


# The noise texture is rfft(window * white noise of unit variance): this scale makes a flat noise envelope come
# out at the level WORLD's synthesis gives it (measured; tests/codec/test_codec_voice.py checks it).
NOISE_LEVEL = 1.42
