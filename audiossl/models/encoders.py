"""Strided convolutional encoder built from a spec list.

The CPC encoder (van den Oord et al. 2018) is five convolutions with kernels
10, 8, 4, 4, 4 and strides 5, 4, 2, 2, 2: 160 samples (10 ms at 16 kHz) per
output frame. CPC_audio pads them by 3, 2, 1, 1, 1 so that 20480 samples give
exactly 128 frames, and normalizes each frame over channels (its
``ChannelNorm``, the default here); the paper used batch norm.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from audiossl.models.frontends import length_mask


class ChannelNorm(nn.Module):
    """Normalizes each frame over its channels, with a learned scale and shift.

    Works on the encoder's (batch, channels, 1, frames) channels-last tensors,
    whose memory is already (batch, 1, frames, channels): the permuted view is
    contiguous, so the layer norm runs without a copy.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, 1, T)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "channel":
        return ChannelNorm(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown encoder norm {kind!r}")


class ConvBlock(nn.Module):
    """Conv -> norm -> ReLU, with the output length computed from the input's.

    The 1-D convolution is run as a (1, kernel) 2-D convolution on
    channels-last tensors: on CPUs oneDNN's channels-last kernels make the
    encoder's forward and backward about 1.5x faster than ``Conv1d`` plus
    transposes for the norm (``audiossl bench``; docs/benchmarks.md).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, padding: int, norm: str):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, (1, kernel), (1, stride), (0, padding))
        self.norm = make_norm(norm, out_channels)
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(lengths + 2 * self.padding - self.kernel, self.stride, rounding_mode="floor") + 1

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.relu(self.norm(self.conv(x)))  # (B, C, 1, T')
        lengths = self.output_lengths(lengths).clamp(min=0)
        if bool((lengths < x.shape[-1]).any()):
            # Zero the frames past each sequence's end: the next conv then sees
            # the same zeros a per-utterance run pads with.
            x = x * length_mask(lengths, x.shape[-1])[:, None, None, :]
        return x, lengths


class ConvEncoder(nn.Module):
    """A stack of strided conv blocks; an empty spec is the identity.

    Args:
        in_dim: channels of the input frames (1 for waveforms).
        spec: one ``(channels, kernel, stride, padding)`` per block.
        norm: ``batch`` | ``channel`` | ``none``. Batch statistics include the
            padded frames of a batch; training windows are all full length.
    """

    def __init__(self, in_dim: int, spec: list[tuple[int, int, int, int]], norm: str = "channel"):
        super().__init__()
        blocks, channels = [], in_dim
        for out_channels, kernel, stride, padding in spec:
            blocks.append(ConvBlock(channels, out_channels, kernel, stride, padding, norm))
            channels = out_channels
        self.blocks = nn.ModuleList(blocks)
        self.out_dim = channels
        self.hop = math.prod(s for _, _, s, _ in spec)
        self.receptive_field = 1
        jump = 1
        for _, kernel, stride, _ in spec:
            self.receptive_field += (kernel - 1) * jump
            jump *= stride

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            lengths = block.output_lengths(lengths)
        return lengths.clamp(min=0)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, frames, in_dim) -> (batch, frames', out_dim)."""
        if not self.blocks:
            return x, lengths
        x = x.transpose(1, 2).unsqueeze(2).contiguous(memory_format=torch.channels_last)  # (B, C, 1, T)
        for block in self.blocks:
            x, lengths = block(x, lengths)
        return x.permute(0, 2, 3, 1)[:, 0], lengths  # (B, T', C), contiguous
