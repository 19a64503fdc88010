"""What the probes classify: phones per 10 ms frame, speakers per utterance or window.

Phones (CPC paper, Sec. 3.1; CPC_audio's ``linear_separability.py
--pathPhone``): every frame of the training utterances is an example, labelled
from the CPC release's ``converted_aligned_phones.txt`` (100 Hz labels, 41
classes on LibriSpeech). Features must come at the labels' 100 Hz; a frame or
two of length difference is absorbed (``labels_for_frames``).

Speakers (CPC paper, Sec. 3.1): by default one example per utterance, the
mean of its frames. CPC_audio's speaker mode instead classifies context
windows of 20480 samples: with ``window_frames`` > 0 each utterance is cut
into non-overlapping windows of that many frames (128 frames = 20480 samples
at 100 Hz), an utterance shorter than one window counts as one window, and
each window is pooled into one example: the ``mean`` of its frames, or its
``last`` frame (CPC_audio's ``SpeakerCriterion`` reads the last context frame).

Splits: the CPC release's ``train_split.txt`` / ``test_split.txt`` (every
speaker in both), or, when none is given, every fifth utterance of each
speaker (sorted by id) held out for testing. A seeded tenth of the training
utterances is set aside to choose the probe's epoch (``heldout_split``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from audiossl.data.alignments import labels_for_frames
from audiossl.errors import UserError
from audiossl.extract import FeatureSet

__all__ = ["LABEL_RATE", "POOLS", "ProbeError", "check_label_rate", "default_split", "heldout_split", "phone_examples",
           "require_features", "speaker_examples"]

POOLS = ("mean", "last")
LABEL_RATE = 100.0  # phone labels per second (10 ms frames)


class ProbeError(UserError, ValueError):
    """Probe inputs that do not fit together; the message names what is missing."""


def default_split(speakers: dict[str, str], test_every: int = 5) -> tuple[list[str], list[str]]:
    """Hold out every ``test_every``-th utterance of each speaker (sorted by id).

    Args:
        speakers: utterance id -> speaker.

    Returns:
        Training ids and test ids, each sorted.
    """
    by_speaker: dict[str, list[str]] = {}
    for utt_id in sorted(speakers):
        by_speaker.setdefault(speakers[utt_id], []).append(utt_id)
    train, test = [], []
    for ids in by_speaker.values():
        for position, utt_id in enumerate(ids):
            (test if position % test_every == test_every - 1 else train).append(utt_id)
    return sorted(train), sorted(test)


def heldout_split(train_ids: Sequence[str], fraction: float = 0.1, seed: int = 1) -> tuple[list[str], list[str]]:
    """Set aside ``fraction`` of the training utterances (at least one, seeded) to choose the probe's epoch.

    Args:
        train_ids: the training split.
        fraction: of the utterances held out; 0, or fewer than two
            utterances: none.
        seed: which utterances.

    Returns:
        The utterances to fit on and the held-out ones, each in ``train_ids`` order.
    """
    count = 0 if fraction <= 0 or len(train_ids) < 2 else max(1, round(fraction * len(train_ids)))
    chosen = set(np.random.default_rng(seed).permutation(len(train_ids))[:count].tolist())
    return ([u for i, u in enumerate(train_ids) if i not in chosen],
            [u for i, u in enumerate(train_ids) if i in chosen])


def check_label_rate(sets: Sequence[FeatureSet], why: str) -> None:
    """Refuse features not at the phone labels' 100 frames a second; ``why`` ends the message."""
    for features in sets:
        if abs(features.frame_rate - LABEL_RATE) > 1e-6:
            raise ProbeError(f"{features.folder}: features at {features.frame_rate:g} frames/s; {why} at "
                             f"{LABEL_RATE:g} per second")


def require_features(features: FeatureSet, ids: Sequence[str], what: str = "listed") -> None:
    """Raise a :class:`ProbeError` naming the ``ids`` that ``features`` lacks."""
    missing = [utt_id for utt_id in ids if utt_id not in features.num_frames]
    if missing:
        raise ProbeError(f"{features.folder}: no features for {len(missing)} {what} utterance(s), "
                         f"e.g. {', '.join(missing[:3])}; extract them first")


def phone_examples(features: FeatureSet, alignments: dict[str, np.ndarray], ids: Sequence[str],
                   what: str = "listed") -> tuple[np.ndarray, np.ndarray]:
    """Every frame of ``ids`` with its phone label.

    Args:
        features: features at 100 Hz.
        alignments: utterance id -> 100 Hz phone labels (``load_alignments``).
        ids: the utterances to use.
        what: names the split in error messages.

    Returns:
        (frames, dim) features in their stored dtype and (frames,) int64 labels.
    """
    check_label_rate([features], "phone labels are")
    require_features(features, ids, what)
    unlabelled = [utt_id for utt_id in ids if utt_id not in alignments]
    if unlabelled:
        raise ProbeError(f"no phone alignment for {len(unlabelled)} {what} utterance(s), "
                         f"e.g. {', '.join(unlabelled[:3])}")
    try:
        labels = [labels_for_frames(alignments[u], features.num_frames[u], u) for u in ids]
    except ValueError as e:
        raise ProbeError(f"{features.folder}: {e}") from None
    total = sum(len(frames) for frames in labels)
    feats = np.empty((total, features.dim), dtype=features.meta["dtype"])
    start = 0
    for utt_id, utt_labels in zip(ids, labels):
        feats[start: start + len(utt_labels)] = features.load(utt_id)[: len(utt_labels)]
        start += len(utt_labels)
    return feats, np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)


def speaker_examples(features: FeatureSet, ids: Sequence[str], speaker_index: dict[str, int],
                     window_frames: int = 0, pool: str = "mean",
                     what: str = "listed") -> tuple[np.ndarray, np.ndarray]:
    """One pooled example per window of each utterance in ``ids``.

    Args:
        features: any frame rate.
        ids: the utterances to use; their speakers come from the feature index.
        speaker_index: speaker -> class.
        window_frames: frames per window; 0: whole utterances.
        pool: ``mean`` of the window's frames or its ``last`` frame.
        what: names the split in error messages.

    Returns:
        (windows, dim) float32 features and (windows,) int64 speaker classes.
    """
    if pool not in POOLS:
        raise ProbeError(f"pool {pool!r} is not one of {', '.join(POOLS)}")
    if window_frames < 0:
        raise ProbeError(f"window_frames must not be negative, got {window_frames}")
    require_features(features, ids, what)
    unknown = sorted({features.speakers[u] for u in ids} - set(speaker_index))
    if unknown:
        raise ProbeError(f"{what} utterances of {len(unknown)} speaker(s) absent from training, "
                         f"e.g. {', '.join(unknown[:3])}")
    examples, labels = [], []
    for utt_id in ids:
        feats = features.load(utt_id)
        num_frames = len(feats)
        if num_frames == 0:
            continue
        size = num_frames if window_frames == 0 or num_frames < window_frames else window_frames
        windows = feats[: num_frames - num_frames % size].reshape(-1, size, feats.shape[1])  # (W, size, D)
        pooled = windows.mean(axis=1, dtype=np.float32) if pool == "mean" else windows[:, -1].astype(np.float32)
        examples.append(pooled)
        labels.extend([speaker_index[features.speakers[utt_id]]] * len(pooled))
    if not examples:
        return np.zeros((0, features.dim), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return np.concatenate(examples), np.array(labels, dtype=np.int64)
