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

Harmonic synthesis (`spectral.synthesis = "harmonic"`): a freely predicted phase needs adversarial training and
many GPU steps before harmonics appear; on a CPU budget the decoder only learned band energies (no pitch, no
melody). So pitch is built into the synthesis instead: the decoder predicts, per frame, the amplitude of one
sinusoid per equal-tempered semitone (whose phase advances exactly with its frequency, so overlapping frames add up
to a clean tone) and the gains of mel-spaced bands of a fixed noise texture. Both are written straight into the
STFT frame, so the same overlap-add (and the same streaming) serves both modes. The encoder reads log energies of
the same semitones and bands from a longer STFT that resolves low notes. An optional voice branch
(`spectral.voice`, codec/voice.py) adds a sung voice rendered into the same frames.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from heartmula.codec.convnets import ResidualConv
from heartmula.codec.sq_codec import Conv
from heartmula.codec.voice import VoiceDecoder
from heartmula.errors import HeartMuLaError

DILATIONS = (1, 2, 4, 1, 2, 4, 1, 2)
LOG_MAGNITUDE_CENTRE, LOG_MAGNITUDE_SCALE = 5.0, 4.0
# Harmonic encoder input: log(band energy + floor), about -9 .. +12. The additive floor (about -60 dB for music at
# a normal level) bounds the gradient of the log where the output is silent: with a clamp instead, the pitch loss
# sent 1/energy spikes that froze Adam and the codec stopped learning (seen in training).
ENERGY_FLOOR, LOG_ENERGY_CENTRE, LOG_ENERGY_SCALE = 1e-4, -1.0, 5.0
AMPLITUDE_OFFSET = -6.0  # harmonic decoder: a fresh head outputs ~0, i.e. quiet sinusoids and noise
NOISE_FRAMES = 1000  # the noise texture repeats every 10 s at 100 frames/s: too slow to hear under band gains


def semitone_frequencies(lowest_midi: int, highest_midi: int) -> np.ndarray:
    return 440.0 * 2.0 ** ((np.arange(lowest_midi, highest_midi + 1) - 69) / 12)


def triangle_filters(centres_hz: np.ndarray, widths_hz: np.ndarray, n_fft: int, sample_rate: int) -> np.ndarray:
    """[len(centres), n_fft // 2 + 1] triangles over the STFT bins, peak 1 at the centre."""
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    return np.maximum(0.0, 1 - np.abs(bins[None] - centres_hz[:, None]) / widths_hz[:, None])


def mel_band_centres(count: int, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(centres, half-widths) in Hz of `count` mel-spaced bands covering 0 .. sample_rate / 2."""
    mels = np.linspace(0, 2595 * np.log10(1 + sample_rate / 2 / 700), count + 2)
    hz = 700 * (10 ** (mels / 2595) - 1)
    return hz[1:-1], np.maximum(hz[2:] - hz[1:-1], hz[1:-1] - hz[:-2])


def harmonic_filterbank(spectral, sample_rate: int) -> torch.Tensor:
    """The encoder's analysis: semitone triangles (at least a bin and a half wide, so low notes still cover a bin)
    followed by the noise bands, over the bins of an analysis_fft-point STFT."""
    bin_hz = sample_rate / spectral.analysis_fft
    notes = semitone_frequencies(spectral.lowest_midi, spectral.highest_midi)
    note_widths = np.maximum(notes * (2 ** (1 / 12) - 1), 1.5 * bin_hz)
    band_centres, band_widths = mel_band_centres(spectral.noise_bands, sample_rate)
    bank = np.concatenate([triangle_filters(notes, note_widths, spectral.analysis_fft, sample_rate),
                           triangle_filters(band_centres, np.maximum(band_widths, 1.5 * bin_hz),
                                            spectral.analysis_fft, sample_rate)])
    return torch.from_numpy(bank / bank.sum(axis=1, keepdims=True)).float()  # mean power per filter


def harmonic_synthesis_tables(spectral, sample_rate: int) -> dict[str, torch.Tensor]:
    """Fixed spectra the harmonic decoder mixes into each STFT frame (frame j covers samples j*hop .. j*hop+n_fft):

    cos / sin   [K, bins]  rfft(window * cos|sin(w_k m)): a sinusoid of phase theta at the frame start is
                           sin(theta) * cos-table + cos(theta) * sin-table, so overlap-add rebuilds a steady tone
    noise       [P, bins]  rfft(window * white noise) of P independent frames (a fixed, seeded texture)
    bands       [B, bins]  how each noise band's gain spreads over the bins (triangles, peak 1)
    frequency   [K]        in cycles per sample; phase0 [K] random start phases, so the tones do not all peak
                           together"""
    n = spectral.n_fft
    window = torch.hann_window(n, dtype=torch.float64)
    frequency = torch.from_numpy(semitone_frequencies(spectral.lowest_midi, spectral.highest_midi)) / sample_rate
    angle = 2 * np.pi * frequency[:, None] * torch.arange(n, dtype=torch.float64)[None]
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(NOISE_FRAMES, n, generator=generator, dtype=torch.float64)
    centres, widths = mel_band_centres(spectral.noise_bands, sample_rate)
    return {"cos": torch.fft.rfft(window * angle.cos()).to(torch.complex64),
            "sin": torch.fft.rfft(window * angle.sin()).to(torch.complex64),
            "noise": torch.fft.rfft(window * noise).to(torch.complex64),
            "bands": torch.from_numpy(triangle_filters(centres, widths, n, sample_rate)).float(),
            "frequency": frequency,
            "phase0": torch.rand(len(frequency), generator=generator, dtype=torch.float64)}


class SpectralEncoder(nn.Module):
    def __init__(self, config, latent_channels: int):
        super().__init__()
        s = config.spectral
        self.harmonic = s.synthesis == "harmonic"
        self.n_fft = s.analysis_fft if self.harmonic else s.n_fft
        self.hop = s.hop_length
        self.stride = config.sample_rate // 25 // s.hop_length
        self.sample_rate, self.spectral = config.sample_rate, s
        self._filterbank = None  # built on first use: models are created on the meta device, then loaded
        features = s.highest_midi - s.lowest_midi + 1 + s.noise_bands if self.harmonic else s.n_fft // 2 + 1
        self.conv_in = nn.Conv1d(features, s.hidden_dim, s.kernel_size, padding=s.kernel_size // 2)
        self.frame_blocks = nn.ModuleList(ResidualConv(s.hidden_dim, s.kernel_size, d, causal=False)
                                          for d in DILATIONS[: s.num_blocks // 2])
        self.down = nn.Conv1d(s.hidden_dim, s.hidden_dim, 2 * self.stride, stride=self.stride,
                              padding=self.stride // 2)
        self.latent_blocks = nn.ModuleList(ResidualConv(s.hidden_dim, 3, d, causal=False)
                                           for d in DILATIONS[: s.num_blocks - s.num_blocks // 2])
        self.norm = nn.LayerNorm(s.hidden_dim)
        self.conv_out = nn.Conv1d(s.hidden_dim, latent_channels, 3, padding=1)
        if config.phonetic is not None:
            # Phonetic features join at the latent rate: adding a projection there is concatenating them to the
            # analysis and projecting both. Zero at first, so an extended codec starts as the one it came from.
            self.phonetic_in = nn.Conv1d(config.phonetic.feature_dim, s.hidden_dim, 1)

    def forward(self, audio: torch.Tensor, phonetic: torch.Tensor | None = None) -> torch.Tensor:
        """[B, 1, S] (S a multiple of the latent hop) -> tanh latent [B, C, S / (stride * hop)]; `phonetic`
        [B, feature_dim, S / (stride * hop)]: the phonetic features (codec/phonetic.py) of an encoder that reads
        them."""
        x = self.conv_in(self.features(audio[:, 0]))

        for block in self.frame_blocks:
            x = block(x)
        x = self.down(F.gelu(x))[..., : audio.shape[-1] // (self.hop * self.stride)]
        if hasattr(self, "phonetic_in"):
            if phonetic is None:
                raise HeartMuLaError("this codec's encoder reads phonetic features: pass them (codec/phonetic.py)")
            x = x + self.phonetic_in(phonetic.to(x.dtype))
        for block in self.latent_blocks:
            x = block(x)
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)  # bounded input to the tanh: it must not saturate
        return torch.tanh(self.conv_out(F.gelu(x)))

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        """[B, S] -> [B, features, S / hop]: frame j of the free encoder covers [j*hop, j*hop + n_fft); the longer
        harmonic analysis frames are centred on the same hops."""
        extra = self.n_fft - self.hop
        left = extra // 2 if self.harmonic else 0
        x = F.pad(audio, (left, extra - left))
        window = torch.hann_window(self.n_fft, dtype=x.dtype, device=x.device)  # not a buffer: models load on meta
        spec = torch.stft(x, self.n_fft, self.hop, window=window, center=False, return_complex=True)
        if not self.harmonic:
            # Log magnitudes of music lie around -12 (the floor) .. +4: centre and scale them, or the first layers
            # start so large that the tanh output saturates and the encoder never learns (seen in training).
            return (spec.abs().clamp_min(1e-5).log() + LOG_MAGNITUDE_CENTRE) / LOG_MAGNITUDE_SCALE
        if self._filterbank is None or self._filterbank.device != x.device:
            self._filterbank = harmonic_filterbank(self.spectral, self.sample_rate).to(x.device)
        energy = torch.einsum("fb,nbt->nft", self._filterbank.to(x.dtype), spec.real ** 2 + spec.imag ** 2)
        return ((energy + ENERGY_FLOOR).log() + LOG_ENERGY_CENTRE) / LOG_ENERGY_SCALE


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
        self.blocks = nn.ModuleList(ResidualConv(s.hidden_dim, s.kernel_size, d, causal=True)
                                    for d in DILATIONS[: s.num_blocks])
        self.norm = nn.LayerNorm(s.hidden_dim)
        self.harmonic = s.synthesis == "harmonic"
        self.sample_rate, self.spectral = config.sample_rate, s
        self.tones = s.highest_midi - s.lowest_midi + 1
        self._tables = None  # built on first use: models are created on the meta device, then loaded
        self.head = nn.Linear(s.hidden_dim, self.tones + s.noise_bands if self.harmonic else 2 * self.bins)
        if s.voice is not None:
            self.voice = VoiceDecoder(latent_channels, s.voice, config.sample_rate, s.n_fft, s.hop_length,
                                      self.repeat)
        # Training switch: the codec's music losses score the decoder without the voice branch, which learns from
        # its own targets (scored on the mix, it would learn to fill in whatever the accompaniment lacks).
        self.render_voice = True

    def tables(self, device) -> dict[str, torch.Tensor]:
        if self._tables is None or self._tables["cos"].device != device:
            tables = harmonic_synthesis_tables(self.spectral, self.sample_rate)
            self._tables = {k: v.to(device) for k, v in tables.items()}
        return self._tables

    def harmonic_spectrum(self, parameters: torch.Tensor, first_frame: int, tones_only: bool = False) -> torch.Tensor:
        """[B, N, tones + bands] (log amplitudes) -> STFT frames [B, N, bins] of sinusoids plus banded noise;
        `first_frame` is the absolute index of frame 0 (tone phases and the noise texture follow it)."""
        t = self.tables(parameters.device)
        amplitude = (parameters.clamp(max=8.0) + AMPLITUDE_OFFSET).exp()
        tones, bands = amplitude[..., : self.tones], amplitude[..., self.tones:]
        frames = first_frame + torch.arange(parameters.shape[1], device=parameters.device, dtype=torch.float64)
        cycles = (t["frequency"][None] * (frames[:, None] * self.hop) + t["phase0"][None]) % 1.0  # exact in float64
        theta = (2 * np.pi * cycles).float()  # [N, K]
        tonal = ((tones * theta.sin()).to(torch.complex64) @ t["cos"]
                 + (tones * theta.cos()).to(torch.complex64) @ t["sin"])
        if tones_only:
            return tonal
        texture = t["noise"][frames.long() % NOISE_FRAMES]  # [N, bins]
        return tonal + (bands @ t["bands"]) * texture

    def forward(self, latent: torch.Tensor, cache: dict | None = None, tones_only: bool = False) -> torch.Tensor:
        """latent [B, C, L] -> audio [B, 1, L * repeat * hop]; `tones_only` (harmonic synthesis, training) leaves
        the noise bands out."""
        x = self.conv_in(latent, cache).repeat_interleave(self.repeat, dim=-1)
        for block in self.blocks:
            x = block(x, cache)
        head = self.head(self.norm(x.transpose(1, 2))).float()
        window = torch.hann_window(self.n_fft, device=latent.device)
        voice_frames = None
        if self.harmonic:
            first_frame = cache.get((self, "frames"), 0) if cache is not None else 0
            spectrum = self.harmonic_spectrum(head, first_frame, tones_only)
            if hasattr(self, "voice") and self.render_voice and not tones_only:
                # the voice's noise reads the texture half its period away, uncorrelated with the bands' noise
                rows = first_frame + NOISE_FRAMES // 2 + torch.arange(head.shape[1], device=latent.device)
                texture = self.tables(latent.device)["noise"][rows % NOISE_FRAMES]
                voice_frames, voice_noise = self.voice.frames(self.voice.parameters_from_latent(latent, cache),
                                                              cache, texture)
                spectrum = spectrum + voice_noise
            if cache is not None:
                cache[(self, "frames")] = first_frame + head.shape[1]
        else:
            log_magnitude, phase = head.chunk(2, dim=-1)  # [B, N, bins]
            spectrum = torch.polar(log_magnitude.clamp(max=6.0).exp(), phase)
        frames = torch.fft.irfft(spectrum, n=self.n_fft)
        if voice_frames is not None:
            frames = frames + voice_frames * window  # windowed like the tables' frames
        frames = frames * window / self.ola_scale  # [B, N, n_fft]
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

    def encode(self, audio: torch.Tensor, phonetic: torch.Tensor | None = None) -> torch.Tensor:
        return self.encoder(audio, phonetic)

    def decode(self, latent: torch.Tensor, cache: dict | None = None, snap: bool = True) -> torch.Tensor:
        """latent [B, C, frames] -> [B, 1, frames * hop]; no grid to snap to (`snap` is accepted and ignored)."""
        return self.decoder(latent, cache)

    def flush_decoder(self, cache: dict, batch: int, dtype, device) -> torch.Tensor:
        """Nothing is held back (the decoder is causal); the overlap-add tail lies past the end and is dropped."""
        return torch.zeros(batch, 1, 0, dtype=dtype, device=device)
