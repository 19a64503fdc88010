"""Distances between ABX items: frame distances aligned by DTW, batched over many pairs.

An item is a run of feature frames (a phone occurrence). Two items are
compared frame by frame, ``angular`` = arccos(cos)/pi (ABXpy's and
Libri-light's ``cosine``, the ABX default) or ``cosine`` = 1 - cos, on
unit-norm frames; the frames are aligned by DTW (steps right, down,
diagonal) and the distance is the mean along the best path (the accumulated
cost divided by the path's length, as ABXpy's normalized DTW). The DTW runs
batched over many pairs at once, one anti-diagonal at a time. Both
:mod:`audiossl.probes.abx.labels` and :mod:`audiossl.probes.abx.item_files` score with it.
"""

from __future__ import annotations

import typing
from typing import Literal

import numpy as np
import torch

__all__ = ["DISTANCES", "Distance", "dtw_mean_cost", "pair_distances"]

Distance = Literal["angular", "cosine"]  # arccos(cos) / pi, or 1 - cos
DISTANCES = typing.get_args(Distance)
BATCH_ELEMENTS = 1 << 24  # floats per DTW batch, summed over its tensors


def dtw_mean_cost(cost: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """DTW of a batch of padded cost matrices: the mean cost along each best path.

    Steps go right, down or diagonally; the best path minimizes the summed
    cost, and its mean is that sum over the number of cells on the path (on a
    tie between predecessors the diagonal wins, then the one above). Cells
    past a matrix's own ``rows x cols`` never influence it.

    Args:
        cost: (batch, max rows, max cols) frame distances.
        rows: (batch,) valid rows of each matrix (at least 1).
        cols: (batch,) valid columns (at least 1).

    Returns:
        (batch,) mean path costs.
    """
    batch, num_rows, num_cols = cost.shape
    width = num_cols + 1
    # Accumulated cost and path length on a grid with a border row and column:
    # acc[0, 0] = 0, the rest of the border is unreachable.
    acc = cost.new_full((batch, (num_rows + 1) * width), float("inf"))
    acc[:, 0] = 0.0
    steps = torch.zeros_like(acc)
    flat_cost = cost.reshape(batch, -1)
    for diagonal in range(2, num_rows + num_cols + 1):  # i + j on the 1-based grid
        i = torch.arange(max(1, diagonal - num_cols), min(num_rows, diagonal - 1) + 1, device=cost.device)
        j = diagonal - i
        here = i * width + j
        before = torch.stack([here - width - 1, here - width, here - 1])  # diagonal, above, left
        best, which = acc[:, before].min(dim=1)  # (B, cells)
        acc[:, here] = flat_cost[:, (i - 1) * num_cols + j - 1] + best
        previous = steps[:, before].gather(1, which.unsqueeze(1)).squeeze(1)
        steps[:, here] = previous + 1
    end = rows * width + cols
    index = torch.arange(batch, device=cost.device)
    return acc[index, end] / steps[index, end]


def pair_distances(frames: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor, pairs: torch.Tensor,
                   distance: str = "angular") -> torch.Tensor:
    """DTW distances between pairs of items, batched by length.

    Args:
        frames: (total frames, dim) every item's frames, one after another,
            each frame of unit norm.
        offsets: (items,) first frame of each item in ``frames``.
        lengths: (items,) frames of each item (at least 1).
        pairs: (pairs, 2) item indices.
        distance: ``angular`` or ``cosine``.

    Returns:
        (pairs,) distances.
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance {distance!r} is not one of {', '.join(DISTANCES)}")
    device = frames.device
    pairs, offsets, lengths = pairs.to(device), offsets.to(device), lengths.to(device)
    out = torch.empty(len(pairs), device=device)
    size = lengths[pairs].amax(dim=1)  # (P,) padded side of each pair's matrix
    order = torch.argsort(size)
    sizes = size[order].cpu().numpy()
    start = 0
    while start < len(order):
        side = int(sizes[start])
        # Pairs of one padded side: as many as the budget allows.
        stop = int(np.searchsorted(sizes, side, side="right"))
        stop = min(stop, start + max(1, BATCH_ELEMENTS // (side * side * 3 + 2 * side * frames.shape[1])))
        index = order[start:stop]
        first, second = pairs[index, 0], pairs[index, 1]
        rows, cols = lengths[first], lengths[second]
        # Frame indices of each item, padded by repeating its last frame.
        steps = torch.arange(side, device=device)
        pick_a = offsets[first, None] + torch.minimum(steps, rows[:, None] - 1)  # (B, side)
        pick_b = offsets[second, None] + torch.minimum(steps, cols[:, None] - 1)
        similarity = torch.bmm(frames[pick_a], frames[pick_b].transpose(1, 2)).clamp(-1.0, 1.0)  # (B, side, side)
        cost = torch.acos(similarity) / np.pi if distance == "angular" else 1.0 - similarity
        out[index] = dtw_mean_cost(cost, rows, cols)
        start = stop
    return out
