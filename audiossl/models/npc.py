"""NPC's masked-convolution context network and its VQ bottleneck.

Non-autoregressive predictive coding (Liu, Chung and Glass 2020, "Non-
Autoregressive Predictive Coding for Learning Speech Representations from
Local Dependencies"). A stack of conv blocks computes "unmasked" features;
each block also has a masked convolution whose centre taps are zero, and the
masked convolutions' outputs are summed into the representation of frame t.
The centre mask grows by 2 frames per block because each block's unmasked
features see one more frame on each side: with an input mask of 5 the blocks'
masks are 7, 9, 11 and 13, so the representation of frame t never depends on
input frames t - 2 .. t + 2, and does depend on t - 3 and t + 3.

Reference implementation (Alexander-H-Liu/NPC, ``model.paras`` of its config)
against our settings: ``n_blocks`` = ``context_layers`` (4), ``hidden_size``
= ``context_dim`` (512), ``dropout`` = ``context_dropout`` (0.1),
``residual`` = ``context_residual`` (True), ``kernel_size`` 15 and
``mask_size`` 5 (the :class:`NPCContext` defaults), ``batch_norm: True`` and
``activate: relu`` (fixed); ``vq.codebook_size`` = ``npc_vq_codes`` per
group, ``npc_vq_groups`` groups of ``context_dim / npc_vq_groups`` channels
(``vq.code_dim``), ``vq.gumbel_temperature`` = ``npc_vq_temperature``. The
reference's ``disable_cross_layer`` and ``dim_bottleneck`` options are not
provided. The quantizer belongs to the NPC objective (it sits between the
representation and the postnet); the network here ends at the summed masked
features, the representation the reference returns as ``feat``.

Batch normalization uses the batch's statistics in training, so there the
prediction of x_t depends on x_t through those statistics (as in the
reference); in eval mode the mask is exact.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from audiossl.models.context import ContextNetwork
from audiossl.models.lengths import length_mask


class MaskedConv(nn.Module):
    """Conv1d whose ``mask`` centre taps are zero, then tanh (NPC's MaskConvBlock).

    Args:
        channels: input and output channels.
        kernel: odd kernel width; output frame t reads frames t - kernel // 2
            .. t + kernel // 2.
        mask: odd number of centre taps that are never read.
    """

    def __init__(self, channels: int, kernel: int, mask: int):
        super().__init__()
        if kernel % 2 == 0 or mask % 2 == 0 or not 0 < mask < kernel:
            raise ValueError(f"masked conv needs odd kernel > odd mask > 0, got kernel {kernel}, mask {mask}")
        self.conv = nn.Conv1d(channels, channels, kernel, padding=kernel // 2)
        taps = torch.ones(kernel)
        taps[(kernel - mask) // 2:(kernel + mask) // 2] = 0
        self.register_buffer("taps", taps, persistent=False)
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, channels, frames) -> (batch, channels, frames)."""
        weight = self.conv.weight * self.taps
        return torch.tanh(F.conv1d(x, weight, self.conv.bias, padding=self.conv.padding))


class NPCBlock(nn.Module):
    """conv(3) -> BN -> ReLU -> conv(1) -> BN -> dropout (+ input) -> ReLU, and a masked conv.

    Args:
        in_dim: input channels.
        channels: output channels.
        kernel: the masked convolution's kernel.
        mask: the masked convolution's centre mask.
        residual: add the block's input to its output (needs in_dim == channels).
        dropout: before the residual sum.
    """

    def __init__(self, in_dim: int, channels: int, kernel: int, mask: int, residual: bool, dropout: float):
        super().__init__()
        if residual and in_dim != channels:
            raise ValueError(f"a residual NPC block needs in_dim == channels, got {in_dim} and {channels}")
        self.conv = nn.Conv1d(in_dim, channels, 3, padding=1)
        self.norm1 = nn.BatchNorm1d(channels)
        self.linear = nn.Conv1d(channels, channels, 1)
        self.norm2 = nn.BatchNorm1d(channels)
        self.dropout = nn.Dropout(dropout)
        self.residual = residual
        self.masked = MaskedConv(channels, kernel, mask)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (batch, in_dim, frames), valid (batch, 1, frames) -> unmasked and masked features.

        Both outputs are (batch, channels, frames), zero past each sequence's
        end, so the next convolution sees the zeros a per-utterance run pads with.
        """
        y = torch.relu(self.norm1(self.conv(x)))
        y = self.dropout(self.norm2(self.linear(y)))
        if self.residual:
            y = y + x
        y = torch.relu(y) * valid
        return y, self.masked(y) * valid


class NPCContext(ContextNetwork):
    """NPC's network as a context network.

    ``forward`` returns the blocks' unmasked outputs followed by the sum of
    their masked convolutions, so in :meth:`SSLModel.extract_features`
    ``context`` is NPC's representation (the summed masked features) and
    ``context_1 .. context_L`` are the blocks' unmasked features.

    Args:
        in_dim: size of the input frames (80 log-mel bins).
        channels: hidden size of every block.
        num_blocks: conv blocks; block i's masked conv hides ``mask + 2 (i + 1)``
            taps, which must stay below ``kernel``.
        residual: residual connections in every block but the first.
        dropout: inside the blocks.
        kernel: the masked convolutions' kernel (reference: 15).
        mask: input frames hidden around frame t (reference: 5).
    """

    causal = False
    summary_output = True

    def __init__(self, in_dim: int, channels: int = 512, num_blocks: int = 4, residual: bool = True,
                 dropout: float = 0.1, kernel: int = 15, mask: int = 5):
        super().__init__()
        masks = [mask + 2 * (i + 1) for i in range(num_blocks)]
        if num_blocks < 1 or masks[-1] >= kernel:
            raise ValueError(f"NPC with {num_blocks} blocks needs masked-conv masks {masks}, each narrower "
                             f"than the kernel {kernel}")
        self.layers = nn.ModuleList(
            NPCBlock(in_dim if i == 0 else channels, channels, kernel, masks[i], residual and i > 0, dropout)
            for i in range(num_blocks))
        self.input_mask = mask
        self.out_dim = channels

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, state: list | None = None
                ) -> tuple[list[torch.Tensor], None]:
        """x (batch, frames, in_dim) -> [unmasked block outputs..., masked sum], each (batch, frames, channels)."""
        if state is not None:
            raise ValueError("the NPC context carries no state across chunks; pass whole sequences")
        valid = length_mask(lengths, x.shape[1]).unsqueeze(1).to(x.dtype)  # (B, 1, T)
        hidden = x.transpose(1, 2) * valid  # (B, C, T)
        outputs, summed = [], None
        for block in self.layers:
            hidden, masked = block(hidden, valid)
            summed = masked if summed is None else summed + masked
            outputs.append(hidden.transpose(1, 2))
        outputs.append(summed.transpose(1, 2))
        return outputs, None


class GumbelQuantizer(nn.Module):
    """Grouped vector quantization with a straight-through Gumbel-softmax.

    The input's channels are split into ``groups`` slices; each slice's
    logits over ``codes`` entries pick one learned code vector of the slice's
    size (the reference's ``VQLayer``: a linear map to logits and a codebook
    without bias). Training draws a hard one-hot sample with
    ``F.gumbel_softmax(hard=True)`` (gradients through the soft sample); eval
    takes the argmax.

    Args:
        dim: input and output size, divisible by ``groups``.
        groups: independent codebooks.
        codes: entries per codebook.
        temperature: Gumbel-softmax temperature.
    """

    def __init__(self, dim: int, groups: int, codes: int, temperature: float = 1.0):
        super().__init__()
        if dim % groups:
            raise ValueError(f"VQ: {dim} channels do not split into {groups} groups")
        self.groups, self.codes, self.temperature = groups, codes, temperature
        group_dim = dim // groups
        bound = 1 / math.sqrt(group_dim)  # nn.Linear's initialization, per group
        self.logit_weight = nn.Parameter(torch.empty(groups, group_dim, codes).uniform_(-bound, bound))
        self.logit_bias = nn.Parameter(torch.empty(groups, codes).uniform_(-bound, bound))
        self.codebook = nn.Parameter(torch.empty(groups, codes, group_dim).uniform_(-1 / math.sqrt(codes),
                                                                                   1 / math.sqrt(codes)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (batch, frames, dim) -> quantized (batch, frames, dim), one-hot (batch, frames, groups, codes)."""
        batch, frames, dim = x.shape
        slices = x.reshape(batch, frames, self.groups, dim // self.groups)  # (B, T, G, d)
        logits = torch.einsum("btgd,gdv->btgv", slices, self.logit_weight) + self.logit_bias
        if self.training:
            onehot = F.gumbel_softmax(logits.float(), tau=self.temperature, hard=True, dim=-1).to(x.dtype)
        else:
            onehot = F.one_hot(logits.argmax(-1), self.codes).to(x.dtype)
        quantized = torch.einsum("btgv,gvd->btgd", onehot, self.codebook)
        return quantized.reshape(batch, frames, dim), onehot
