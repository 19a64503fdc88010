"""What the masked family (wav2vec 2.0, HuBERT, BEST-RQ) shares: span masks over encoder frames, the learned
mask embedding at the context network's input, the encoder's gradient scale and its feature penalty.

The mask is fairseq's ``compute_mask_indices`` (``mask_selection: static``,
``no_mask_overlap: False``), which wav2vec 2.0 (Baevski et al. 2020, Sec. 3.1)
and HuBERT (Hsu et al. 2021) both use: a sequence of L valid frames gets
``p L`` span starts, rounded down or up at random so that the expectation is
exactly ``p L`` (at least one), drawn without replacement from the
``L - M + 1`` first frames; each start masks M frames, spans may overlap (so
less than ``p M`` of the frames are covered: about 49 % for p = 0.065 and
M = 10, as the paper says). ``p`` is the paper's start probability: fairseq's
``mask_prob`` is ``p M`` (0.65 for wav2vec 2.0 Base, 0.8 for HuBERT Base).

Draws come from torch's global generator on the frames' device, whose state
every checkpoint saves: a resumed run draws the masks the uninterrupted run
would have drawn.
"""

from __future__ import annotations

import torch
from torch import nn

from audiossl.models.lengths import length_mask

__all__ = ["MaskedEncoding", "choose_distinct", "feature_penalty", "scale_gradient", "span_mask"]


def choose_distinct(count: torch.Tensor, slots: torch.Tensor, num: int) -> torch.Tensor:
    """For each row, ``count`` distinct integers drawn uniformly from ``0 .. slots - 1``, sorted.

    Args:
        count: (batch,) how many to draw per row (at most ``slots``).
        slots: (batch,) how many there are to draw from.
        num: columns of the result (at least ``count.max()``).

    Returns:
        (batch, num) int64: row b's first ``count[b]`` entries are its draws in increasing order, the others
        hold ``slots.max()``.
    """
    width = int(slots.max())
    keys = torch.rand(slots.shape[0], width, device=slots.device)
    keys = keys.masked_fill(~length_mask(slots, width), 2.0)  # never among the count smallest
    chosen = keys.argsort(dim=1)[:, :num]
    valid = torch.arange(num, device=slots.device)[None, :] < count[:, None]
    return chosen.masked_fill(~valid, width).sort(dim=1).values


def span_mask(lengths: torch.Tensor, frames: int, prob: float, span: int) -> torch.Tensor:
    """(batch, frames) bool: spans of ``span`` frames starting at ``prob`` of each sequence's frames.

    Every sequence with a valid frame gets at least one span; spans stay inside each sequence's valid length
    (a sequence shorter than ``span`` is masked whole).
    """
    device = lengths.device
    lengths = lengths.clamp(max=frames)
    slots = (lengths - span + 1).clamp(min=1)
    expected = lengths.float() * prob
    count = (expected + torch.rand(expected.shape, device=device)).floor().long()
    count = torch.minimum(count.clamp(min=1), slots).masked_fill(lengths == 0, 0)
    num = max(int(count.max()), 1) if count.numel() else 1
    starts = choose_distinct(count, slots, num)  # (B, S); unused columns hold slots.max()
    offsets = torch.arange(span, device=device)
    positions = (starts[..., None] + offsets).flatten(1)  # (B, S * M)
    used = (torch.arange(num, device=device)[None, :] < count[:, None]).repeat_interleave(span, dim=1)
    inside = used & (positions < lengths[:, None])
    positions = positions.masked_fill(~inside, frames).clamp(max=frames)  # the spare column absorbs the rest
    mask = torch.zeros(lengths.shape[0], frames + 1, dtype=torch.bool, device=device)
    mask.scatter_(1, positions, True)
    return mask[:, :frames]


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` forward, ``scale`` times its gradient backward (fairseq's ``GradMultiply``, ``feature_grad_mult``)."""
    if scale == 1.0:
        return x
    return x * scale + x.detach() * (1.0 - scale)


class MaskedEncoding(nn.Module):
    """The encoder's frames, masked, through the context network.

    Masked frames of ``z`` are replaced by one learned vector before the
    context network (its input projection maps it like any frame), so the
    context network never reads a masked frame's features. The vector is
    fairseq's ``mask_emb``, there of the Transformer's width after
    ``post_extract_proj``; here of the encoder's width, before the context
    network's own input projection (the same family of functions, as the
    projection is affine).

    Args:
        dim: width of ``z``.
        prob, span: the mask (:func:`span_mask`).
        grad_mult: scale of the encoder's gradient (wav2vec 2.0 and HuBERT Base: 0.1).
    """

    def __init__(self, dim: int, prob: float, span: int, grad_mult: float = 1.0):
        super().__init__()
        self.prob, self.span, self.grad_mult = prob, span, grad_mult
        self.mask_embedding = nn.Parameter(torch.empty(dim).uniform_())  # fairseq: mask_emb.uniform_()

    def encode(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's encoder frames z (batch, frames, dim), gradient scaled, and their lengths; under
        ``augment: past`` those of the augmented windows (``augmented_wavs``)."""
        wavs = batch.get("augmented_wavs", batch["wavs"])
        z, lengths = model.encode(wavs, batch["lengths"])
        return scale_gradient(z, self.grad_mult), lengths

    def contextualize(self, model: nn.Module, z: torch.Tensor, lengths: torch.Tensor,
                      mask: torch.Tensor | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every context layer's output on ``z`` masked (``mask``, or a fresh :func:`span_mask`), and the mask."""
        if mask is None:
            mask = span_mask(lengths, z.shape[1], self.prob, self.span)
        masked = torch.where(mask.unsqueeze(-1), self.mask_embedding.to(z.dtype), z)
        layers, _ = model.contextualize(masked, lengths)
        return layers, mask


def feature_penalty(z: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean squared value of the valid frames of ``z`` (fairseq's ``features_pen``), float32."""
    valid = length_mask(lengths, z.shape[1]).unsqueeze(-1).float()
    return (z.float().pow(2) * valid).sum() / (valid.sum() * z.shape[-1]).clamp(min=1.0)
