"""Linear phone and speaker probes: every requested layer beside the hand-made floors.

A run reads the model's extracted layers (an ``audiossl extract`` folder, or
one :func:`audiossl.probes.runner.probe_features` fills from a checkpoint or
a hand-made baseline first), extracts the floors (MFCC, log-mel) for the same
utterances into the same folder when they are not there yet, trains the same
linear probe on each and returns one report (the runner's format, see
:mod:`audiossl.probes.runner`). A seeded tenth of the training utterances is
held out to choose each probe's epoch (early stopping). Utterances of the
splits that have no phone alignment, or no features in a feature set, are
dropped from that probe and reported (count and first ids), never silently.
:func:`audiossl.probes.runner.write_outputs` adds TensorBoard curves per
epoch (``OUT/tb/<features>/train_loss``, ``heldout_accuracy``,
``heldout_loss``) beside ``report.txt`` and ``metrics.json``.

``metrics.json``::

    {"task": "phone" | "speaker",
     "scores": [{"key": "accuracy", "label": "accuracy", "lower_is_better": false}],
     "num_classes": int, "unit": str,        # what one example is: "10 ms frame", "utterance (mean)" ...
     "train_utterances": int,                # requested: the training split, held-out part included
     "heldout_utterances": int,              # of those, held out to choose the epoch
     "test_utterances": int,                 # requested: the test split (each result row says how many scored)
     "accuracy": float, "chance": float,     # the first result's, for readers wanting one number
     "frame_rate": {...},                    # phone: the first result's (below)
     "settings": {...},                      # ProbeSettings: epochs, batch_size, lr, ..., seed
     "published": {...},                     # the CPC paper's LibriSpeech 100 h figures
     "results": [{                           # one per feature set, the main source first
         "features": str,                    # context | encoder | context_1 ... | mfcc | logmel
         "role": "model" | "baseline",       # a checkpoint's layer, or a hand-made feature
         "accuracy": float,                  # test accuracy, in [0, 1]
         "chance": float,                    # majority-class rate: test accuracy of always answering
                                             # the most frequent training class
         "train_examples": int, "heldout_examples": int, "test_examples": int,   # frames or pooled windows
         "epochs": int,                      # epochs run (early stopping may end before settings.epochs)
         "best_epoch": int,                  # the epoch kept: best held-out accuracy
         "train_utterances": int,            # scored: fitted on (held-out ones apart), with labels and features
         "heldout_utterances": int, "test_utterances": int,   # scored: the split's, less those dropped below
         "missing": {                        # split utterances dropped from this probe
             "alignments": {"count": int, "ids": [str, ...]},   # phone probe only; first ids
             "features": {"count": int, "ids": [str, ...]}},
         "train_accuracy": float, "heldout_accuracy": float | null, "test_loss": float,
         "history": {"train_loss": [...], "heldout_accuracy": [...], "heldout_loss": [...]},
                                             # one value per epoch run
         "frame_rate": {"features_ms": 20.0, "labels_ms": 10.0, "how": "repeat features", "factor": 2},
                                             # phone: how the features met the 10 ms labels (probes.tasks)
         "dim": int, "seconds": float,
         "source": {...}}, ...]}             # meta.json's: checkpoint path and digest, or baseline name
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from audiossl.extract import FeatureSet
from audiossl.probes.linear import ProbeSettings, train_linear_probe
from audiossl.probes.runner import (
    RunOptions,
    Score,
    listing,
    open_layers,
    phone_labels,
    resolve_split,
    row_name,
    score_sets,
    scores,
    with_floors,
)
from audiossl.probes.tasks import ProbeError, at_label_rate, heldout_split, phone_examples, speaker_examples

__all__ = ["DEFAULT_SETTINGS", "PUBLISHED", "format_report", "phone_probe", "speaker_probe"]

# van den Oord et al. 2018, Table 1: linear probes on LibriSpeech 100 h (test accuracy).
PUBLISHED = {
    "phone": {"CPC": 0.646, "MFCC": 0.397, "supervised": 0.746},
    "speaker": {"CPC": 0.974, "MFCC": 0.176, "supervised": 0.985},
}

SCORES = scores(Score("accuracy", "accuracy", False))
# Few examples per utterance for speakers: smaller batches, more epochs, more patience.
DEFAULT_SETTINGS = {"phone": ProbeSettings(), "speaker": ProbeSettings(epochs=100, batch_size=64, patience=20)}

def _majority(train_labels: np.ndarray, test_labels: np.ndarray) -> float:
    """Test accuracy of always answering the most frequent training class."""
    most_common = Counter(train_labels.tolist()).most_common(1)[0][0]
    return float(np.mean(test_labels == most_common))


def _run(task: str, sets: list[FeatureSet], train_ids: list[str], test_ids: list[str], examples,
         num_classes: int, settings: ProbeSettings, device: torch.device, progress: bool,
         unlabelled: Sequence[str] | None = None) -> dict:
    """Probe every feature set on the utterances it has; ``unlabelled`` ones are dropped everywhere."""
    fit_ids, heldout_ids = heldout_split(train_ids, settings.heldout_fraction, settings.seed)
    dropped = set(unlabelled or ())

    def fit_and_test(features: FeatureSet) -> dict:
        usable = [u for u in train_ids + test_ids if u not in dropped]
        missing = {"alignments": listing(unlabelled)} if unlabelled is not None else {}
        missing["features"] = listing([u for u in usable if u not in features.num_frames])
        parts = {what: [u for u in ids if u in features.num_frames and u not in dropped]
                 for what, ids in (("training", fit_ids), ("held-out", heldout_ids), ("test", test_ids))}
        empty = [what for what in ("training", "test") if not parts[what]]
        if empty:
            raise ProbeError(f"{features.folder}: no {empty[0]} utterance has both features and labels "
                             f"(missing: {json.dumps(missing)})")
        train_x, train_y = examples(features, parts["training"], "training")
        test_x, test_y = examples(features, parts["test"], "test")
        heldout = examples(features, parts["held-out"], "held-out") if parts["held-out"] else (None, None)
        try:
            result = train_linear_probe(train_x, train_y, test_x, test_y, num_classes, settings, device, progress,
                                        f"{task} probe {features.name}", *heldout)
        except ValueError as e:
            raise ProbeError(f"{features.folder}: {e}") from None
        result = asdict(result)
        # Keys in the order of the schema; dict displays evaluate left to right, so the pops come first.
        return {"accuracy": result.pop("accuracy"), "chance": _majority(train_y, test_y),
                **{k: result.pop(k) for k in ("train_examples", "heldout_examples", "test_examples", "epochs",
                                              "best_epoch")},
                "train_utterances": len(parts["training"]), "heldout_utterances": len(parts["held-out"]),
                "test_utterances": len(parts["test"]), "missing": missing, **result}

    rows = score_sets(sets, fit_and_test)
    return {"task": task, "scores": SCORES, "num_classes": num_classes, "train_utterances": len(train_ids),
            "heldout_utterances": len(heldout_ids), "test_utterances": len(test_ids),
            "accuracy": rows[0]["accuracy"], "chance": rows[0]["chance"], "settings": asdict(settings),
            "published": PUBLISHED[task], "results": rows}


def phone_probe(features_dir: str | Path, alignments: str | Path, layers: Sequence[str] = ("context",), *,
                phones: str | Path | None = None, train_split: str | Path | None = None,
                test_split: str | Path | None = None, settings: ProbeSettings | None = None,
                options: RunOptions = RunOptions()) -> dict:
    """Linear phone classification per 10 ms frame, for each layer and baseline.

    Features at another rate are read at the labels' (the frame-rate rule of
    :mod:`audiossl.probes.tasks`: 20 ms frames repeated twice); a ratio that
    is not a whole number is refused.

    Args:
        features_dir: an ``audiossl extract`` output folder.
        alignments: ``converted_aligned_phones.txt``.
        layers: sub-folders of ``features_dir`` to probe.
        phones: the phone inventory; fixes the number of classes (else the
            largest label + 1).
        train_split, test_split: utterance id lists; neither: every fifth
            labelled utterance of each speaker is held out.
        settings: the linear probe's training settings.
        options: the floors (``mfcc``, ``logmel``) probed beside the layers
            and their audio, the device, the decoding workers, the progress bars.

    Returns:
        The report (see the module docstring), a JSON-ready dict.
    """
    features_dir = Path(features_dir)
    settings = settings or DEFAULT_SETTINGS["phone"]
    layer_sets = open_layers(features_dir, layers)
    at_label_rate(layer_sets)  # a rate that cannot be is refused before anything else is read
    labels, num_classes = phone_labels(alignments, phones)
    train_ids, test_ids = resolve_split(layer_sets[0], train_split, test_split, usable=labels)
    labelled = [u for u in train_ids + test_ids if u in labels]
    sets = at_label_rate(with_floors(layer_sets, labelled, options))
    report = _run("phone", sets, train_ids, test_ids,
                  lambda fs, ids, what: phone_examples(fs, labels, ids, what), num_classes, settings, options.device,
                  options.progress, unlabelled=[u for u in train_ids + test_ids if u not in labels])
    report["unit"] = "10 ms frame"
    report["frame_rate"] = report["results"][0]["frame_rate"]
    return report


def speaker_probe(features_dir: str | Path, layers: Sequence[str] = ("context",), *,
                  window_frames: int = 0, pool: str = "mean", train_split: str | Path | None = None,
                  test_split: str | Path | None = None, settings: ProbeSettings | None = None,
                  options: RunOptions = RunOptions()) -> dict:
    """Linear speaker classification per utterance (or window), for each layer and baseline.

    Args:
        features_dir: an ``audiossl extract`` output folder.
        layers: sub-folders of ``features_dir`` to probe.
        window_frames: frames per example; 0: whole utterances (CPC's protocol).
        pool: ``mean`` or ``last`` frame of each window.
        train_split, test_split: utterance id lists; neither: every fifth
            utterance of each speaker is held out.
        settings: the linear probe's training settings.
        options: the floors (``mfcc``, ``logmel``) probed beside the layers
            and their audio, the device, the decoding workers, the progress bars.

    Returns:
        The report (see the module docstring), a JSON-ready dict.
    """
    features_dir = Path(features_dir)
    settings = settings or DEFAULT_SETTINGS["speaker"]
    layer_sets = open_layers(features_dir, layers)
    train_ids, test_ids = resolve_split(layer_sets[0], train_split, test_split)
    speakers = layer_sets[0].speakers
    speaker_index = {s: i for i, s in enumerate(sorted({speakers[u] for u in train_ids if u in speakers}))}
    sets = with_floors(layer_sets, train_ids + test_ids, options)
    report = _run("speaker", sets, train_ids, test_ids,
                  lambda fs, ids, what: speaker_examples(fs, ids, speaker_index, window_frames, pool, what),
                  len(speaker_index), settings, options.device, options.progress)
    unit = "utterance" if window_frames == 0 else f"window of {window_frames} frames"
    report["unit"] = f"{unit} ({pool})"
    return report


def format_report(report: dict) -> str:
    """The report as a table: one row per feature set, then the paper's figures and what was dropped."""
    first = report["results"][0]
    scored = (first["train_utterances"] + first["heldout_utterances"], first["heldout_utterances"],
              first["test_utterances"])
    requested = (report["train_utterances"], report["heldout_utterances"], report["test_utterances"])
    lines = [f"{report['task']} probe: {report['num_classes']} classes, one example per {report['unit']}; "
             f"{requested[0]} training utterances ({requested[1]} held out to choose the epoch) / {requested[2]} test"
             + (f"; scored {scored[0]} ({scored[1]}) / {scored[2]}, the rest dropped (below)"
                if scored != requested else ""),
             f"{'features':<16}{'dim':>5}{'train acc':>11}{'held-out':>10}{'test acc':>10}{'chance':>8}"
             f"{'epoch':>8}   examples (train / held-out / test)"]
    for row in report["results"]:
        name = row_name(row)
        heldout = f"{row['heldout_accuracy']:>9.1%}" if row["heldout_accuracy"] is not None else f"{'-':>9}"
        epoch = f"{row['best_epoch']}/{row['epochs']}"
        lines.append(f"{name:<16}{row['dim']:>5}{row['train_accuracy']:>10.1%} {heldout}{row['accuracy']:>10.1%}"
                     f"{row['chance']:>8.1%}{epoch:>8}   {row['train_examples']:,} / {row['heldout_examples']:,} / "
                     f"{row['test_examples']:,}")
    published = ", ".join(f"{k} {v:.1%}" for k, v in report["published"].items())
    lines.append(f"published (CPC paper, LibriSpeech 100 h, test): {published}")
    lines.append("epoch: the one kept (best held-out accuracy) / epochs run; chance: always the majority class")
    unlabelled = report["results"][0]["missing"].get("alignments", {"count": 0})
    if unlabelled["count"]:
        lines.append(f"dropped: {unlabelled['count']} split utterance(s) without phone alignments, "
                     f"e.g. {', '.join(unlabelled['ids'])}")
    for row in report["results"]:
        listing = row["missing"]["features"]
        if listing["count"]:
            lines.append(f"dropped from {row['features']}: {listing['count']} split utterance(s) without features, "
                         f"e.g. {', '.join(listing['ids'])}")
    return "\n".join(lines)
