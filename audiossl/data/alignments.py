"""Frame-level phone alignments in the CPC release format.

The CPC paper (van den Oord et al., 2018) released phone labels for the
LibriSpeech 100 h subset as ``converted_aligned_phones.txt``: one line per
utterance, ``<utt_id> l1 l2 ... ln``, where each ``li`` is an integer phone
class in ``[0, 41)`` for one 10 ms frame (160 samples at 16 kHz), i.e. labels
at 100 Hz. The release comes with ``train_split.txt`` and ``test_split.txt``,
one utterance id per line. The synthetic corpora written by
``tools/make_corpus.py`` use the same format, plus a ``phones.txt``
inventory with one ``<index> <PHONE>`` line per class.

This module reads those files and matches a label sequence to a feature
sequence whose length may differ by a frame or two because of padding and
rounding in the feature extractor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = [
    "labels_for_frames",
    "load_alignments",
    "load_phone_inventory",
    "load_split",
]


def load_phone_inventory(path: str | Path) -> list[str]:
    """Read a phone inventory file with ``<index> <PHONE>`` lines.

    Blank lines are skipped. Indices must be contiguous integers starting
    at 0, in order, and phone names must be unique.

    Args:
        path: The inventory file, e.g. ``phones.txt``.

    Returns:
        The phone names, so that ``names[index]`` is the phone of class
        ``index``.

    Raises:
        ValueError: If a line is malformed, an index is out of sequence,
            a name is repeated or the file has no entries; the message names
            the file and line.
    """
    names: list[str] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{path}, line {line_number}"
            if len(fields) != 2:
                raise ValueError(f"{where}: expected '<index> <PHONE>', got {line.rstrip()!r}")
            try:
                index = int(fields[0])
            except ValueError:
                raise ValueError(f"{where}: index {fields[0]!r} is not an integer") from None
            if index != len(names):
                raise ValueError(
                    f"{where}: expected index {len(names)} (indices must be contiguous "
                    f"from 0), got {index}"
                )
            name = fields[1]
            if name in seen:
                raise ValueError(
                    f"{where}: phone {name!r} already listed on line {seen[name]}"
                )
            seen[name] = line_number
            names.append(name)
    if not names:
        raise ValueError(f"{path}: phone inventory is empty")
    return names


def load_alignments(
    path: str | Path, num_classes: int | None = None
) -> dict[str, np.ndarray]:
    """Read a ``converted_aligned_phones.txt`` file.

    Blank lines are skipped; every other line must be an utterance id
    followed by at least one integer label.

    Args:
        path: The alignment file.
        num_classes: If given, every label must lie in ``[0, num_classes)``.

    Returns:
        A mapping from utterance id to its labels as an int64 array, in file
        order.

    Raises:
        ValueError: For a line without labels, a non-integer label, a
            duplicate utterance id or a label outside ``[0, num_classes)``;
            the message names the file and line number.
    """
    alignments: dict[str, np.ndarray] = {}
    first_line: dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{path}, line {line_number}"
            utt_id = fields[0]
            if len(fields) < 2:
                raise ValueError(f"{where}: utterance {utt_id!r} has no labels")
            if utt_id in first_line:
                raise ValueError(
                    f"{where}: duplicate utterance id {utt_id!r} "
                    f"(first on line {first_line[utt_id]})"
                )
            try:
                labels = np.array([int(field) for field in fields[1:]], dtype=np.int64)
            except ValueError:
                raise ValueError(
                    f"{where}: utterance {utt_id!r} has a non-integer label"
                ) from None
            if num_classes is not None:
                bad = (labels < 0) | (labels >= num_classes)
                if bad.any():
                    position = int(np.argmax(bad))
                    raise ValueError(
                        f"{where}: utterance {utt_id!r} has label {labels[position]} at "
                        f"frame {position}, outside [0, {num_classes})"
                    )
            first_line[utt_id] = line_number
            alignments[utt_id] = labels
    return alignments


def load_split(path: str | Path) -> list[str]:
    """Read a split file with one utterance id per line.

    Leading and trailing whitespace is stripped and blank lines are skipped;
    the rest of the line is the id, spaces included (a corpus folder may name
    files ``take 1.wav``).

    Args:
        path: The split file, e.g. ``train_split.txt``.

    Returns:
        The utterance ids in file order.

    Raises:
        ValueError: If an id is listed twice; the message names the file and line.
    """
    ids: list[str] = []
    first_line: dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            utt_id = line.strip()
            if not utt_id:
                continue
            where = f"{path}, line {line_number}"
            if utt_id in first_line:
                raise ValueError(
                    f"{where}: duplicate utterance id {utt_id!r} "
                    f"(first on line {first_line[utt_id]})"
                )
            first_line[utt_id] = line_number
            ids.append(utt_id)
    return ids


def labels_for_frames(
    labels: np.ndarray, num_frames: int, utt_id: str, tolerance: int = 2
) -> np.ndarray:
    """Match a 100 Hz label sequence to a feature sequence of ``num_frames``.

    Feature extractors often produce one or two frames more or fewer than
    ``num_samples // 160`` because of padding or rounding, so small
    differences are absorbed by truncating both sequences to the shorter
    length. This function returns the truncated labels; the caller must
    truncate its features to ``len(result)`` frames in the same way
    (``features[:len(result)]``).

    Args:
        labels: The frame labels of one utterance (one per 10 ms).
        num_frames: The number of feature frames (expected at 100 Hz).
        utt_id: The utterance id, used in error messages.
        tolerance: The largest length difference that is absorbed.

    Returns:
        ``labels[:min(len(labels), num_frames)]``.

    Raises:
        ValueError: If the lengths differ by more than ``tolerance``, which
            usually means the features are not at 100 Hz (10 ms frames).
    """
    num_labels = len(labels)
    if abs(num_labels - num_frames) > tolerance:
        raise ValueError(
            f"utterance {utt_id!r}: {num_labels} label frames but {num_frames} feature "
            f"frames (difference above tolerance {tolerance}); the frame rates probably "
            "disagree (labels are at 100 Hz, one per 10 ms)"
        )
    return labels[: min(num_labels, num_frames)]
