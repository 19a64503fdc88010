"""ABX items: phone occurrences cut from frame labels, and item files, the Libri-light / ZeroSpeech 2021 /
zrc-abx2 description of them.

:func:`find_items` takes the items of the alignment-based ABX
(:mod:`audiossl.probes.abx.labels`) from frame labels: every non-silence phone run
with a run on each side, those runs' phones its context.

Libri-light (Kahn et al. 2020, ``eval/eval_ABX.py``), the ZeroSpeech 2021
phonetic task and its successor ``zrc-abx2`` (the ``zerospeech-libriabx2``
package) all score features against an *item file*: a header line, then one
line per phone occurrence::

    #file onset offset #phone prev-phone next-phone speaker
    6295-244435-0000 0.2500 0.3300 EH D L 6295

with times in seconds. Triphone files (Libri-light's, ZeroSpeech 2021's
``triphone-*.item``) and phoneme files (``phoneme-*.item``) share the format.
This module reads and writes such files and cuts an item's frames as the
reference does: frames ``ceil(r * onset - 0.5)`` up to, not including,
``floor(r * offset - 0.5)``, with ``r`` the frame rate (the reference's
``1 / --feature_size``; 100.0 for 10 ms frames, and ``r * t`` here is the same
floating-point product as there). :mod:`audiossl.probes.abx.item_files` scores
features on them.

Files written from CPC frame alignments (``audiossl probe abx --write-items``)
have one item per non-silence phone run with a run on each side (the items
of the alignment-based ABX), its true boundaries as onset and offset, its
neighbouring runs' phones as context and the id's first dash-separated field
as speaker (LibriSpeech ids).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from audiossl.errors import UserError
from audiossl.utils.atomic import atomic_write

__all__ = [
    "ITEM_HEADER",
    "ItemFile",
    "ItemFileError",
    "Items",
    "find_items",
    "frame_spans",
    "items_from_alignments",
    "number",
    "read_item_file",
    "speaker_from_id",
    "write_item_file",
]

ITEM_HEADER = "#file onset offset #phone prev-phone next-phone speaker"
NUM_COLUMNS = 7


@dataclass
class Items:
    """Phone occurrences with their neighbours, one entry per item (all (items,) int64)."""

    utterance: np.ndarray  # index into ``ids``
    start: np.ndarray  # first frame of the phone
    end: np.ndarray  # one past its last frame
    centre: np.ndarray  # phone class
    left: np.ndarray  # the preceding run's class
    right: np.ndarray  # the following run's class
    speaker: np.ndarray  # index into ``speakers``
    ids: list[str]  # utterance ids
    speakers: list[str]  # speaker names

    def __len__(self) -> int:
        return len(self.centre)


def find_items(labels: Mapping[str, np.ndarray], speakers: Mapping[str, str], silence: int | None = 0) -> Items:
    """Every non-silence phone run that has a neighbouring run on both sides.

    Args:
        labels: utterance id -> (frames,) phone classes.
        speakers: utterance id -> speaker.
        silence: the class never used as a centre phone (None: none).

    Returns:
        The items, utterance by utterance in ``labels`` order.
    """
    ids = list(labels)
    names = sorted({speakers[u] for u in ids})
    speaker_index = {name: i for i, name in enumerate(names)}
    columns: dict[str, list[np.ndarray]] = {k: [] for k in ("utterance", "start", "end", "centre", "left", "right",
                                                             "speaker")}
    for position, utt_id in enumerate(ids):
        utt_labels = np.asarray(labels[utt_id], dtype=np.int64)
        if len(utt_labels) == 0:
            continue
        starts = np.flatnonzero(np.r_[True, utt_labels[1:] != utt_labels[:-1]])
        ends = np.r_[starts[1:], len(utt_labels)]
        runs = utt_labels[starts]
        inner = np.arange(1, len(runs) - 1)
        if silence is not None:
            inner = inner[runs[inner] != silence]
        columns["utterance"].append(np.full(len(inner), position))
        columns["start"].append(starts[inner])
        columns["end"].append(ends[inner])
        columns["centre"].append(runs[inner])
        columns["left"].append(runs[inner - 1])
        columns["right"].append(runs[inner + 1])
        columns["speaker"].append(np.full(len(inner), speaker_index[speakers[utt_id]]))
    arrays = {k: np.concatenate(v).astype(np.int64) if v else np.zeros(0, dtype=np.int64) for k, v in columns.items()}
    return Items(**arrays, ids=ids, speakers=names)


class ItemFileError(UserError, ValueError):
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


def number(names: dict, name) -> int:
    """``name``'s number in ``names``, a new one (the next integer) if it has none: first-appearance numbering."""
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
        for line_number, line in enumerate(handle, start=1):
            columns = line.split()
            if line_number == 1 or not columns:
                continue
            where = f"{path}, line {line_number}"
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
            phone_ids.append(number(phones, columns[3]))
            context_ids.append(number(contexts, (columns[4], columns[5])))
            speaker_ids.append(number(speakers, columns[6]))
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
    """Write item lines under the standard header, times with 4 decimals (as Libri-light's files), atomically."""
    text = "".join(f"{file} {onset:.4f} {offset:.4f} {phone} {prev} {nxt} {speaker}\n"
                   for file, onset, offset, phone, prev, nxt, speaker in lines)
    atomic_write(path, lambda f: f.write((ITEM_HEADER + "\n" + text).encode()))


def speaker_from_id(utt_id: str) -> str:
    """The speaker of a LibriSpeech-style id ``<speaker>-<chapter>-<utterance>``: the text before the first dash."""
    return utt_id.split("-", 1)[0]
