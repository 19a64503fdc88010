"""Strided convolutional encoder built from a spec list.

The CPC encoder (van den Oord et al. 2018) is five convolutions with kernels
10, 8, 4, 4, 4 and strides 5, 4, 2, 2, 2: 160 samples (10 ms at 16 kHz) per
output frame. CPC_audio pads them by 3, 2, 1, 1, 1 so that 20480 samples give
exactly 128 frames, and normalizes each frame over channels (its
``ChannelNorm``, the default here); the paper used batch norm.

Frames stay channels-last, ``(batch, frames, channels)``, from the first
block to the last: each convolution is one matrix product (see
:func:`strided_conv`) and the per-frame channel norm is a plain layer norm
over the last dimension, so no block transposes or copies its activations.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from audiossl.models import autotune
from audiossl.models.lengths import length_mask


class _ShiftedSum(torch.autograd.Function):
    """``y[:, t] = sum_j taps[:, t + j, j]``, with a backward that writes its gradient in place.

    (Autograd's own backward of the slices would fill a zero tensor of the
    taps' size per slice and add them up.)
    """

    @staticmethod
    def forward(ctx, taps: torch.Tensor, out_frames: int) -> torch.Tensor:  # taps: (B, rows, m, C)
        ctx.rows = taps.shape[1]
        y = taps[:, :out_frames, 0].clone()
        for j in range(1, taps.shape[2]):
            y = y + taps[:, j:j + out_frames, j]  # out of place: torch.compile mistraces an in-place add here
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        batch, out_frames, channels = grad.shape
        rows = ctx.rows
        taps = rows - out_frames + 1
        out = grad.new_empty(batch, rows, taps, channels)
        for j in range(taps):
            out[:, :j, j] = 0
            out[:, j:j + out_frames, j] = grad
            out[:, j + out_frames:, j] = 0
        return out, None


def conv_method(in_channels: int, out_channels: int, kernel: int, stride: int) -> str:
    """What ``strided_conv``'s ``auto`` takes on the CPU: ``taps`` when the strided view's rows
    (``stride * in``) are wider than the output and there is more than one of
    them per output frame (every downsampling conv after the first), else ``im2col``."""
    return "taps" if -(-kernel // stride) > 1 and stride * in_channels > out_channels else "im2col"


CONV_METHODS = ("taps", "im2col", "conv1d")


def choose_conv_method(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
                       padding: int) -> str:
    """The method ``auto`` runs: by :func:`conv_method` on the CPU, by measurement elsewhere.

    On another device (CUDA) the forward and backward of every method in
    :data:`CONV_METHODS` is timed once per device type, autocast dtype,
    shapes, stride and padding, at the first call with them, and the fastest
    is kept (:func:`audiossl.models.autotune.choose`), as cuDNN's benchmark
    mode keeps its algorithm: no GPU figure of the three exists yet, and the
    fastest may differ per card and per layer. While ``torch.compile`` traces,
    nothing is timed: ``conv1d`` (cuDNN's) is taken.
    """
    if x.device.type == "cpu":
        return conv_method(x.shape[-1], weight.shape[0], weight.shape[-1], stride)
    if torch.compiler.is_compiling():
        return "conv1d"
    device = x.device.type
    dtype = x.dtype
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
    # Which inputs the caller's backward will differentiate: none under no_grad (inference).
    grads = (x.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)
    grads = grads if torch.is_grad_enabled() else (False, False, False)
    key = ("strided_conv", device, dtype, tuple(x.shape), tuple(weight.shape), bias is not None, stride, padding,
           grads)
    candidates = {name: functools.partial(_conv_step, x, weight, bias, stride, padding, name, grads)
                  for name in CONV_METHODS}
    return autotune.choose(key, candidates, x.device)


def _conv_step(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int,
               method: str, grads: tuple[bool, bool, bool]) -> None:
    """One forward of ``method``, and the backward w.r.t. the inputs named by ``grads``, on detached inputs."""
    x, weight = x.detach().requires_grad_(grads[0]), weight.detach().requires_grad_(grads[1])
    bias = None if bias is None else bias.detach().requires_grad_(grads[2])
    with torch.set_grad_enabled(any(grads)):
        y = strided_conv(x, weight, bias, stride, padding, method)
        wrt = [t for t, needed in zip((x, weight, bias), grads) if needed]
        if wrt:
            torch.autograd.grad(y, wrt, torch.ones_like(y))


def strided_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
                 padding: int, method: str = "auto") -> torch.Tensor:
    """``Conv1d`` on channels-last frames, computed as one matrix product (or by ``F.conv1d``).

    A convolution with kernel ``k`` and stride ``s`` reads, for output frame
    t, the input frames ``s t - padding .. s t - padding + k - 1``. Padded to
    a whole number of strides, the input viewed as ``(batch, frames / s, s *
    channels)`` is the same memory, and output frame t reads rows ``t .. t + m
    - 1`` of that view, ``m = ceil(k / s)`` (the kernel padded with zero taps
    to ``m s``): a stride-1 convolution of kernel ``m`` over the view. It is
    computed one of two ways, both matrix products forward and backward,
    where oneDNN's strided-conv backward ran at a third of matmul speed on
    the CPU (docs/benchmarks.md has the per-layer table):

    - ``taps``: the view times every tap's weight in one product, ``(rows, m
      out)``, then the ``m`` tap outputs shifted and added (``m`` times the
      output, no copy of the input);
    - ``im2col``: each output frame's ``k`` input frames side by side (an
      ``unfold`` of the padded input, ``k / s`` times its size, copied once)
      times the ``(out, in k)`` weight.

    A third method, ``conv1d``, is ``F.conv1d`` itself on the transposed
    input (cuDNN's kernels on CUDA), its output transposed back.

    ``auto`` chooses by :func:`choose_conv_method`: on the CPU by the rule
    measured there (:func:`conv_method`); on CUDA by timing the three methods
    at the first call with each shape, since no GPU figure exists yet.

    Args:
        x: (batch, frames, in_channels).
        weight: (out_channels, in_channels, kernel), as ``nn.Conv1d`` holds it.

    Returns:
        (batch, (frames + 2 padding - kernel) // stride + 1, out_channels),
        equal to ``F.conv1d`` on the transposed input.
    """
    batch, frames, channels = x.shape
    out_channels, _, kernel = weight.shape
    out_frames = (frames + 2 * padding - kernel) // stride + 1
    if out_frames <= 0:
        return x.new_zeros(batch, 0, out_channels)
    if method == "auto":
        method = choose_conv_method(x, weight, bias, stride, padding)
    if method == "conv1d":
        return F.conv1d(x.transpose(1, 2), weight, bias, stride=stride, padding=padding).transpose(1, 2)
    m = -(-kernel // stride)
    rows = out_frames + m - 1
    # Right padding may be negative: input frames that no output reads are cut off.
    x = F.pad(x, (0, 0, padding, rows * stride - frames - padding))  # (B, rows * s, C)
    if method == "im2col":
        # Each output frame's k input frames, (B, out, C, k) as a view, copied once into the matrix.
        cols = x.unfold(1, kernel, stride).reshape(batch, out_frames, channels * kernel)
        return F.linear(cols, weight.reshape(out_channels, -1), bias)
    if method != "taps":
        raise ValueError(f"unknown conv method {method!r}")
    taps = weight.transpose(1, 2)  # (out, kernel, in)
    if m * stride != kernel:
        taps = F.pad(taps, (0, 0, 0, m * stride - kernel))
    taps = taps.reshape(out_channels, m, stride * channels)  # taps[:, j] reads row t + j of the view
    per_tap = F.linear(x.view(batch, rows, stride * channels),
                       taps.transpose(0, 1).reshape(m * out_channels, -1))  # (B, rows, m * out)
    y = _ShiftedSum.apply(per_tap.view(batch, rows, m, out_channels), out_frames)
    return y if bias is None else y + bias


class ChannelNorm(nn.Module):
    """Normalizes each frame over its channels, with a learned scale and shift.

    A layer norm over the last dimension of channels-last frames, so it needs
    no transpose. ``unbiased`` divides by the unbiased standard deviation, as
    CPC_audio's ``ChannelNorm`` does (``x.var(dim=1)``, eps 1e-5), so that its
    converted checkpoints give its features exactly (``encoder_norm:
    channel_unbiased``). Computed as the same fused layer norm: with C
    channels, ``(x - m) / sqrt(var_n-1 + eps)`` equals ``sqrt((C-1)/C) (x -
    m) / sqrt(var_n + eps (C-1)/C)``.
    """

    def __init__(self, channels: int, eps: float = 1e-5, unbiased: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)
        self.unbiased = unbiased
        if unbiased and channels < 2:
            raise ValueError("an unbiased channel norm needs at least 2 channels")
        self.shrink = (channels - 1) / channels if unbiased else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, C)
        if not self.unbiased:
            return self.norm(x)
        return F.layer_norm(x, self.norm.normalized_shape, self.norm.weight * self.shrink ** 0.5, self.norm.bias,
                            self.norm.eps * self.shrink)


class BatchNorm(nn.BatchNorm1d):
    """Batch norm over every frame of the batch, on channels-last frames."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, C)
        return super().forward(x.reshape(-1, x.shape[-1])).view_as(x)


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return BatchNorm(channels)
    if kind in ("channel", "channel_unbiased"):
        return ChannelNorm(channels, unbiased=kind == "channel_unbiased")
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown encoder norm {kind!r}")


class ConvBlock(nn.Module):
    """Conv -> norm -> ReLU (or GELU), with the output length computed from the input's."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, padding: int, norm: str,
                 activation: str = "relu"):
        super().__init__()
        if activation not in ("relu", "gelu"):
            raise ValueError(f"unknown encoder activation {activation!r}")
        self.gelu = activation == "gelu"
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride, padding)  # holds weight and init
        self.norm = make_norm(norm, out_channels)
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.span, self.left = kernel, padding  # input steps one output frame reads; of them, before stride * t

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints from before the conv became a Conv1d (an earlier 0.1.0 tree) hold a (out, in, 1, kernel) weight.
        key = prefix + "conv.weight"
        if key in state_dict and state_dict[key].dim() == 4:
            state_dict[key] = state_dict[key].squeeze(2)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(lengths + 2 * self.padding - self.kernel, self.stride, rounding_mode="floor") + 1

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = strided_conv(x, self.conv.weight, self.conv.bias, self.stride, self.padding)
        # In place: neither the norm nor the conv (any method) keeps its output for backward.
        x = F.gelu(self.norm(x)) if self.gelu else torch.relu_(self.norm(x))  # (B, T', C)
        lengths = self.output_lengths(lengths).clamp(min=0)
        # Zero the frames past each sequence's end: the next conv then sees the
        # same zeros a per-utterance run pads with. On the CPU the test is free
        # and full-length batches (every training window) skip the multiply;
        # on an accelerator the multiply is cheaper than the sync the test costs.
        if x.device.type != "cpu" or bool((lengths < x.shape[1]).any()):
            x = x * length_mask(lengths, x.shape[1]).unsqueeze(-1)
        return x, lengths


class LogEnvelopeBlock(ConvBlock):
    """A first conv read as a complex filterbank: each (even, odd) channel pair's log power.

    Channels ``2i`` and ``2i + 1`` are taken as the real and imaginary parts
    of one band-pass filter (a cosine/sine Gabor pair under the filterbank
    init), so ``log(re^2 + im^2 + eps)`` is that band's log envelope, smooth
    at the conv's output rate whatever the phase, as a log-mel filterbank is.
    With ``pool > 1`` the band power is first averaged over ``pool`` frames
    (centred, zeros past the ends), as a spectrogram averages power over its
    window before the log: it smooths the pitch-rate beating inside each band.
    No norm and no ReLU follow: the output is ``out_channels // 2`` log
    bands, the input the next (strided) conv learns to pool, and every weight
    stays learned.
    """

    eps = 1e-6  # the log's floor on band power (unit-variance input, unit-norm filters)

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, padding: int, pool: int = 1):
        if out_channels % 2:
            raise ValueError(f"a log-envelope first conv needs an even channel count, got {out_channels}")
        if pool < 1 or pool % 2 == 0:
            raise ValueError(f"the envelope's pooling must be an odd number of frames, got {pool}")
        super().__init__(in_channels, out_channels, kernel, stride, padding, "none")
        self.out_channels, self.pool = out_channels // 2, pool
        self.span, self.left = kernel + (pool - 1) * stride, padding + pool // 2 * stride

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The power, its pooling and the log in fp32 whatever the conv's precision (bf16 under autocast).
        x = strided_conv(x, self.conv.weight, self.conv.bias, self.stride, self.padding).float()
        power = x.unflatten(-1, (-1, 2)).square().sum(-1)  # (B, T', bands): the pairs are adjacent channels
        lengths = self.output_lengths(lengths).clamp(min=0)
        padded = x.device.type != "cpu" or bool((lengths < x.shape[1]).any())
        mask = length_mask(lengths, x.shape[1]).unsqueeze(-1) if padded else None
        if self.pool > 1:
            if mask is not None:
                power = power * mask  # the frames past the end count as silence, as one utterance's padding does
            power = F.avg_pool1d(power.transpose(1, 2), self.pool, 1, self.pool // 2).transpose(1, 2)
        x = torch.log(power + self.eps)
        if mask is not None:
            x = x * mask
        return x, lengths


def mel_gabor_filterbank(channels: int, kernel: int, sample_rate: int = 16000, low_hz: float = 60.0,
                         high_hz: float | None = None) -> torch.Tensor:
    """Band-pass filters for a first conv: cosine and sine Gabor pairs at mel-spaced centres.

    ``channels // 2`` centre frequencies are spaced evenly on the mel scale
    from ``low_hz`` to ``high_hz`` (default 0.475 x the sample rate); each
    filter's Gaussian envelope has a bandwidth (full width at half maximum)
    of the mel spacing there, clipped to what ``kernel`` taps can hold, as
    LEAF's Gabor initialization (Zeghidour et al. 2021) mimics a mel
    filterbank. A pair (cosine, sine) lets later layers read the band's
    envelope whatever the phase; an odd channel count gets one more cosine
    filter. Each filter has unit L2 norm.

    Returns:
        (channels, 1, kernel) weights for ``nn.Conv1d(1, channels, kernel)``.
    """
    high_hz = 0.475 * sample_rate if high_hz is None else high_hz
    pairs = (channels + 1) // 2
    mel = torch.linspace(2595 * math.log10(1 + low_hz / 700), 2595 * math.log10(1 + high_hz / 700), pairs + 2,
                         dtype=torch.float64)
    hz = 700 * (10 ** (mel / 2595) - 1)
    centre, bandwidth = hz[1:-1], (hz[2:] - hz[:-2]) / 2
    sigma_t = 2 * math.log(2) ** 0.5 / (2 * math.pi * bandwidth) * sample_rate / 2 ** 0.5  # in samples
    sigma_t = sigma_t.clamp(max=kernel / 6)  # +-3 sigma inside the kernel
    t = torch.arange(kernel, dtype=torch.float64) - (kernel - 1) / 2
    envelope = torch.exp(-0.5 * (t[None, :] / sigma_t[:, None]) ** 2)
    phase = 2 * math.pi * centre[:, None] / sample_rate * t[None, :]
    filters = torch.stack([envelope * torch.cos(phase), envelope * torch.sin(phase)], dim=1).reshape(-1, kernel)
    filters = filters[:channels]
    filters = filters / filters.norm(dim=1, keepdim=True)
    return filters.unsqueeze(1).float()


class ConvEncoder(nn.Module):
    """A stack of strided conv blocks; an empty spec is the identity.

    Args:
        in_dim: channels of the input frames (1 for waveforms).
        spec: one ``(channels, kernel, stride, padding)`` per block.
        norm: ``batch`` | ``channel`` | ``channel_unbiased`` (CPC_audio's
            exact channel norm) | ``none``. Batch statistics include the
            padded frames of a batch; training windows are all full length.
        init: ``default`` (PyTorch's) | ``filterbank``: the first conv starts
            as :func:`mel_gabor_filterbank` with zero bias (waveform input).
        first: ``conv`` (conv, norm, ReLU like the others) | ``log_envelope``:
            the first block is a :class:`LogEnvelopeBlock`, so its
            ``channels / 2`` outputs are log band envelopes.
        envelope_pool: with ``log_envelope``, frames of band power averaged before the log.
        sample_rate: of the waveform, for the filterbank's frequencies.
        activation: ``relu`` | ``gelu`` after each conv block's norm.
    """

    def __init__(self, in_dim: int, spec: list[tuple[int, int, int, int]], norm: str = "channel",
                 init: str = "default", sample_rate: int = 16000, first: str = "conv", envelope_pool: int = 1,
                 activation: str = "relu"):
        super().__init__()
        if first not in ("conv", "log_envelope"):
            raise ValueError(f"unknown first encoder block {first!r}")
        blocks, channels = [], in_dim
        for i, (out_channels, kernel, stride, padding) in enumerate(spec):
            if i == 0 and first == "log_envelope":
                blocks.append(LogEnvelopeBlock(channels, out_channels, kernel, stride, padding, envelope_pool))
                channels = out_channels // 2
                continue
            blocks.append(ConvBlock(channels, out_channels, kernel, stride, padding, norm, activation))
            channels = out_channels
        self.blocks = nn.ModuleList(blocks)
        if init == "filterbank":
            first = blocks[0].conv
            if first.in_channels != 1:
                raise ValueError(f"a filterbank init needs one input channel, got {first.in_channels}")
            with torch.no_grad():
                first.weight.copy_(mel_gabor_filterbank(first.out_channels, first.kernel_size[0], sample_rate))
                first.bias.zero_()
        elif init != "default":
            raise ValueError(f"unknown encoder init {init!r}")
        self.out_dim = channels
        self.hop = math.prod(s for _, _, s, _ in spec)
        self.receptive_field = 1
        jump = 1
        for block in self.blocks:
            self.receptive_field += (block.span - 1) * jump
            jump *= block.stride

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            lengths = block.output_lengths(lengths)
        return lengths.clamp(min=0)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, frames, in_dim) -> (batch, frames', out_dim)."""
        for block in self.blocks:
            x, lengths = block(x, lengths)
        return x, lengths
