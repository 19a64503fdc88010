"""What the probes classify: phones per 10 ms frame, speakers per utterance or window.

Phones (CPC paper, Sec. 3.1; CPC_audio's ``linear_separability.py
--pathPhone``): every frame of the training utterances is an example, labelled
from the CPC release's ``converted_aligned_phones.txt`` (100 Hz labels, 41
classes on LibriSpeech). Features are read at the labels' 100 Hz; a frame or
two of length difference is absorbed (``labels_for_frames``).

The frame-rate rule (:func:`at_label_rate`): features at any rate whose ratio
to the labels' is a whole number, either way, are brought to the labels'
rate. Slower features (wav2vec 2.0, HuBERT, WavLM: 20 ms frames) have each
frame repeated, twice for 20 ms (``repeat features``: s3prl's upstream
expander, so every 10 ms label keeps its frame); faster ones have each group
of frames averaged (``average features``). Any other ratio (25 ms frames,
say) is refused. :func:`frame_rate_record` says what was done, as
``metrics.json`` reports it: ``{"features_ms": 20.0, "labels_ms": 10.0,
"how": "repeat features", "factor": 2}``.

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

__all__ = ["LABEL_RATE", "POOLS", "AtLabelRate", "ProbeError", "at_label_rate", "check_label_rate", "default_split",
           "frame_ratio", "frame_rate_record", "heldout_split", "label_spans", "phone_examples", "rate_ratio",
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


def frame_ratio(features: FeatureSet, label_rate: float = LABEL_RATE) -> tuple[str, int]:
    """How the frame-rate rule brings ``features`` to ``label_rate``: ``("repeat features", k)`` for features ``k``
    times slower, ``("average features", k)`` for ``k`` times faster, ``("as they are", 1)``.

    Raises:
        ProbeError: for a ratio that is not a whole number either way.
    """
    return rate_ratio(features.frame_rate, label_rate, features.folder)


def rate_ratio(rate: float, label_rate: float = LABEL_RATE, where: object = "features") -> tuple[str, int]:
    """:func:`frame_ratio` of features at ``rate`` frames per second; ``where`` names them in the error."""
    slower, faster = label_rate / rate, rate / label_rate
    for how, ratio in (("repeat features", slower), ("average features", faster)):
        factor = round(ratio)
        if factor >= 1 and abs(ratio - factor) <= 1e-6 * ratio:
            return ("as they are", 1) if factor == 1 else (how, factor)
    raise ProbeError(f"{where}: features at {rate:g} frames/s ({1000 / rate:g} ms) and phone labels at "
                     f"{label_rate:g} ({1000 / label_rate:g} ms): neither rate is a whole multiple of the other")


def label_spans(start: int, end: int, how: str, factor: int) -> tuple[int, int]:
    """The feature frames ``[first, last)`` that the label frames ``[start, end)`` overlap: ``[start // k,
    ceil(end / k))`` for features ``k`` times slower (10 ms labels ``[2, 7)`` are 20 ms frames ``[1, 4)``),
    ``[start k, end k)`` for ``k`` times faster; ``how`` and ``k`` as :func:`rate_ratio` gives them."""
    if how == "repeat features":
        return start // factor, -(-end // factor)
    if how == "average features":
        return start * factor, end * factor
    return start, end


def frame_rate_record(features: FeatureSet, label_rate: float = LABEL_RATE) -> dict:
    """What :func:`at_label_rate` does to ``features``, for ``metrics.json``."""
    how, factor = frame_ratio(features, label_rate)
    return {"features_ms": round(1000 / features.frame_rate, 6), "labels_ms": round(1000 / label_rate, 6),
            "how": how, "factor": factor}


class AtLabelRate(FeatureSet):
    """A feature set read at the labels' rate: each frame repeated ``factor`` times, or each ``factor`` frames
    averaged (the last group may be shorter). Everything else is the set's own; ``base`` is the set itself.

    Args:
        features: the set as extracted.
        label_rate: frames per second to read it at.
    """

    def __init__(self, features: FeatureSet, label_rate: float = LABEL_RATE):  # no super().__init__: a view
        self.base, self.record = features, frame_rate_record(features, label_rate)
        self.how, self.factor = self.record["how"], self.record["factor"]
        self.folder, self.utterances, self.speakers = features.folder, features.utterances, features.speakers
        self.paths, self.meta = features.paths, {**features.meta, "frame_rate": label_rate}
        self.num_frames = {u: self._frames(n) for u, n in features.num_frames.items()}

    def _frames(self, n: int) -> int:
        return n * self.factor if self.how == "repeat features" else -(-n // self.factor)

    def load(self, utt_id: str) -> np.ndarray:
        return self.at_rate(self.base.load(utt_id))

    def at_rate(self, frames: np.ndarray) -> np.ndarray:
        """(frames, ...) per-frame values of the set brought to the labels' rate."""
        if self.how == "repeat features":
            return np.repeat(frames, self.factor, axis=0)
        if self.how == "average features" and len(frames):
            starts = np.arange(0, len(frames), self.factor)
            sums = np.add.reduceat(frames.astype(np.float64), starts, axis=0)
            counts = np.diff(np.r_[starts, len(frames)])
            return (sums / counts.reshape(-1, *([1] * (frames.ndim - 1)))).astype(frames.dtype)
        return frames


def at_label_rate(sets: Sequence[FeatureSet], label_rate: float = LABEL_RATE) -> list[FeatureSet]:
    """Every set at the labels' rate (the frame-rate rule, see the module docstring); refused if it cannot be."""
    return [AtLabelRate(features, label_rate) for features in sets]


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
        features: features at 100 Hz (:func:`at_label_rate` brings others there).
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
