"""ABX on standard item files: Libri-light, ZeroSpeech 2021 and zrc-abx2's conventions.

Libri-light (Kahn et al. 2020, ``eval/eval_ABX.py``), the ZeroSpeech 2021
phonetic task and its successor ``zrc-abx2`` (the ``zerospeech-libriabx2``
package) all score features against an *item file*: a header line, then one
line per phone occurrence::

    #file onset offset #phone prev-phone next-phone speaker
    6295-244435-0000 0.2500 0.3300 EH D L 6295

with times in seconds. This module reads and writes such files and scores a
features folder on them with the machinery of :mod:`audiossl.probes.abx`
(items, batched DTW, cell averaging), following the reference's conventions
so the error rates can stand beside published ones:

- Frames: an item keeps frames ``ceil(r * onset - 0.5)`` up to, not
  including, ``floor(r * offset - 0.5)``, with ``r`` the frame rate (100 per
  second for 10 ms frames; the reference's ``1 / --feature_size``), clipped
  to the utterance. An item left without frames is dropped, as the reference
  drops it.
- Identities: phones, contexts (previous + next phone) and speakers are
  numbered in order of first appearance in the file, and items are taken file
  by file in order of first appearance, each file's items in line order.
  Groups are visited in that numbering, which fixes the sampling below.
- Groups and sampling: items sharing a context (``within``; ``any`` ignores
  it), a speaker and a phone form a group. For every ordered pair of phones
  (A, B) of one speaker (and context), the A and B groups are each cut to at
  most ``max_size_group`` items by ``random.sample`` of a generator seeded with
  ``seed`` (the reference's ``--max_size_group`` 10, ``--seed`` 3459), drawn
  again for every pair. Within speakers X runs over the A group (X != A);
  across speakers X is the group of A's phone (and context) of another
  speaker, at most ``max_x_across`` such speakers drawn per A group
  (``--max_x_across`` 5), and B comes from A's speaker. The draws are made in
  the reference's order, so the same file and seed give the same triples.
- Distance: angular, ``arccos(cos) / pi`` between unit-norm frames (the
  reference's ``cosine``; a frame of zeros is at distance 1 from any other
  frame and 0 from another zero frame, as its normalization makes it), DTW
  averaged along the best path.
- Score: a cell (speaker(s), A's phone, B's phone, context) scores the share
  of its (A, B, X) triples with d(A, X) > d(B, X), ties counting half. Within
  speakers cells are averaged over contexts, then speakers, then phone pairs;
  across speakers over (context, X's speaker) together, then A's speaker,
  then phone pairs, as ``zrc-abx2`` averages.

Conditions are ``within``/``across`` speakers by ``within``/``any`` context
(zrc-abx2 2.0); Libri-light's triphone item files are the ``within`` context
condition, and ZeroSpeech 2021's phoneme item files are meant for ``any``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from audiossl.probes.abx import Items, average_cells, find_items, pair_distances

__all__ = [
    "CONTEXT_MODES",
    "ITEM_HEADER",
    "SPEAKER_MODES",
    "ItemFile",
    "ItemFileError",
    "frame_spans",
    "item_file_score",
    "items_from_alignments",
    "read_item_file",
    "unit_frames",
    "write_item_file",
]

ITEM_HEADER = "#file onset offset #phone prev-phone next-phone speaker"
SPEAKER_MODES = ("within", "across")
CONTEXT_MODES = ("within", "any")
NUM_COLUMNS = 7


class ItemFileError(ValueError):
    """A malformed item file; the message names the file and the line."""


@dataclass
class ItemFile:
    """An item file's lines as columns (all (lines,) arrays, line order).

    ``phone``, ``context`` and ``speaker`` number their names in order of
    first appearance (the reference's numbering); ``prev`` and ``next`` index
    ``context_phones``.
    """

    path: str
    file: list[str]  # utterance id of each line
    onset: np.ndarray  # seconds, float64
    offset: np.ndarray
    phone: np.ndarray  # index into phones
    context: np.ndarray  # index into contexts
    speaker: np.ndarray  # index into speakers
    phones: list[str] = field(default_factory=list)
    contexts: list[tuple[str, str]] = field(default_factory=list)  # (previous phone, next phone)
    speakers: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.file)


def _number(names: dict[str, int], name) -> int:
    return names.setdefault(name, len(names))


def read_item_file(path: str | Path) -> ItemFile:
    """Read an item file: the first line is a header and is skipped, as the reference skips it.

    Raises:
        ItemFileError: naming the file and line of a line without 7 columns,
            a time that is not a number, a negative time or an offset before
            its onset, or a file without items.
    """
    files, onsets, offsets, phone_ids, context_ids, speaker_ids = [], [], [], [], [], []
    phones: dict[str, int] = {}
    contexts: dict[tuple[str, str], int] = {}
    speakers: dict[str, int] = {}
    try:
        handle = open(path, encoding="utf-8")
    except OSError as e:
        raise ItemFileError(f"{path}: cannot read the item file ({e.strerror})") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            columns = line.split()
            if number == 1 or not columns:
                continue
            where = f"{path}, line {number}"
            if len(columns) != NUM_COLUMNS:
                raise ItemFileError(f"{where}: expected {NUM_COLUMNS} columns (file onset offset phone prev-phone "
                                    f"next-phone speaker), got {len(columns)}")
            try:
                onset, offset = float(columns[1]), float(columns[2])
            except ValueError:
                raise ItemFileError(f"{where}: onset and offset must be numbers of seconds, got "
                                    f"{columns[1]!r} {columns[2]!r}") from None
            if not (0 <= onset <= offset < math.inf):
                raise ItemFileError(f"{where}: onset {onset:g} and offset {offset:g} must satisfy "
                                    f"0 <= onset <= offset")
            files.append(columns[0])
            onsets.append(onset)
            offsets.append(offset)
            phone_ids.append(_number(phones, columns[3]))
            context_ids.append(_number(contexts, (columns[4], columns[5])))
            speaker_ids.append(_number(speakers, columns[6]))
    if not files:
        raise ItemFileError(f"{path}: no items after the header line")
    as_int = lambda values: np.asarray(values, dtype=np.int64)  # noqa: E731
    return ItemFile(str(path), files, np.asarray(onsets), np.asarray(offsets), as_int(phone_ids),
                    as_int(context_ids), as_int(speaker_ids), list(phones), list(contexts), list(speakers))


def frame_spans(onset: np.ndarray, offset: np.ndarray, frame_rate: float,
                num_frames: np.ndarray | int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The frames an item keeps: ``[ceil(r * onset - 0.5), floor(r * offset - 0.5))``, clipped.

    Args:
        onset, offset: (items,) seconds.
        frame_rate: ``r``, frames per second (the reference multiplies by
            ``1 / feature_size``; for 10 ms frames both are 100.0).
        num_frames: (items,) frames of each item's utterance, or one count;
            None: no clipping at the end.

    Returns:
        (items,) first frames and (items,) ends (exclusive), int64; an item
        with ``end <= start`` keeps no frame.
    """
    start = np.maximum(0, np.ceil(frame_rate * np.asarray(onset, dtype=np.float64) - 0.5)).astype(np.int64)
    end = np.floor(frame_rate * np.asarray(offset, dtype=np.float64) - 0.5).astype(np.int64)
    if num_frames is not None:
        end = np.minimum(end, num_frames)
    return start, end


def items_from_alignments(labels: Mapping[str, np.ndarray], phone_names: Sequence[str],
                          speakers: Mapping[str, str], silence: int | None = 0,
                          frame_rate: float = 100.0) -> list[tuple[str, float, float, str, str, str, str]]:
    """Item lines from frame labels: each non-silence phone run with a run on each side.

    The items are those of the alignment-based ABX (:func:`find_items`);
    onset and offset are the run's boundaries in seconds (frame ``t`` covers
    ``[t / r, (t + 1) / r)``). Note that the reference's frame cut then keeps
    the run's frames but its last one, as it does on Libri-light's files.

    Returns:
        (file, onset, offset, phone, previous phone, next phone, speaker), in
        utterance order.
    """
    items = find_items(labels, speakers, silence)
    num_classes = len(phone_names)
    for column in (items.centre, items.left, items.right):
        if len(column) and column.max() >= num_classes:
            raise ValueError(f"phone class {int(column.max())} has no name: the inventory has {num_classes}")
    return [(items.ids[u], start / frame_rate, end / frame_rate, phone_names[c], phone_names[left],
             phone_names[right], speakers[items.ids[u]])
            for u, start, end, c, left, right in zip(items.utterance, items.start, items.end, items.centre,
                                                    items.left, items.right)]


def write_item_file(path: str | Path, lines: Sequence[tuple[str, float, float, str, str, str, str]]) -> None:
    """Write item lines under the standard header, times with 4 decimals (as Libri-light's files)."""
    from audiossl.features import atomic_write

    text = "".join(f"{file} {onset:.4f} {offset:.4f} {phone} {prev} {nxt} {speaker}\n"
                   for file, onset, offset, phone, prev, nxt, speaker in lines)
    atomic_write(path, lambda f: f.write((ITEM_HEADER + "\n" + text).encode()))


def unit_frames(feats: torch.Tensor) -> torch.Tensor:
    """Frames scaled to unit norm; a zero frame is at angular distance 1 from any other and 0 from a zero frame.

    The reference appends a coordinate (1e-12 for real frames, -2e12 for
    zero frames, set to the uniform unit vector) before its cosine; the
    extra coordinate changes a real pair's cosine by 1e-24 only. The same is
    done here.

    Args:
        feats: (frames, dim).

    Returns:
        (frames, dim + 1).
    """
    norms = feats.norm(dim=1, keepdim=True)
    zero = norms.squeeze(1) == 0
    unit = feats / torch.where(zero[:, None], torch.ones_like(norms), norms)
    unit[zero] = 1.0 / math.sqrt(feats.shape[1])
    extra = torch.where(zero[:, None], -2e12, 1e-12).to(feats.dtype)
    return torch.cat([unit, extra], dim=1)  # (frames, dim + 1)


@dataclass
class _Cells:
    """The cells of one condition: keys, and per cell the sampled A, B and X item lists."""

    keys: list[tuple[int, ...]] = field(default_factory=list)
    a: list[list[int]] = field(default_factory=list)
    b: list[list[int]] = field(default_factory=list)
    x: list[list[int] | None] = field(default_factory=list)  # None: X is the A group (within speakers)


def _groups(context: np.ndarray, speaker: np.ndarray, phone: np.ndarray):
    """Items sorted by (context, speaker, phone), ties in item order, and the nested slices.

    Returns:
        order: (items,) item indices in sorted order;
        blocks: one list per (context, speaker) block of ``(start, end)``
        phone slices into ``order``, blocks in sorted order.
    """
    order = np.lexsort((np.arange(len(phone)), phone, speaker, context))
    keys = np.stack([context[order], speaker[order], phone[order]], axis=1)
    change = np.r_[True, (keys[1:] != keys[:-1]).any(axis=1)]
    starts = np.flatnonzero(change)
    ends = np.r_[starts[1:], len(order)]
    blocks: list[list[tuple[int, int]]] = []
    previous = None
    for start, end in zip(starts, ends):
        block = (keys[start, 0], keys[start, 1])
        if block != previous:
            blocks.append([])
            previous = block
        blocks[-1].append((int(start), int(end)))
    return order, blocks


def _sample(rng: random.Random, order: np.ndarray, span: tuple[int, int], max_size: int) -> list[int]:
    positions = list(range(*span))
    if len(positions) > max_size:
        positions = rng.sample(positions, k=max_size)
    return [int(order[p]) for p in positions]


def _enumerate_cells(context: np.ndarray, speaker: np.ndarray, phone: np.ndarray, speaker_mode: str,
                     max_size_group: int, max_x_across: int, seed: int) -> _Cells:
    """The cells of one condition, their groups drawn in the reference's order with its generator."""
    rng = random.Random(seed)
    order, blocks = _groups(context, speaker, phone)
    cells = _Cells()
    if speaker_mode == "within":
        for block in blocks:
            if len(block) == 1:
                continue
            for i_a, span_a in enumerate(block):
                if span_a[1] - span_a[0] == 1:
                    continue
                for i_b, span_b in enumerate(block):
                    if i_b == i_a:
                        continue
                    b_items = _sample(rng, order, span_b, max_size_group)
                    a_items = _sample(rng, order, span_a, max_size_group)
                    first = a_items[0]
                    cells.keys.append((int(phone[first]), int(phone[b_items[0]]), int(speaker[first]),
                                       int(context[first])))
                    cells.a.append(a_items)
                    cells.b.append(b_items)
                    cells.x.append(None)
        return cells
    # Across: for each (context, phone), the speakers' groups in visiting order.
    speakers_of: dict[tuple[int, int], dict[int, tuple[int, int]]] = {}
    for block in blocks:
        for span in block:
            first = order[span[0]]
            speakers_of.setdefault((int(context[first]), int(phone[first])), {})[int(speaker[first])] = span
    num_speakers = int(speaker.max()) + 1
    for block in blocks:
        if len(block) == 1:
            continue
        for i_a, span_a in enumerate(block):
            first = order[span_a[0]]
            others = [span for s, span in speakers_of[(int(context[first]), int(phone[first]))].items()
                      if s != int(speaker[first])]
            if len(others) > max_x_across:
                others = rng.sample(others, k=max_x_across)
            for span_x in others:
                for i_b, span_b in enumerate(block):
                    if i_b == i_a:
                        continue
                    a_items = _sample(rng, order, span_a, max_size_group)
                    b_items = _sample(rng, order, span_b, max_size_group)
                    x_items = _sample(rng, order, span_x, max_size_group)
                    # Averaged over (context, X's speaker) together: one key column.
                    cells.keys.append((int(phone[first]), int(phone[b_items[0]]), int(speaker[first]),
                                       int(context[first]) * num_speakers + int(speaker[x_items[0]])))
                    cells.a.append(a_items)
                    cells.b.append(b_items)
                    cells.x.append(x_items)
    return cells


def _cell_errors(cells: _Cells, frames: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor,
                 device: torch.device) -> np.ndarray:
    """Each cell's error: the share of its triples with d(A, X) > d(B, X), ties counting half.

    Distances are DTW between an item and X with the item as rows and X as
    columns, so the path's tie-breaking is the reference's (it puts X in
    rows and prefers the step along A or B after the diagonal). Within
    speakers, where X and A are one group, the reference computes each
    unordered pair once, with the earlier item of the drawn group as X.
    """
    wanted: dict[tuple[int, int], int] = {}

    def index(row: int, col: int) -> int:
        return wanted.setdefault((row, col), len(wanted))

    layouts = []
    for a_items, b_items, x_items in zip(cells.a, cells.b, cells.x):
        xs = a_items if x_items is None else x_items
        bx = [[index(b, x) for b in b_items] for x in xs]  # (X, B)
        if x_items is None:
            ax = [[index(a_items[max(i, j)], a_items[min(i, j)]) if i != j else -1 for j in range(len(a_items))]
                  for i in range(len(a_items))]
        else:
            ax = [[index(a, x) for a in a_items] for x in xs]
        layouts.append((np.asarray(ax, dtype=np.int64), np.asarray(bx, dtype=np.int64)))
    distances = np.zeros(0)
    if wanted:
        pairs = torch.tensor(list(wanted), dtype=torch.int64)
        distances = pair_distances(frames, offsets, lengths, pairs, "angular").cpu().double().numpy()
    errors = np.empty(len(layouts))
    for n, (ax, bx) in enumerate(layouts):
        d_ax = distances[ax][:, :, None]  # (X, A, 1)
        d_bx = distances[bx][:, None, :]  # (X, 1, B)
        wrong = (d_ax > d_bx) + 0.5 * (d_ax == d_bx)
        if (ax < 0).any():  # within: X is never its own A
            keep = (ax >= 0)[:, :, None]
            errors[n] = (wrong * keep).sum() / (keep.sum() * bx.shape[1])
        else:
            errors[n] = wrong.mean()
    return errors


def item_file_score(item_file: ItemFile, load, num_frames: Mapping[str, int], frame_rate: float,
                    speaker_modes: Sequence[str] = SPEAKER_MODES, context_modes: Sequence[str] = CONTEXT_MODES,
                    max_size_group: int = 10, max_x_across: int = 5, seed: int = 3459,
                    device: str | torch.device = "cpu") -> dict:
    """ABX error rates of one feature set on an item file, per condition.

    Args:
        item_file: from :func:`read_item_file`.
        load: utterance id -> (frames, dim) array.
        num_frames: frames of each utterance with features; files of the item
            file without features are left out (and counted).
        frame_rate: features' frames per second.
        speaker_modes: ``within`` and/or ``across``.
        context_modes: ``within`` and/or ``any``.
        max_size_group, max_x_across, seed: the reference's sampling.
        device: where distances are computed.

    Returns:
        ``{"num_items": kept, "dropped_items": {"no_features": n, "no_frames": n},
        "missing_files": [ids], "conditions": {"within-within": {"error",
        "num_cells", "num_phone_pairs"}, ...}}``, keys ``<speaker>-<context>``.
    """
    for mode in speaker_modes:
        if mode not in SPEAKER_MODES:
            raise ValueError(f"speaker mode {mode!r} is not one of {', '.join(SPEAKER_MODES)}")
    for mode in context_modes:
        if mode not in CONTEXT_MODES:
            raise ValueError(f"context mode {mode!r} is not one of {', '.join(CONTEXT_MODES)}")
    if max_size_group < 1 or max_x_across < 1:
        raise ValueError(f"max_size_group and max_x_across must be at least 1, got {max_size_group}, {max_x_across}")
    device = torch.device(device)
    lines_of: dict[str, list[int]] = {}
    for line, file in enumerate(item_file.file):
        lines_of.setdefault(file, []).append(line)
    missing = [f for f in lines_of if f not in num_frames]
    kept_lines, pieces, no_frames = [], [], 0
    utterance, spans = [], []
    ids = [f for f in lines_of if f in num_frames]
    for position, file in enumerate(ids):
        lines = np.asarray(lines_of[file])
        start, end = frame_spans(item_file.onset[lines], item_file.offset[lines], frame_rate, num_frames[file])
        ok = end > start
        no_frames += int((~ok).sum())
        if not ok.any():
            continue
        feats = torch.from_numpy(np.asarray(load(file), dtype=np.float32))
        feats = unit_frames(feats)
        for line, s, e in zip(lines[ok], start[ok], end[ok]):
            kept_lines.append(line)
            pieces.append(feats[s:e])
            utterance.append(position)
            spans.append((s, e))
    result = {"num_items": len(kept_lines),
              "dropped_items": {"no_features": sum(len(lines_of[f]) for f in missing), "no_frames": no_frames},
              "missing_files": missing, "conditions": {}}
    if not kept_lines:
        for speaker_mode in speaker_modes:
            for context_mode in context_modes:
                result["conditions"][f"{speaker_mode}-{context_mode}"] = {"error": None, "num_cells": 0,
                                                                          "num_phone_pairs": 0}
        return result
    kept = np.asarray(kept_lines)
    span = np.asarray(spans, dtype=np.int64)
    phone, speaker, context = item_file.phone[kept], item_file.speaker[kept], item_file.context[kept]
    # The items in audiossl's structure: neighbours named in the centre phones' numbering, extended.
    names = {name: n for n, name in enumerate(item_file.phones)}
    neighbours = np.asarray([[_number(names, prev), _number(names, nxt)] for prev, nxt in item_file.contexts],
                            dtype=np.int64).reshape(-1, 2)[context]
    items = Items(np.asarray(utterance, dtype=np.int64), span[:, 0], span[:, 1], phone, neighbours[:, 0],
                  neighbours[:, 1], speaker, ids, list(item_file.speakers))
    frames = torch.cat(pieces).to(device)
    lengths = torch.from_numpy(items.end - items.start)
    offsets = torch.cumsum(lengths, 0) - lengths
    for speaker_mode in speaker_modes:
        for context_mode in context_modes:
            groups = context if context_mode == "within" else np.zeros_like(context)
            cells = _enumerate_cells(groups, speaker, phone, speaker_mode, max_size_group, max_x_across, seed)
            errors = _cell_errors(cells, frames, offsets, lengths, device)
            keys = np.asarray(cells.keys, dtype=np.int64).reshape(len(cells.keys), 4)
            if context_mode == "any" and speaker_mode == "within":
                keys = keys[:, :3]  # no context column to average over
            error, num_pairs = average_cells(keys, errors)
            result["conditions"][f"{speaker_mode}-{context_mode}"] = {
                "error": error, "num_cells": len(keys), "num_phone_pairs": num_pairs}
    return result
