"""Lengths travel with tensors: every forward takes and returns ``(x, lengths)``, and this mask says which
positions of a padded batch are real."""

from __future__ import annotations

import torch

__all__ = ["length_mask"]


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(batch, max_len) bool, True at valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]
