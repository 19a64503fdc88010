"""ABX on item files with zrc-abx2's sampling and averaging (ZeroSpeech 2021, Libri-light).

Scores features on the items of an item file (:mod:`audiossl.probes.abx.items`)
with the machinery of :mod:`audiossl.probes.abx.labels` (items, cell averaging) and
:mod:`audiossl.probes.abx.dtw` (batched DTW), reproducing the reference
implementation, ``zrc-abx2`` of the ``zerospeech-libriabx2`` package (a
rework of Libri-light's ``eval/eval_ABX.py``), so error rates can stand
beside published ones:

- Identities: phones, contexts (previous + next phone) and speakers are
  numbered in order of first appearance in the item file, items are taken
  file by file in order of first appearance, each file's items in line order,
  and an item left without frames is dropped. Groups are visited in that
  numbering, which fixes the sampling below. (The reference takes files in
  the order its directory walk finds them; ``tools/abx_crosscheck.py`` gives
  it this order.)
- Groups and sampling: items sharing a context (``within``; ``any`` ignores
  it), a speaker and a phone form a group. For every ordered pair of phones
  (A, B) of one speaker (and context), the A and B groups are each cut to at
  most ``max_size_group`` items by ``random.sample`` of a generator seeded
  with ``seed`` (``--max_size_group`` 10, ``--seed`` 3459), drawn again for
  every pair, in the reference's order. Within speakers X runs over the A
  group (X != A); across speakers X is the group of A's phone (and context)
  of another speaker, at most ``max_x_across`` such speakers drawn per A
  group (``--max_x_across`` 5), and B comes from A's speaker.
- Distance: angular, ``arccos(cos) / pi`` between unit-norm frames (the
  reference's ``cosine``; a frame of zeros is at distance 1 from any other
  frame and 0 from another zero frame, as its normalization makes it), DTW
  averaged along the best path, ties on the path broken as the reference does.
- Score: a cell (speaker(s), A's phone, B's phone, context) scores the share
  of its (A, B, X) triples with d(A, X) > d(B, X), ties counting half. Within
  speakers cells are averaged over contexts, then speakers, then phone pairs;
  across speakers over (context, X's speaker) together, then A's speaker,
  then phone pairs.

Conditions are ``within``/``across`` speakers by ``within``/``any`` context, as
zrc-abx2 2.0 reports them; Libri-light's triphone items are the ``within``
context condition, and ZeroSpeech 2021's phoneme items are meant for ``any``.
"""

from __future__ import annotations

import math
import random
import typing
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from audiossl.features import FeatureSet
from audiossl.probes.abx.dtw import pair_distances
from audiossl.probes.abx.items import ItemFile, ItemFileError, Items, frame_spans, number, read_item_file
from audiossl.probes.abx.labels import average_cells
from audiossl.probes.runner import RunOptions, Score, feature_sets_with_floors, listing, row_name, score_sets, scores
from audiossl.probes.tasks import ProbeError
from audiossl.settings import check_seed

__all__ = [
    "CONTEXT_MODES",
    "SPEAKER_MODES",
    "ItemABXSettings",
    "format_item_report",
    "item_file_probe",
    "item_file_score",
    "unit_frames",
]

SpeakerMode = Literal["within", "across"]
ContextMode = Literal["within", "any"]
SPEAKER_MODES, CONTEXT_MODES = typing.get_args(SpeakerMode), typing.get_args(ContextMode)


@dataclass
class ItemABXSettings:
    speaker_modes: tuple[SpeakerMode, ...] = SPEAKER_MODES  # within and/or across speakers
    context_modes: tuple[ContextMode, ...] = CONTEXT_MODES  # within (same neighbours) and/or any context
    max_size_group: int = 10  # items drawn per group (zrc-abx2's --max_size_group)
    max_x_across: int = 5  # X speakers drawn per A group across speakers (--max_x_across)
    seed: int = 3459  # the draws (zrc-abx2's default --seed)

    def __post_init__(self) -> None:
        self.speaker_modes, self.context_modes = tuple(self.speaker_modes), tuple(self.context_modes)
        bad = [m for m in self.speaker_modes if m not in SPEAKER_MODES] + [
            m for m in self.context_modes if m not in CONTEXT_MODES]
        if bad or not self.speaker_modes or not self.context_modes:
            raise ValueError(f"ABX conditions: speakers {', '.join(SPEAKER_MODES)} and contexts "
                             f"{', '.join(CONTEXT_MODES)}, got {list(self.speaker_modes)} and "
                             f"{list(self.context_modes)}")
        if self.max_size_group < 1 or self.max_x_across < 1:
            raise ValueError(f"ABX sampling: max_size_group and max_x_across must be at least 1, got "
                             f"{self.max_size_group}, {self.max_x_across}")
        check_seed("seed", self.seed)

    @property
    def conditions(self) -> list[str]:
        return [f"{s}-{c}" for c in self.context_modes for s in self.speaker_modes]


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


def _cell_errors(cells: _Cells, frames: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor) -> np.ndarray:
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
                    settings: ItemABXSettings | None = None, device: str | torch.device = "cpu") -> dict:
    """ABX error rates of one feature set on an item file, per condition.

    Args:
        item_file: from :func:`~audiossl.probes.abx.items.read_item_file`.
        load: utterance id -> (frames, dim) array.
        num_frames: frames of each utterance with features; files of the item
            file without features are left out (and counted).
        frame_rate: the features' frames per second.
        settings: conditions and sampling.
        device: where distances are computed.

    Returns:
        ``{"num_items": kept, "dropped_items": {"no_features": n, "no_frames": n},
        "missing_files": [ids], "conditions": {"within-within": {"error",
        "num_cells", "num_phone_pairs"}, ...}}``, keys ``<speakers>-<context>``.
    """
    settings = settings or ItemABXSettings()
    device = torch.device(device)
    lines_of: dict[str, list[int]] = {}
    for line, file in enumerate(item_file.file):
        lines_of.setdefault(file, []).append(line)
    missing = [f for f in lines_of if f not in num_frames]
    ids = [f for f in lines_of if f in num_frames]
    kept_lines, pieces, utterance, spans, no_frames = [], [], [], [], 0
    for position, file in enumerate(ids):
        lines = np.asarray(lines_of[file])
        start, end = frame_spans(item_file.onset[lines], item_file.offset[lines], frame_rate, num_frames[file])
        ok = end > start
        no_frames += int((~ok).sum())
        if not ok.any():
            continue
        feats = unit_frames(torch.from_numpy(np.asarray(load(file), dtype=np.float32)))
        for line, s, e in zip(lines[ok], start[ok], end[ok]):
            kept_lines.append(line)
            pieces.append(feats[s:e])
            utterance.append(position)
            spans.append((s, e))
    result = {"num_items": len(kept_lines),
              "dropped_items": {"no_features": sum(len(lines_of[f]) for f in missing), "no_frames": no_frames},
              "missing_files": missing, "conditions": {}}
    empty = {"error": None, "num_cells": 0, "num_phone_pairs": 0}
    if not kept_lines:
        result["conditions"] = {condition: dict(empty) for condition in settings.conditions}
        return result
    kept = np.asarray(kept_lines)
    span = np.asarray(spans, dtype=np.int64)
    phone, speaker, context = item_file.phone[kept], item_file.speaker[kept], item_file.context[kept]
    # The items in audiossl's structure: neighbours named in the centre phones' numbering, extended.
    names = {name: n for n, name in enumerate(item_file.phones)}
    neighbours = np.asarray([[number(names, prev), number(names, nxt)] for prev, nxt in item_file.contexts],
                            dtype=np.int64).reshape(-1, 2)[context]
    items = Items(np.asarray(utterance, dtype=np.int64), span[:, 0], span[:, 1], phone, neighbours[:, 0],
                  neighbours[:, 1], speaker, ids, list(item_file.speakers))
    frames = torch.cat(pieces).to(device)
    lengths = torch.from_numpy(items.end - items.start)
    offsets = torch.cumsum(lengths, 0) - lengths
    for context_mode in settings.context_modes:
        groups = context if context_mode == "within" else np.zeros_like(context)
        for speaker_mode in settings.speaker_modes:
            cells = _enumerate_cells(groups, items.speaker, items.centre, speaker_mode, settings.max_size_group,
                                     settings.max_x_across, settings.seed)
            errors = _cell_errors(cells, frames, offsets, lengths)
            keys = np.asarray(cells.keys, dtype=np.int64).reshape(len(cells.keys), 4)
            error, num_pairs = average_cells(keys, errors)
            result["conditions"][f"{speaker_mode}-{context_mode}"] = {
                "error": error, "num_cells": len(keys), "num_phone_pairs": num_pairs}
    return result


def item_file_probe(features_dir: str | Path, item_file: str | Path, layers: Sequence[str] = ("context",), *,
                    settings: ItemABXSettings | None = None, options: RunOptions = RunOptions()) -> dict:
    """ABX error of each layer and baseline on an item file, per condition.

    Args:
        features_dir: an ``audiossl extract`` output folder.
        item_file: a Libri-light / ZeroSpeech item file.
        layers: sub-folders of ``features_dir`` to score.
        settings: conditions and sampling.
        options: the floors (``mfcc``, ``logmel``) scored beside the layers
            (extracted for the item file's utterances if missing) and their
            audio, the device, the decoding workers, the progress bars.

    Returns:
        The report (see :func:`format_item_report`), a JSON-ready dict.
    """
    settings = settings or ItemABXSettings()
    try:
        items = read_item_file(item_file)
    except ItemFileError as e:
        raise ProbeError(str(e)) from None
    files = list(dict.fromkeys(items.file))
    sets = feature_sets_with_floors(features_dir, layers, files, options)

    def score(features: FeatureSet) -> dict:
        found = item_file_score(items, features.load, features.num_frames, features.frame_rate, settings,
                                options.device)
        if not found["num_items"]:
            raise ProbeError(f"{features.folder}: no item of {item_file} has features ({len(files)} files named, "
                             f"e.g. {', '.join(files[:3])})")
        errors = {condition: found["conditions"][condition]["error"] for condition in settings.conditions}
        return {**errors, **found, "missing_files": listing(found["missing_files"])}

    return {"task": "abx", "scores": scores(*(Score(c, f"{c} error", True) for c in settings.conditions)),
            "item_file": str(item_file), "items": len(items), "files": len(files),
            "speakers": len(items.speakers), "phones": len(items.phones), "settings": asdict(settings),
            "results": score_sets(sets, score)}


def format_item_report(report: dict) -> str:
    """The report as a table: one error rate per condition and feature set."""
    settings = report["settings"]
    conditions = ItemABXSettings(**settings).conditions
    lines = [f"ABX on {report['item_file']}: {report['items']:,} items in {report['files']} files, "
             f"{report['speakers']} speakers, {report['phones']} phones; at most {settings['max_size_group']} "
             f"items per group, {settings['max_x_across']} X speakers across, seed {settings['seed']}",
             f"{'features':<16}{'dim':>5}" + "".join(f"{c:>15}" for c in conditions) + f"{'items':>9}{'seconds':>9}"]
    for row in report["results"]:
        name = row_name(row)
        errors = "".join(f"{row['conditions'][c]['error']:>15.2%}" if row["conditions"][c]["error"] is not None
                         else f"{'n/a':>15}" for c in conditions)
        lines.append(f"{name:<16}{row['dim']:>5}{errors}{row['num_items']:>9,}{row['seconds']:>9.1f}")
    lines.append("conditions: <speakers>-<context>; error averaged per cell, then over contexts (and X speakers), "
                 "speakers and phone pairs, as zrc-abx2; chance 50 %")
    for row in report["results"]:
        dropped, missing = row["dropped_items"], row["missing_files"]
        if dropped["no_features"] or dropped["no_frames"]:
            lines.append(f"{row['features']}: {dropped['no_features']} item(s) of {missing['count']} file(s) "
                         f"without features (e.g. {', '.join(missing['ids']) or '-'}), {dropped['no_frames']} "
                         f"left without frames by the cut")
    return "\n".join(lines)

