"""The scalar-quantised (SQ) waveform codec: mono 48 kHz audio <-> a 128-d latent at 25 Hz.

Module and tensor names follow the official checkpoint (`scalar_model.encoder.*`, `scalar_model.decoder.*`).
Weight-normed convolutions are stored officially as `<name>.parametrizations.weight.original0` (g) and
`original1` (v); here they hold one plain `weight`, folded once at load time (`fold_weight_norm`), so inference
pays nothing for the parametrisation.

The decoder can run incrementally: every convolution takes an optional `cache` dict in which it keeps the input
tail it needs next time (causal convs: the last dilation*(k-1) samples; the transposed convs: the previous frame;
the look-ahead conv at the input: the last k-1 frames, so its output lags k//2 frames until `flush`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from heartmula.codec.config import HeartCodecConfig

WEIGHT_G = ".parametrizations.weight.original0"
WEIGHT_V = ".parametrizations.weight.original1"

Cache = dict  # module -> tensor: the input tail each convolution keeps between calls


def requantize(latent: torch.Tensor) -> torch.Tensor:
    """The SQ grid: 19 levels in [-1, 1]. The decoder was trained on this grid, so predictions are snapped to it."""
    return torch.round(9 * latent) / 9


def round_with_straight_through(latent: torch.Tensor) -> torch.Tensor:
    """requantize() whose gradient is the identity (training)."""
    return latent + (requantize(latent) - latent).detach()


class Conv(nn.Conv1d):
    """Conv1d that is causal (left zero padding) or centred, optionally weight-normed in the official files."""

    def __init__(self, cin, cout, kernel_size, stride=1, dilation=1, causal=True, weight_normed=True):
        padding = 0 if causal else dilation * (kernel_size - 1) // 2
        super().__init__(cin, cout, kernel_size, stride=stride, dilation=dilation, padding=padding)
        self.causal = causal
        self.weight_normed = weight_normed
        self.context = dilation * (kernel_size - 1)  # input samples the output at time t looks back (or around)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        if cache is None:
            if self.causal:
                x = F.pad(x, (self.context, 0))
            return super().forward(x)
        if self.stride[0] != 1:
            raise ValueError("incremental decoding of strided convolutions is not supported")
        # Incremental: prepend what the previous call left (zeros at the start, as the full pass pads).
        x = with_tail(self, x, cache, self.context if self.causal else self.padding[0], self.context)
        if x.shape[-1] <= self.context:  # not enough input yet for one output sample (look-ahead conv, tiny chunk)
            return x.new_zeros(x.shape[0], self.out_channels, 0)
        return conv1d(x, self.weight, self.bias, self.dilation[0])


def with_tail(module: nn.Module, x: torch.Tensor, cache: Cache, first: int, keep: int) -> torch.Tensor:
    """x [B, C, T] after the input a conv read last time: `first` zeros on the first call (the full pass's
    padding), later the tail of earlier calls; the cache then keeps the last `keep` samples for the next call."""
    tail = cache.get(module)
    if tail is None:
        tail = x.new_zeros(x.shape[0], x.shape[1], first)
    x = torch.cat([tail, x], dim=-1)
    cache[module] = x[..., max(0, x.shape[-1] - keep):].clone()  # a view would keep all of x alive
    return x


def conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int = 1) -> torch.Tensor:
    """F.conv1d (no padding, stride 1), faster on the short inputs of incremental decoding: below ~20k input values
    PyTorch runs one short input through its native CPU kernels rather than oneDNN, and their dilated path is
    several times slower than gathering the kernel taps and doing one matmul."""
    out_channels, channels, k = weight.shape
    if k == 1 or x.shape[0] != 1 or x.numel() > 20480:
        return F.conv1d(x, weight, bias, dilation=dilation)
    taps = x.unfold(-1, dilation * (k - 1) + 1, 1)[..., ::dilation]  # [1, C, T_out, k]
    frames = taps.shape[2]
    taps = taps.permute(0, 2, 1, 3).reshape(1, frames, channels * k)
    return F.linear(taps, weight.reshape(out_channels, channels * k), bias).transpose(1, 2)


class CausalConvTranspose(nn.ConvTranspose1d):
    """Transposed conv with kernel = 2 x stride whose last `stride` outputs (that would need the future) are cut."""

    def __init__(self, cin, cout, kernel_size, stride):
        if kernel_size != 2 * stride:
            raise ValueError("a causal transposed conv needs kernel_size == 2 * stride")
        super().__init__(cin, cout, kernel_size, stride=stride)
        self.weight_normed = True

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        s = self.stride[0]
        if cache is None:
            return super().forward(x)[..., :-s]
        # Output sample m depends on input frames m // s and m // s - 1: keep the previous frame.
        if x.shape[-1] == 0:
            return x.new_zeros(x.shape[0], self.out_channels, 0)
        previous = cache.get(self)
        if previous is None:
            previous = x.new_zeros(x.shape[0], x.shape[1], 1)
        cache[self] = x[..., -1:].clone()
        y = super().forward(torch.cat([previous, x], dim=-1))
        return y[..., s: s * (x.shape[-1] + 1)]


class ResidualUnit(nn.Module):
    def __init__(self, cin, cout, dilation, kernel_size, causal):
        super().__init__()
        self.conv1 = Conv(cin, cout, kernel_size, dilation=dilation, causal=causal)
        self.conv2 = Conv(cin, cout, 1, causal=causal)
        self.activation1 = nn.PReLU()
        self.activation2 = nn.PReLU()

    def forward(self, x, cache=None):
        h = self.activation1(self.conv1(x, cache))
        return self.activation2(self.conv2(h, cache)) + x


DILATIONS = (1, 3, 5, 7, 9)


class DownsampleLayer(nn.Module):
    def __init__(self, cin, cout, kernel_size, stride, causal):
        super().__init__()
        self.layer = Conv(cin, cout, kernel_size, stride=stride, causal=causal)
        self.activation = nn.PReLU()

    def forward(self, x):
        return self.activation(self.layer(x))


class EncoderBlock(nn.Module):
    def __init__(self, cin, cout, stride, kernel_size, res_kernel_size, causal):
        super().__init__()
        self.convs = nn.ModuleList(
            ResidualUnit(cin if i == 0 else cout // 2, cout // 2, d, res_kernel_size, causal)
            for i, d in enumerate(DILATIONS)
        )
        self.down_conv = DownsampleLayer(cin, cout, kernel_size, stride, causal)

    def forward(self, x):
        for unit in self.convs:
            x = unit(x)
        return self.down_conv(x)


class UpsampleLayer(nn.Module):
    def __init__(self, cin, cout, kernel_size, stride):
        super().__init__()
        self.layer = CausalConvTranspose(cin, cout, kernel_size, stride)

    def forward(self, x, cache=None):
        return self.layer(x, cache)


class DecoderBlock(nn.Module):
    def __init__(self, cin, cout, stride, kernel_size, res_kernel_size, causal):
        super().__init__()
        self.up_conv = UpsampleLayer(cin, cout, kernel_size, stride)
        self.convs = nn.ModuleList(ResidualUnit(cout, cout, d, res_kernel_size, causal) for d in DILATIONS)

    def forward(self, x, cache=None):
        x = self.up_conv(x, cache)
        for unit in self.convs:
            x = unit(x, cache)
        return x


class PreProcessor(nn.Module):
    """Conv + PReLU at the full rate, then average pooling by `num_samples`."""

    def __init__(self, cin, cout, num_samples, kernel_size, causal):
        super().__init__()
        self.pooling = nn.AvgPool1d(kernel_size=num_samples)
        self.conv = Conv(cin, cout, kernel_size, causal=causal, weight_normed=False)
        self.activation = nn.PReLU()

    def forward(self, x):
        return self.pooling(self.activation(self.conv(x)))


class PostProcessor(nn.Module):
    """Repeat every sample `num_samples` times, then conv + PReLU."""

    def __init__(self, cin, cout, num_samples, kernel_size, causal):
        super().__init__()
        self.num_samples = num_samples
        self.conv = Conv(cin, cout, kernel_size, causal=causal, weight_normed=False)
        self.activation = nn.PReLU()

    def forward(self, x, cache=None):
        x = torch.repeat_interleave(x, self.num_samples, dim=-1)
        return self.activation(self.conv(x, cache))


class ScalarModel(nn.Module):
    """encoder: [B, 1, samples] -> tanh latent [B, 128, frames]; decoder: latent -> [B, 1, samples]."""

    def __init__(self, config: HeartCodecConfig):
        super().__init__()
        c = config
        width = c.init_channel
        down, up = c.downsample_factors, c.upsample_factors
        encoder: list[nn.Module] = [Conv(c.num_bands, width, c.default_kernel_size, causal=c.causal)]
        if c.num_samples > 1:
            encoder.append(PreProcessor(width, width, c.num_samples, c.default_kernel_size, c.causal))
        for i, factor in enumerate(down):
            encoder.append(EncoderBlock(width * 2**i, width * 2 ** (i + 1), factor, c.downsample_kernel_sizes[i],
                                        c.res_kernel_size, c.causal))
        encoder.append(Conv(width * 2 ** len(down), c.latent_hidden_dim, c.default_kernel_size, causal=c.causal))
        # The decoder input conv is centred (the official "look ahead" conv), everything after it is causal.
        decoder: list[nn.Module] = [Conv(c.latent_hidden_dim, width * 2 ** len(up), c.delay_kernel_size,
                                         causal=False)]
        for i, factor in enumerate(up):
            decoder.append(DecoderBlock(width * 2 ** (len(up) - i), width * 2 ** (len(up) - i - 1), factor,
                                        c.upsample_kernel_sizes[i], c.res_kernel_size, c.causal))
        if c.num_samples > 1:
            decoder.append(PostProcessor(width, width, c.num_samples, c.default_kernel_size, c.causal))
        decoder.append(Conv(width, c.num_bands, c.default_kernel_size, causal=c.causal))
        self.encoder = nn.ModuleList(encoder)
        self.decoder = nn.ModuleList(decoder)
        self.lookahead_frames = c.delay_kernel_size // 2

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """[B, 1, samples] -> tanh latent [B, latent_hidden_dim, samples / hop] (not yet on the SQ grid)."""
        x = audio
        for layer in self.encoder[:-1]:
            x = layer(x)
        return torch.tanh(self.encoder[-1](x))

    def decode(self, latent: torch.Tensor, cache: Cache | None = None, snap: bool = True) -> torch.Tensor:
        """[B, latent_hidden_dim, frames] -> [B, 1, frames * hop].

        With a `cache`, the call continues a stream: it returns the audio of all frames except the last
        `lookahead_frames`, which come out with the next call (or `flush_decoder`).
        """
        x = requantize(latent) if snap else latent
        for layer in self.decoder:
            x = layer(x, cache)
        return x

    def flush_decoder(self, cache: Cache, batch: int, dtype, device) -> torch.Tensor:
        """End a stream: feed the zero look-ahead the full pass pads with, return the remaining audio."""
        zeros = torch.zeros(batch, self.decoder[0].in_channels, self.lookahead_frames, dtype=dtype, device=device)
        return self.decode(zeros, cache, snap=False)


def weight_normed_names(module: nn.Module) -> list[str]:
    """Names of the weights stored as (g, v) pairs in the official files."""
    return [f"{name}.weight" for name, m in module.named_modules() if getattr(m, "weight_normed", False)]


def fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace each official pair (original0 = g, original1 = v) by weight = g * v / ||v||, the norm over all
    dimensions but the first."""
    folded = {}
    for name, tensor in state.items():
        if name.endswith(WEIGHT_V):
            continue
        if name.endswith(WEIGHT_G):
            prefix = name[: -len(WEIGHT_G)]
            v = state[prefix + WEIGHT_V]
            g = tensor
            norm = v.float().flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
            folded[prefix + ".weight"] = (v.float() * (g.float() / norm)).to(v.dtype)
        else:
            folded[name] = tensor
    return folded


def unfold_weight_norm(state: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """The inverse, for writing official files: g = ||weight|| per output row, v = weight."""
    names = set(names)
    out = {}
    for name, tensor in state.items():
        if name in names:
            prefix = name[: -len(".weight")]
            norm = tensor.float().flatten(1).norm(dim=1).view(-1, *([1] * (tensor.dim() - 1)))
            out[prefix + WEIGHT_G] = norm.to(tensor.dtype)
            out[prefix + WEIGHT_V] = tensor
        else:
            out[name] = tensor
    return out
