"""ABX phone discriminability on frozen features (ZeroSpeech 2017, Libri-light).

The ABX test (Schatz et al. 2013) asks, for items A and B of two different
phones and an item X of A's phone, whether X lies closer to A than to B. The
error rate over many such triples measures how well the features separate
phones without training anything. ZeroSpeech 2017 (Dunbar et al. 2017) and
Libri-light (Kahn et al. 2020; CPC_audio's ``cpc/eval/eval_ABX.py``) report it
within speakers and across speakers; this module follows them.

- Items (:func:`audiossl.probes.abx.items.find_items`): every run of
  identical frame labels (one phone occurrence) that is not silence and has
  a neighbouring run on each side; its left and right phones (silence
  included) are its context. Its features are the frames of
  the run, widened by ``context_frames`` frames of the neighbours on each
  side (0 by default, as the Libri-light item files, which cut at the phone's
  own boundaries).
- Frame rate: the features' own (zrc-abx2's ``feature_size``): a run of
  10 ms labels takes the feature frames it overlaps
  (:func:`audiossl.probes.tasks.label_spans`); ``context_frames`` counts them.
- Triples (:func:`audiossl.probes.abx.triples.sample_triples`): A and X
  share the centre phone, B has another one, and, with
  ``context="triphone"``, A, B and X share the left and right phones
  (ZeroSpeech's "on phone, by context"). ``within``: A, B and X come from one
  speaker; ``across``: A and B from one speaker, X from another. Triphone
  contexts need a large corpus (the test split of the 6-minute demo corpus
  yields 14 within-speaker triples); ``context="none"`` drops the context
  condition and keeps only
  "same centre phone vs different centre phone", which suits small corpora
  but also credits features that encode the neighbours.
- Sampling: for each item as X and each condition, at most
  ``max_triples_per_item`` (A, B) pairs are drawn without replacement from all
  admissible ones, with a seeded generator (0: all of them). Libri-light caps
  instead the group sizes (``--max_size_group``, ``--max_x_across``).
- Distance: frame distances, ``angular`` = arccos(cos)/pi (the default) or
  ``cosine`` = 1 - cos, aligned by DTW and averaged along the best path
  (:mod:`audiossl.probes.abx.dtw`).
- Score: a triple errs when d(A, X) > d(B, X) and counts half when they are
  equal. Errors are averaged within each cell (A's phone, B's phone, context,
  speaker(s): X's speaker within, (A/B speaker, X speaker) across), then over
  contexts, then over speakers, then over phone pairs, as ZeroSpeech 2017's
  ``eval_abx`` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from audiossl.data.alignments import load_alignments, load_phone_inventory, load_split
from audiossl.features import FeatureSet
from audiossl.probes.abx.dtw import DISTANCES, Distance, pair_distances
from audiossl.probes.abx.items import Items, find_items
from audiossl.probes.abx.triples import CONDITIONS, CONTEXTS, Context, context_key, sample_triples
from audiossl.probes.ctc.targets import silence_class
from audiossl.probes.runner import (
    RunOptions,
    Score,
    checked,
    dropped_lines,
    labelled_in_every_set,
    listing,
    open_layers,
    row_name,
    score_sets,
    scores,
    with_floors,
)
from audiossl.probes.tasks import LABEL_RATE, at_label_rate, frame_rate_record, label_spans, rate_ratio
from audiossl.settings import check_seed

__all__ = [
    "ABXSettings",
    "abx_error",
    "abx_probe",
    "average_cells",
    "abx_score",
    "format_abx_report",
    "sample_triples",
]

SCORES = scores(Score("within", "within-speaker error", True), Score("across", "across-speaker error", True))


@dataclass
class ABXSettings:
    context: Context = "triphone"  # triphone: A, B, X share both neighbours; none: no context condition
    distance: Distance = "angular"  # frame distance: angular = arccos(cos)/pi, or cosine = 1 - cos
    max_triples_per_item: int = 20  # (A, B) pairs drawn per X item and condition; 0: all
    context_frames: int = 0  # neighbour frames added to each side of an item
    seed: int = 1  # triple sampling

    def __post_init__(self) -> None:
        if self.context not in CONTEXTS or self.distance not in DISTANCES:
            raise ValueError(f"ABX settings: context must be one of {', '.join(CONTEXTS)} and distance one of "
                             f"{', '.join(DISTANCES)}, got {self.context!r}, {self.distance!r}")
        if self.max_triples_per_item < 0 or self.context_frames < 0:
            raise ValueError(f"ABX settings: max_triples_per_item and context_frames must not be negative, "
                             f"got {self.max_triples_per_item}, {self.context_frames}")
        check_seed("seed", self.seed)


def _group_means(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``values`` per distinct row of ``keys`` (rows, k)."""
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    return unique, np.bincount(inverse, weights=values) / np.bincount(inverse)


def average_cells(cells: np.ndarray, errors: np.ndarray) -> tuple[float | None, int]:
    """Cell errors averaged one key column at a time, last column first, down to phone pairs.

    Args:
        cells: (cells, k) integer keys, k >= 2; the first two columns are A's
            and B's phones, the others are averaged out right to left (e.g.
            speaker, context: over contexts, then over speakers).
        errors: (cells,) error rate of each cell.

    Returns:
        The mean over phone pairs (None without cells) and the number of pairs.
    """
    if len(cells) == 0:
        return None, 0
    means = np.asarray(errors, dtype=np.float64)
    cells, means = _group_means(cells, means)
    while cells.shape[1] > 2:
        cells, means = _group_means(cells[:, :-1], means)
    return float(means.mean()), len(cells)


def abx_error(items: Items, triples: np.ndarray, d_ax: np.ndarray, d_bx: np.ndarray, condition: str,
               context: str = "triphone") -> dict:
    """ZeroSpeech's ABX error: per cell, then over contexts, speakers and phone pairs.

    Args:
        items: the items the triples index.
        triples: (triples, 3) A, B, X.
        d_ax, d_bx: (triples,) distances of A and of B to X.
        condition: ``within`` or ``across`` (which speakers define a cell).
        context: ``triphone`` or ``none`` (whether contexts define a cell).

    Returns:
        ``error`` (None without triples), ``num_triples``, ``num_cells`` and
        ``num_phone_pairs``.
    """
    if len(triples) == 0:
        return {"error": None, "num_triples": 0, "num_cells": 0, "num_phone_pairs": 0}
    a, b, x = triples.T
    errors = (d_ax > d_bx) + 0.5 * (d_ax == d_bx)
    key = context_key(items, context)
    speaker = items.speaker[x] if condition == "within" else items.speaker[a] * len(items.speakers) + items.speaker[x]
    cells, means = _group_means(np.stack([items.centre[a], items.centre[b], speaker, key[x]], axis=1), errors)
    error, num_pairs = average_cells(cells, means)  # over contexts, then over speakers, then phone pairs
    return {"error": error, "num_triples": len(triples), "num_cells": len(cells), "num_phone_pairs": num_pairs}


def abx_score(feats: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray], speakers: Mapping[str, str],
              settings: ABXSettings | None = None, silence: int | None = 0,
              device: str | torch.device = "cpu", frame_rate: float = LABEL_RATE) -> dict:
    """Within- and across-speaker ABX error of one feature set.

    Args:
        feats: utterance id -> (frames, dim) features.
        labels: utterance id -> (frames,) phone classes at 100 Hz, covering
            no more than the utterance's features.
        speakers: utterance id -> speaker.
        settings: contexts, distance, sampling.
        silence: the class never used as a centre phone.
        device: where distances are computed.
        frame_rate: of the features; items are cut at their own frame shift.

    Returns:
        ``{"num_items": n, "within": {...}, "across": {...}}`` with the
        entries of :func:`abx_error`.
    """
    settings = settings or ABXSettings()
    device = torch.device(device)
    items = find_items(labels, speakers, silence)
    how, factor = rate_ratio(frame_rate)
    margin = settings.context_frames
    pieces, lengths = [], []
    for utt, start, end in zip(items.utterance, items.start, items.end):
        utt_id, num_labels = items.ids[utt], len(labels[items.ids[utt]])
        if len(feats[utt_id]) <= label_spans(num_labels - 1, num_labels, how, factor)[0]:  # the last label's frame
            raise ValueError(f"utterance {utt_id!r}: {len(feats[utt_id])} feature frames, {num_labels} labels")
        first, last = label_spans(int(start), int(end), how, factor)
        piece = feats[utt_id][max(0, first - margin): min(label_spans(0, num_labels, how, factor)[1], last + margin)]
        pieces.append(piece)
        lengths.append(len(piece))
    dim = next(iter(feats.values())).shape[1] if feats else 0
    frames = torch.from_numpy(np.concatenate(pieces).astype(np.float32) if pieces else np.zeros((0, dim), np.float32))
    frames = torch.nn.functional.normalize(frames.to(device), dim=1)
    lengths = torch.tensor(lengths, dtype=torch.int64)
    offsets = torch.cumsum(lengths, 0) - lengths
    result = {"num_items": len(items)}
    for condition in CONDITIONS:
        triples = sample_triples(items, condition, settings.context, settings.max_triples_per_item, settings.seed)
        # Each distinct (X, other) pair once: A-X and B-X pairs repeat across triples.
        wanted = np.concatenate([triples[:, [2, 0]], triples[:, [2, 1]]])
        unique, inverse = np.unique(wanted, axis=0, return_inverse=True)
        distances = np.zeros(0)
        if len(unique):
            distances = pair_distances(frames, offsets, lengths, torch.from_numpy(unique),
                                       settings.distance).cpu().double().numpy()
        inverse = inverse.reshape(-1)
        d_ax, d_bx = distances[inverse[: len(triples)]], distances[inverse[len(triples):]]
        result[condition] = abx_error(items, triples, d_ax, d_bx, condition, settings.context)
        result[condition]["num_pairs"] = len(unique)
    return result


def abx_probe(features_dir: str | Path, alignments: str | Path, layers: Sequence[str] = ("context",), *,
              split: str | Path | None = None, phones: str | Path | None = None,
              settings: ABXSettings | None = None, options: RunOptions = RunOptions()) -> dict:
    """ABX error of each layer and baseline on the utterances of ``split``.

    Utterances of the split without labels, or without features in some
    feature set, are left out of every feature set (one item set for all) and
    reported.

    Args:
        features_dir: an ``audiossl extract`` output folder (features at a
            rate whose ratio to the labels' 100 Hz is a whole number, either
            way; items are cut at the features' own frame shift).
        alignments: ``converted_aligned_phones.txt``.
        layers: sub-folders of ``features_dir`` to score.
        split: utterance ids to draw items from (CPC's ``test_split.txt``);
            None: every utterance with features and labels.
        phones: the phone inventory: names the silence class (``SIL``) and
            bounds the labels; without it class 0 is silence.
        settings: contexts, distance, sampling.
        options: the floors (``mfcc``, ``logmel``) probed beside the layers
            and their audio, the device, the decoding workers, the progress bars.

    Returns:
        The report (see :func:`format_abx_report`), a JSON-ready dict.
    """
    settings = settings or ABXSettings()
    layer_sets = open_layers(features_dir, layers)
    at_label_rate(layer_sets)  # a rate that cannot be is refused before anything else is read
    num_classes = len(checked(load_phone_inventory, phones)) if phones is not None else None
    labels = checked(load_alignments, alignments, num_classes)
    silence = silence_class(phones)
    reference = layer_sets[0]
    listed = checked(load_split, split) if split is not None else list(reference.num_frames)
    unlabelled = [u for u in listed if u not in labels]
    labelled = [u for u in listed if u in labels]
    sets = with_floors(layer_sets, labelled, options)
    # One item set for every feature set: labels cut to the shortest features (counted at the labels' rate).
    ids, unextracted, utt_labels = labelled_in_every_set(at_label_rate(sets), labels, listed,
                                                         split or reference.folder, alignments)
    speakers = {u: reference.speakers[u] for u in ids}

    def score(features: FeatureSet) -> dict:
        found = abx_score({u: features.load(u) for u in ids}, utt_labels, speakers, settings, silence,
                          options.device, features.frame_rate)
        return {"within": found["within"]["error"], "across": found["across"]["error"],
                "num_items": found["num_items"], "conditions": {c: found[c] for c in CONDITIONS},
                "frame_rate": {**frame_rate_record(features), "how": "items cut at the features' own frame shift"}}

    return {"task": "abx", "scores": SCORES, "utterances": len(ids), "speakers": len(set(speakers.values())),
            "silence": silence, "settings": asdict(settings),
            "dropped": {"alignments": listing(unlabelled), "features": listing(unextracted)},
            "results": score_sets(sets, score)}


def format_abx_report(report: dict) -> str:
    """The report as a table: error rates and triple counts per feature set."""
    settings = report["settings"]
    lines = [f"ABX ({settings['context']} context, {settings['distance']} distance along the DTW path, at most "
             f"{settings['max_triples_per_item'] or 'all'} triples per X): {report['utterances']} utterances, "
             f"{report['speakers']} speakers",
             f"{'features':<16}{'dim':>5}{'within':>9}{'across':>9}{'items':>8}{'triples (within / across)':>28}"
             f"{'seconds':>9}"]
    for row in report["results"]:
        name = row_name(row)
        errors = "".join(f"{row[c]:>9.1%}" if row[c] is not None else f"{'n/a':>9}" for c in CONDITIONS)
        counts = f"{row['conditions']['within']['num_triples']:,} / {row['conditions']['across']['num_triples']:,}"
        lines.append(f"{name:<16}{row['dim']:>5}{errors}{row['num_items']:>8,}{counts:>28}{row['seconds']:>9.1f}")
    lines.append("error: ZeroSpeech averaging (per cell, then over contexts, speakers and phone pairs); chance 50 %")
    if any(row[c] is None for row in report["results"] for c in CONDITIONS):
        lines.append("n/a: no triple for that condition; the corpus is too small for this context rule "
                     "(context none drops it)")
    return "\n".join(lines + dropped_lines(report["dropped"]))

