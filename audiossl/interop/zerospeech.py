"""Features in the ZeroSpeech 2021 submission layout, which its tools and zrc-abx2 read.

ZeroSpeech 2021's phonetic task (``zerospeech2021-validate`` and
``zerospeech2021-evaluate`` of the ``zerospeech2021`` package) reads one
feature file per utterance, named by the utterance's id, under a folder per
LibriSpeech subset, and a ``meta.yaml`` at the submission's root::

    OUT/meta.yaml
    OUT/phonetic/<subset>/<utterance id>.txt    (frames, dim) as text, one frame per line
                                      or .npy   the same array as numpy (zrc-abx2's default)

``meta.yaml`` holds the fields its validator checks: ``author``,
``affiliation``, ``description``, ``open_source``, ``train_set``,
``visually_grounded``, ``gpu_budget`` and ``parameters`` with
``phonetic: {metric, frame_shift}`` and ``semantic: {metric, pooling}``.
The frame shift is the features' (0.01 s at 100 frames/s) and the metric
``cosine`` (the angular distance ABX uses); the author, affiliation and
training set are not known here and are written as ``unknown``: edit them
before submitting. The 2021 validator accepts ``.txt`` files only;
``zrc-abx2`` reads ``.npy`` (``--file_extension .npy``, its default) or
``.txt``, each folder of ``OUT/phonetic`` with the subset's item file.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import yaml

from audiossl.features import FeatureSet
from audiossl.utils.atomic import atomic_write

__all__ = ["FILE_TYPES", "META_FILE", "check_ids", "check_subset", "submission_meta", "write_submission"]

FILE_TYPES = ("npy", "txt")
META_FILE = "meta.yaml"
UNKNOWN = "unknown"


def submission_meta(features: FeatureSet) -> dict:
    """``meta.yaml``'s fields for a feature set (the unknown ones as ``unknown``)."""
    source = features.meta.get("source", {})
    made_by = (f"checkpoint {source['checkpoint']} (sha256 {source.get('sha256', '?')})" if "checkpoint" in source
               else f"the {source['baseline']} baseline" if "baseline" in source else "unknown source")
    return {
        "author": UNKNOWN,
        "affiliation": UNKNOWN,
        "description": f"audiossl features: {features.name} of {made_by}",
        "open_source": True,
        "train_set": UNKNOWN,
        "visually_grounded": False,
        "gpu_budget": 0.0,
        "parameters": {
            "phonetic": {"metric": "cosine", "frame_shift": round(1.0 / features.frame_rate, 6)},
            "semantic": {"metric": "cosine", "pooling": "mean"},
        },
    }


def _plain(name: str) -> bool:
    return bool(name) and Path(name).name == name and name not in (".", "..")


def check_subset(subset: str) -> None:
    """Refuse a subset that is not a plain folder name (it is a folder under ``OUT/phonetic``)."""
    if not _plain(subset):
        raise ValueError(f"subset {subset!r} must be a plain folder name such as dev-clean")


def check_ids(ids: Iterable[str]) -> None:
    """Refuse utterance ids that are not plain file names: each names a file in the subset's folder.

    Checked before any extraction, so a refused submission leaves nothing half-written.
    """
    bad = [utt_id for utt_id in ids if not _plain(utt_id)]
    if bad:
        raise ValueError(f"{len(bad)} utterance id(s) are not plain file names, e.g. {', '.join(map(repr, bad[:3]))}; "
                         "the ZeroSpeech layout names one file per id")


def _text(array: np.ndarray) -> bytes:
    buffer = io.StringIO()
    np.savetxt(buffer, np.atleast_2d(array.astype(np.float32)), fmt="%.7g")
    return buffer.getvalue().encode()


def write_submission(features: FeatureSet, out_dir: str | Path, subset: str, file_type: str = "npy") -> list[Path]:
    """Write every utterance of ``features`` as ``out_dir/phonetic/<subset>/<id>.<file_type>``, then meta.yaml.

    Args:
        features: one extracted layer.
        out_dir: the submission's root.
        subset: the folder under ``phonetic`` (``dev-clean``, ``dev-other``,
            ``test-clean`` or ``test-other`` for the challenge's sets).
        file_type: ``npy`` or ``txt``.

    Returns:
        The files written, in index order (``meta.yaml`` last).
    """
    if file_type not in FILE_TYPES:
        raise ValueError(f"file type {file_type!r} is not one of {', '.join(FILE_TYPES)}")
    check_subset(subset)
    check_ids(features.num_frames)
    folder = Path(out_dir) / "phonetic" / subset
    written = []
    for utt_id in features.num_frames:
        path = folder / f"{utt_id}.{file_type}"
        array = features.load(utt_id).astype(np.float32)
        atomic_write(path, (lambda f, a=array: np.save(f, a)) if file_type == "npy"
                     else (lambda f, a=array: f.write(_text(a))))
        written.append(path)
    meta = Path(out_dir) / META_FILE
    atomic_write(meta, lambda f: f.write(yaml.safe_dump(submission_meta(features), sort_keys=False).encode()))
    return written + [meta]
