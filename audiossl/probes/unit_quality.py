"""How good discrete units are: phone purity, cluster purity and PNMI, and the ABX error of one-hot units.

The figures HuBERT reports for its k-means targets (Hsu et al. 2021, Sec. V-D;
fairseq ``examples/hubert/measure_teacher_quality.py``), measured against
frame phone labels. With ``p(y, z)`` the joint distribution of the phone
label ``y`` and the unit ``z`` over every labelled frame (silence included):

- phone purity ``= sum_z max_y p(y, z) = E_z[max_y p(y | z)]``: the frame
  accuracy of labelling every unit with its most frequent phone;
- cluster purity ``= sum_y max_z p(y, z) = E_y[max_z p(z | y)]``: the share
  of each phone's frames that its most frequent unit holds;
- PNMI ``= I(y; z) / H(y)``: the fraction of the phone label's uncertainty
  that the unit removes; 0 for units independent of the phones, 1 for units
  that determine the phone.

More units raise phone purity and lower cluster purity; PNMI is the one
figure that does not favour either extreme, and it is what HuBERT's paper
compares teachers by. ``0 log 0`` counts as 0 here (fairseq adds 1e-8
inside its logarithms), so independent units give exactly 0.

The ABX error is :mod:`audiossl.probes.abx.labels`'s on the one-hot vectors of the
units, as the ZeroSpeech 2021 baseline scores its k-means units (angular
distance between one-hot frames is 0 or 0.5).

Units of features at another rate than the labels' are brought to it by the
frame-rate rule of :mod:`audiossl.probes.tasks` (each unit of a 20 ms frame
repeated twice; units of averaged frames for faster features), for the
purities, PNMI and ABX alike, so a 20 ms model scores as its frames repeated
to 10 ms would; each result row's ``frame_rate`` says how.

Floors: :func:`units_probe` fits k-means with the model's settings (k,
sample size, seed, standardization) on the MFCC and log-mel features of the
same utterances the model's k-means saw (its ``fit_ids.txt``), and reports
the same figures for them.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from audiossl.data.alignments import load_split
from audiossl.extract import FeatureSet
from audiossl.probes.abx.labels import CONDITIONS, ABXSettings, abx_score
from audiossl.probes.ctc.targets import silence_class
from audiossl.probes.runner import (
    RunOptions,
    Score,
    checked,
    dropped_lines,
    labelled_in_every_set,
    listing,
    phone_labels,
    row_name,
    score_sets,
    scores,
    with_floors,
)
from audiossl.probes.tasks import AtLabelRate, at_label_rate
from audiossl.units.fit import FIT_IDS, FitSettings, UnitModel, check_features, fit_units
from audiossl.units.kmeans import KMeansSettings

__all__ = ["contingency", "format_units_report", "pnmi", "unit_quality", "units_probe"]

SCORES = scores(Score("pnmi", "PNMI", False), Score("phone_purity", "phone purity", False),
                Score("cluster_purity", "cluster purity", False),
                Score("within", "within-speaker error", True), Score("across", "across-speaker error", True))


def contingency(units: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray], num_phones: int,
                num_units: int) -> np.ndarray:
    """(phones, units) frame counts of each (phone label, unit) pair.

    Args:
        units: utterance id -> (frames,) unit indices.
        labels: utterance id -> (frames,) phone classes, as long as the units.
    """
    counts = np.zeros(num_phones * num_units, dtype=np.int64)
    for utt_id, utt_units in units.items():
        utt_labels = labels[utt_id]
        if len(utt_labels) != len(utt_units):
            raise ValueError(f"utterance {utt_id!r}: {len(utt_units)} units, {len(utt_labels)} labels")
        counts += np.bincount(utt_labels * num_units + utt_units, minlength=len(counts))
    return counts.reshape(num_phones, num_units)


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def pnmi(counts: np.ndarray) -> float:
    """``I(y; z) / H(y)`` of a (phones, units) count table; 0 when the phones have no uncertainty."""
    joint = np.asarray(counts, dtype=np.float64)
    joint = joint / joint.sum()
    phone_entropy = _entropy(joint.sum(1))
    if phone_entropy == 0:
        return 0.0
    information = phone_entropy + _entropy(joint.sum(0)) - _entropy(joint.ravel())  # H(y) + H(z) - H(y, z)
    return float(np.clip(information / phone_entropy, 0.0, 1.0))


def unit_quality(counts: np.ndarray) -> dict:
    """Phone purity, cluster purity and PNMI of a (phones, units) count table, with what they rest on.

    Returns:
        ``phone_purity``, ``cluster_purity``, ``pnmi``, ``frames``,
        ``units_used`` (units holding a frame) and ``phone_entropy`` (H(y) in nats).
    """
    counts = np.asarray(counts)
    total = counts.sum()
    if total == 0:
        raise ValueError("no labelled frame to measure the units on")
    joint = counts / total
    return {"phone_purity": float(joint.max(0).sum()), "cluster_purity": float(joint.max(1).sum()),
            "pnmi": pnmi(counts), "frames": int(total), "units_used": int((counts.sum(0) > 0).sum()),
            "phone_entropy": _entropy(joint.sum(1))}


def _units_at_label_rate(features: AtLabelRate, units_model: UnitModel, utt_id: str, device: torch.device
                         ) -> np.ndarray:
    """An utterance's units at the labels' rate: its frames' units repeated, or the units of its averaged frames."""
    if features.how == "average features":
        return units_model.assign(features.load(utt_id), device)
    return features.at_rate(units_model.assign(features.base.load(utt_id), device))


def _fit_settings(model: UnitModel) -> FitSettings:
    """The model's own k-means settings, to fit the floors with."""
    recorded = model.record["settings"]
    kmeans = KMeansSettings(**{k: recorded[k] for k in asdict(KMeansSettings()) if k in recorded})
    return FitSettings(kmeans, recorded["max_frames"], recorded["standardize"])


def units_probe(units_dir: str | Path, features_dir: str | Path, alignments: str | Path, *,
                split: str | Path | None = None, phones: str | Path | None = None,
                abx: ABXSettings | None = None, out: str | Path | None = None,
                options: RunOptions = RunOptions()) -> dict:
    """Purity, PNMI and one-hot ABX of a units model on the utterances of ``split``, beside the floors'.

    Args:
        units_dir: an ``audiossl units fit`` folder.
        features_dir: the ``audiossl extract`` folder holding the model's
            layer for the utterances to score (and, or else, where the
            floors' features are extracted).
        alignments: ``converted_aligned_phones.txt``.
        split: utterance ids to score (CPC's ``test_split.txt``); None:
            every utterance with features and labels.
        phones: the phone inventory: the number of classes and the silence
            class (ABX items never centre on it).
        abx: the ABX settings.
        out: where the floors' k-means models are kept (``OUT/kmeans_<floor>``,
            reused by the next run); None: a temporary folder.
        options: the floors (``mfcc``, ``logmel``) clustered and scored beside
            the model and their audio, where k-means, assignment and ABX
            distances run, the decoding workers, the progress bars.

    Returns:
        The report (see :func:`format_units_report`), a JSON-ready dict.
    """
    abx = abx or ABXSettings()
    device, progress = options.device, options.progress
    model = UnitModel(units_dir)
    reference = FeatureSet(Path(features_dir) / model.layer)
    check_features(model, reference)
    at_label_rate([reference])  # a rate that cannot be is refused before anything else is read
    labels, num_classes = phone_labels(alignments, phones)
    silence = silence_class(phones)
    listed = checked(load_split, split) if split is not None else list(reference.num_frames)
    unlabelled = [u for u in listed if u not in labels]
    scored = [u for u in listed if u in labels]
    scored_set = set(scored)
    wanted = scored + [u for u in model.fit_ids if u not in scored_set]
    sets = at_label_rate(with_floors([reference], wanted, options))
    ids, unextracted, utt_labels = labelled_in_every_set(sets, labels, listed, split or reference.folder, alignments)
    speakers = {u: reference.speakers[u] for u in ids}
    with contextlib.ExitStack() as stack:
        floors = Path(out) if out is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))

        def score(features: AtLabelRate) -> dict:
            if features.base is reference:
                units_model, role = model, "model"
            else:
                print(f"# k-means with k={model.k} on the {features.name} floor, on the "
                      f"{len(model.fit_ids)} utterances of {model.folder / FIT_IDS}")
                units_model, _ = fit_units(features.folder.parent, floors / f"kmeans_{features.name}",
                                           features.name, _fit_settings(model), model.folder / FIT_IDS, device,
                                           progress)
                role = "baseline"
            units = {u: _units_at_label_rate(features, units_model, u, device)[: len(utt_labels[u])] for u in ids}
            quality = unit_quality(contingency(units, utt_labels, num_classes, units_model.k))
            eye = np.eye(units_model.k, dtype=np.float32)
            found = abx_score({u: eye[x] for u, x in units.items()}, utt_labels, speakers, abx, silence, device)
            return {"role": role, "k": units_model.k, **quality,
                    "within": found["within"]["error"], "across": found["across"]["error"],
                    "num_items": found["num_items"], "conditions": {c: found[c] for c in CONDITIONS},
                    "inertia": units_model.record["fit"]["inertia"], "kmeans": str(units_model.folder)}

        rows = score_sets(sets, score)
    return {"task": "units", "scores": SCORES, "k": model.k, "units": str(model.folder), "layer": model.layer,
            "utterances": len(ids), "speakers": len(set(speakers.values())), "num_classes": num_classes,
            "silence": silence, "frame_rate": rows[0]["frame_rate"],
            "settings": {"abx": asdict(abx), "kmeans": model.record["settings"]},
            "dropped": {"alignments": listing(unlabelled), "features": listing(unextracted)}, "results": rows}


def format_units_report(report: dict) -> str:
    """The report as a table: purity, PNMI and ABX error per feature set."""
    abx = report["settings"]["abx"]
    lines = [f"discrete units, k = {report['k']} ({report['units']}): {report['utterances']} utterances, "
             f"{report['speakers']} speakers, {report['results'][0]['frames']:,} labelled frames",
             f"{'features':<16}{'units used':>11}{'phone pur.':>12}{'cluster pur.':>14}{'PNMI':>8}"
             f"{'ABX within':>12}{'across':>9}{'seconds':>9}"]
    for row in report["results"]:
        name = row_name(row)
        errors = "".join(f"{row[c]:>{w}.1%}" if row[c] is not None else f"{'n/a':>{w}}"
                         for c, w in (("within", 12), ("across", 9)))
        lines.append(f"{name:<16}{row['units_used']:>11}{row['phone_purity']:>12.1%}{row['cluster_purity']:>14.1%}"
                     f"{row['pnmi']:>8.3f}{errors}{row['seconds']:>9.1f}")
    lines.append(f"purity and PNMI (HuBERT's) over every labelled frame, silence included; ABX of the one-hot units "
                 f"({abx['context']} context, at most {abx['max_triples_per_item'] or 'all'} triples per X), "
                 "chance 50 %")
    return "\n".join(lines + dropped_lines(report["dropped"]))


