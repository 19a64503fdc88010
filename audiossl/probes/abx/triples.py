"""ABX triples on frame-label items: for each item as X, (A, B) pairs drawn within or across speakers.

A and X share the centre phone, B has another one, and, with
``context="triphone"``, A, B and X share the left and right phones
(ZeroSpeech's "on phone, by context"); ``within``: A, B and X come from one
speaker; ``across``: A and B from one speaker, X from another. For each X and
condition, at most ``max_per_item`` (A, B) pairs are drawn without
replacement from all admissible ones with a seeded generator (0: all). The
draw is vectorized: items sorted by (context, speaker, centre phone) make
every candidate set a few contiguous slices, so no pair list is built.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

import numpy as np

from audiossl.probes.abx.items import Items

__all__ = ["CONDITIONS", "CONTEXTS", "Context", "context_key", "sample_triples"]

CONDITIONS = ("within", "across")
Context = Literal["triphone", "none"]  # triphone: A, B and X share both neighbours; none: no context condition
CONTEXTS = typing.get_args(Context)


def context_key(items: Items, context: str) -> np.ndarray:
    """(items,) one integer per (left, right) phone pair with ``triphone``; all 0 with ``none``."""
    if context == "none":
        return np.zeros(len(items), dtype=np.int64)
    width = int(max(items.left.max(initial=0), items.right.max(initial=0))) + 1
    return items.left * width + items.right


@dataclass(frozen=True)
class _Layout:
    """Items sorted by (context, speaker, centre): each (context, speaker) group is a contiguous block, each
    centre phone a contiguous slice of it, each context a contiguous run of groups."""
    order: np.ndarray  # sorted position -> item
    group: np.ndarray  # item -> its group
    position: np.ndarray  # item -> its place within its group
    group_start: np.ndarray  # group -> its first sorted position
    group_size: np.ndarray
    context_first: np.ndarray  # context -> its first group
    context_size: np.ndarray  # context -> its number of groups
    context_of_group: np.ndarray
    width: int  # centre phones (slice keys are group * width + centre)
    slice_keys: np.ndarray  # (group, centre) slices, ascending
    slice_size: np.ndarray
    slice_lo: np.ndarray  # each slice's offset within its group

    @classmethod
    def of(cls, items: Items, key: np.ndarray) -> _Layout:
        count, centre = len(items), items.centre
        order = np.lexsort((np.arange(count), centre, items.speaker, key))
        starts_group = np.r_[True, (np.diff(key[order]) != 0) | (np.diff(items.speaker[order]) != 0)]
        group_sorted = np.cumsum(starts_group) - 1
        group_start = np.flatnonzero(starts_group)
        group = np.empty(count, dtype=np.int64)
        group[order] = group_sorted
        position = np.empty(count, dtype=np.int64)
        position[order] = np.arange(count) - group_start[group_sorted]
        starts_context = np.r_[True, np.diff(key[order][group_start]) != 0]
        context_first = np.flatnonzero(starts_context)
        width = int(centre.max()) + 1
        slice_key = group_sorted * width + centre[order]
        slice_start = np.flatnonzero(np.r_[True, np.diff(slice_key) != 0])
        return cls(order, group, position, group_start, np.diff(np.r_[group_start, count]), context_first,
                   np.diff(np.r_[context_first, len(group_start)]), np.cumsum(starts_context) - 1, width,
                   slice_key[slice_start], np.diff(np.r_[slice_start, count]),
                   slice_start - group_start[group_sorted[slice_start]])

    def entries(self, x_ids: np.ndarray, condition: str) -> tuple[np.ndarray, np.ndarray]:
        """One entry per (X, group the A and B come from): X's own group within speakers, every other group
        of X's context across them."""
        if condition == "within":
            return x_ids, self.group[x_ids]
        contexts = self.context_of_group[self.group[x_ids]]
        sizes = self.context_size[contexts]
        entry_x = np.repeat(x_ids, sizes)
        offsets = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        entry_group = np.repeat(self.context_first[contexts], sizes) + offsets
        keep = entry_group != self.group[entry_x]
        return entry_x[keep], entry_group[keep]


def _draw_pairs(rng: np.random.Generator, x_ids: np.ndarray, totals: np.ndarray,
                max_per_item: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Each X's pairs as flat indices into the concatenation of its entries' A x B grids, and their X; None
    when no X has a pair."""
    draws, owners = [], []
    for x, total in zip(x_ids, totals):
        if total == 0:
            continue
        flat = (np.sort(rng.choice(total, size=max_per_item, replace=False))
                if max_per_item and total > max_per_item else np.arange(total))
        draws.append(flat)
        owners.append(np.full(len(flat), x))
    return (np.concatenate(draws), np.concatenate(owners)) if draws else None


def _chunk_triples(layout: _Layout, centre: np.ndarray, x_ids: np.ndarray, condition: str,
                   rng: np.random.Generator, max_per_item: int) -> np.ndarray | None:
    """The (A, B, X) triples of the X items ``x_ids`` (consecutive), or None when they have none."""
    first = int(x_ids[0])
    entry_x, entry_group = layout.entries(x_ids, condition)
    wanted = entry_group * layout.width + centre[entry_x]
    found = np.minimum(np.searchsorted(layout.slice_keys, wanted), len(layout.slice_keys) - 1)
    present = layout.slice_keys[found] == wanted
    lo = np.where(present, layout.slice_lo[found], 0)
    same = np.where(present, layout.slice_size[found], 0)  # items of X's phone in the group
    num_a = same - (condition == "within")  # within: X is not its own A
    num_b = layout.group_size[entry_group] - same
    pairs = num_a * num_b
    totals = np.bincount(entry_x - first, weights=pairs, minlength=len(x_ids)).astype(np.int64)
    drawn = _draw_pairs(rng, x_ids, totals, max_per_item)
    if drawn is None:
        return None
    flat, owner = drawn
    ends = np.cumsum(pairs)
    base = np.r_[0, np.cumsum(totals)][owner - first]  # X's first flat index in ``ends``
    entry = np.searchsorted(ends, base + flat, side="right")
    rest = base + flat - (ends[entry] - pairs[entry])
    a, b = rest // num_b[entry], rest % num_b[entry]
    a = lo[entry] + a
    if condition == "within":
        a = a + (a >= layout.position[owner])  # skip X itself
    b = np.where(b < lo[entry], b, b + same[entry])
    block_start = layout.group_start[entry_group[entry]]
    return np.stack([layout.order[block_start + a], layout.order[block_start + b], owner], axis=1)


def sample_triples(items: Items, condition: str, context: str = "triphone", max_per_item: int = 20,
                   seed: int = 1, chunk: int = 4096) -> np.ndarray:
    """(A, B, X) item triples of one condition, at most ``max_per_item`` per X.

    Args:
        items: from :func:`find_items`.
        condition: ``within`` (A, B, X of one speaker) or ``across`` (A, B of
            one speaker, X of another).
        context: ``triphone`` (A, B, X share both neighbours) or ``none``.
        max_per_item: most (A, B) pairs per X, drawn without replacement; 0: all.
        seed: the draw; the same seed gives the same triples.
        chunk: X items handled at once (bounds memory, not the result).

    Returns:
        (triples, 3) int64 item indices, columns A, B, X.
    """
    if condition not in CONDITIONS:
        raise ValueError(f"condition {condition!r} is not one of {', '.join(CONDITIONS)}")
    if context not in CONTEXTS:
        raise ValueError(f"context {context!r} is not one of {', '.join(CONTEXTS)}")
    count = len(items)
    if count == 0:
        return np.zeros((0, 3), dtype=np.int64)
    rng = np.random.default_rng([seed, CONDITIONS.index(condition)])
    layout = _Layout.of(items, context_key(items, context))
    triples = []
    for first in range(0, count, chunk):
        found = _chunk_triples(layout, items.centre, np.arange(first, min(first + chunk, count)), condition, rng,
                               max_per_item)
        if found is not None:
            triples.append(found)
    return np.concatenate(triples).astype(np.int64) if triples else np.zeros((0, 3), dtype=np.int64)
