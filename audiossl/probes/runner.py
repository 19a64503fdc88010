"""What every probe shares: the feature sets it scores, the floors beside them, the splits, one row per
feature set, and the output folder.

A probe (linear phone or speaker classification, ABX, ABX on an item file,
CTC, discrete units) reads an ``audiossl extract`` folder's layers, extracts
the hand-made floors (MFCC, log-mel) beside them for the utterances it needs,
scores each feature set with its own ``score`` function and returns a report
in one format::

    {"task": str,                            # phone | speaker | abx | abx-items | ctc-phone | ctc-subword | units
     "scores": [{"key": str,                 # the result rows' keys that are scores, the headline first
                 "label": str,               # how tables and the experiment page name it
                 "lower_is_better": bool}, ...],
     ...,                                    # the probe's own fields: settings, utterance counts, dropped ids
     "results": [{"features": str,           # context | encoder | context_1 ... | mfcc | logmel
                  "role": "model" | "baseline",   # a checkpoint's layer, or a hand-made feature
                  <score keys>: float | null,     # a fraction
                  ...,                            # the probe's own per-set fields
                  "dim": int, "seconds": float,   # feature dimension; time to score this set
                  "source": {...},                # meta.json's: checkpoint path and digest, or baseline name
                  "frame_rate": {...}}, ...]}     # probes on 10 ms labels: features_ms, labels_ms, how, factor

:func:`write_outputs` puts a report in a folder (``metrics.json`` last, so a
folder holding it is complete), every file written atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from audiossl.data.alignments import labels_for_frames, load_alignments, load_phone_inventory, load_split
from audiossl.data.corpus import Utterance, load_corpus
from audiossl.extract import ExtractOptions, FeatureSet, extract, open_source, select_utterances
from audiossl.models.baselines import BASELINES, build_baseline
from audiossl.probes.tasks import AtLabelRate, ProbeError, default_split
from audiossl.utils.atomic import DiskFullError, atomic_write
from audiossl.utils.stopping import stop_point

__all__ = ["RunOptions", "Score", "checked", "corpus_audio", "dropped_lines", "feature_sets_with_floors",
           "labelled_in_every_set", "listing", "open_layers", "phone_labels", "probe_features", "resolve_split",
           "role", "row_name", "score_sets", "scores", "with_floors", "write_outputs"]

SHOWN_IDS = 5  # missing utterances named in reports


@dataclass(frozen=True)
class Score:
    """One figure of a probe's result rows (``report["scores"]``)."""
    key: str
    label: str
    lower_is_better: bool


def checked(loader, *args):
    """Run a file reader; its ValueError (naming file and line) becomes a ProbeError."""
    try:
        return loader(*args)
    except ValueError as e:
        raise ProbeError(str(e)) from None


def phone_labels(alignments: str | Path, phones: str | Path | None) -> tuple[dict[str, np.ndarray], int]:
    """Frame phone labels and the number of phone classes: the inventory's size (labels beyond it refused),
    else the largest label + 1."""
    num_classes = len(checked(load_phone_inventory, phones)) if phones is not None else None
    labels = checked(load_alignments, alignments, num_classes)
    if not labels:
        raise ProbeError(f"{alignments}: no alignments")
    return labels, num_classes or 1 + max(int(frames.max()) for frames in labels.values())


def listing(ids: Sequence[str]) -> dict:
    """How reports name dropped utterances: the count and the first ``SHOWN_IDS`` ids."""
    return {"count": len(ids), "ids": list(ids[:SHOWN_IDS])}


def dropped_lines(dropped: Mapping[str, dict]) -> list[str]:
    """Report lines for ``{why: listing(ids)}``: the utterances a probe left out, and why."""
    return [f"dropped: {ids['count']} utterance(s) without {why}, e.g. {', '.join(ids['ids'])}"
            for why, ids in dropped.items() if ids["count"]]


def row_name(row: Mapping) -> str:
    """A result row's name in a probe's table: the feature set, marked when it is a floor."""
    return row["features"] + (" (floor)" if row["role"] == "baseline" else "")


def role(features: FeatureSet) -> str:
    """``baseline`` for a hand-made feature (MFCC, log-mel), ``model`` for a checkpoint's layer."""
    return "baseline" if "baseline" in features.meta["source"] else "model"


def open_layers(features_dir: str | Path, layers: Sequence[str]) -> list[FeatureSet]:
    if not layers:
        raise ProbeError("no layers to probe")
    return [FeatureSet(Path(features_dir) / layer) for layer in layers]


@dataclass(frozen=True)
class RunOptions:
    """What every probe runs with beside its own inputs and settings: the floors scored beside the layers, their
    audio, the device, the decoding workers and the progress bars (``audiossl probe`` builds one from its flags)."""
    baselines: Sequence[str] = tuple(BASELINES)  # hand-made floors (mfcc, logmel), extracted beside the layers
    data: str | Path | None = None  # a corpus folder or manifest holding the floors' audio; None: the layers' files
    device: str | torch.device = "cpu"  # where floors are extracted and probes run
    num_workers: int = 0  # audio decoding processes for the floors' extraction
    progress: bool = True  # progress bars

    def __post_init__(self) -> None:
        object.__setattr__(self, "baselines", tuple(self.baselines))
        object.__setattr__(self, "device", torch.device(self.device))


@contextlib.contextmanager
def probe_features(out_dir: str | Path | None, features: str | Path | None = None,
                   checkpoint: str | Path | None = None, baseline: str | None = None,
                   layers: Sequence[str] = ("context",), data: str | Path | None = None,
                   id_files: Sequence[str | Path] = (),
                   options: RunOptions = RunOptions()) -> Iterator[tuple[Path, list[str]]]:
    """The feature folder and layers a probe reads: given, or extracted from a checkpoint or a baseline.

    Exactly one of ``features``, ``checkpoint`` and ``baseline``. The latter
    two extract ``data``'s utterances (those of ``id_files`` when given) into
    ``out_dir/features``, where a re-run finds and reuses them, or into a
    temporary folder removed on exit when ``out_dir`` is None; ``options``
    says on which device, with how many workers and whether with a progress bar.

    Yields:
        The extraction folder and the layer folders to probe in it.
    """
    if sum(x is not None for x in (features, checkpoint, baseline)) != 1:
        raise ProbeError("probe one source: a features folder, a checkpoint or a baseline")
    if features is not None:
        yield Path(features), list(layers)
        return
    if data is None:
        raise ProbeError("extracting features from a checkpoint or a baseline needs the audio (--data)")
    model, names, source = open_source(checkpoint, baseline, layers, options.device)
    utterances, _ = select_utterances(data, id_files, progress=options.progress, missing_ok=True)
    if not utterances:
        raise ProbeError(f"{data}: none of the utterances listed in {', '.join(map(str, id_files))}")
    with contextlib.ExitStack() as stack:
        folder = (Path(out_dir) / "features" if out_dir is not None
                  else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="audiossl-probe-"))))
        extract(model, utterances, folder, names, source,
                ExtractOptions(root=data if Path(data).is_dir() else None, device=options.device,
                               num_workers=options.num_workers, progress=options.progress))
        yield folder, list(names)


def resolve_split(reference: FeatureSet, train_split, test_split, usable=None) -> tuple[list[str], list[str]]:
    """Split files, or the default hold-out over the utterances of ``reference`` that ``usable`` admits."""
    if (train_split is None) != (test_split is None):
        raise ProbeError("give both a training and a test split, or neither")
    if train_split is not None:
        train_ids, test_ids = checked(load_split, train_split), checked(load_split, test_split)
        overlap = set(train_ids) & set(test_ids)
        if overlap:
            raise ProbeError(f"{len(overlap)} utterance(s) in both {train_split} and {test_split}, "
                             f"e.g. {', '.join(sorted(overlap)[:3])}")
    else:
        speakers = {u: s for u, s in reference.speakers.items() if usable is None or u in usable}
        train_ids, test_ids = default_split(speakers)
    if not train_ids or not test_ids:
        raise ProbeError(f"the split leaves {len(train_ids)} training and {len(test_ids)} test utterances")
    return train_ids, test_ids


def corpus_audio(data: str | Path | None, ids: Sequence[str], progress: bool) -> list[Utterance] | None:
    """The utterances of ``data`` among ``ids``; None without ``data``."""
    if data is None:
        return None
    wanted = set(ids)
    return [u for u in load_corpus(data, progress=progress)[0] if u.id in wanted]


def with_floors(layer_sets: list[FeatureSet], ids: Sequence[str], options: RunOptions) -> list[FeatureSet]:
    """The layers, then each of ``options.baselines`` extracted beside them for ``ids`` (resumed if there).

    The floors' audio: the utterances of ``options.data`` when given, else
    the files the first layer was extracted from.
    """
    unknown = sorted(set(options.baselines) - set(BASELINES))
    if unknown:
        raise ProbeError(f"unknown baseline(s) {unknown}; known: {', '.join(BASELINES)}")
    reference = layer_sets[0]
    wanted = set(ids)
    utterances = corpus_audio(options.data, ids, options.progress)
    todo = [u for u in (reference.utterances if utterances is None else utterances) if u.id in wanted]
    sets = list(layer_sets)
    for name in options.baselines:
        if name in [fs.name for fs in sets]:
            continue
        if not todo:
            raise ProbeError(f"no audio to extract the {name} floor from for the {len(wanted)} utterance(s) probed")
        model = build_baseline(name, int(reference.meta["sample_rate"]))
        sets.extend(extract(model, todo, reference.folder.parent, {name: "encoder"}, {"baseline": name},
                            ExtractOptions(device=options.device, num_workers=options.num_workers,
                                           progress=options.progress)).values())
    return sets


def feature_sets_with_floors(features_dir: str | Path, layers: Sequence[str], ids: Sequence[str],
                             options: RunOptions) -> list[FeatureSet]:
    """The layers of ``features_dir``, then the floors extracted beside them for ``ids`` (:func:`with_floors`)."""
    return with_floors(open_layers(features_dir, layers), ids, options)


def labelled_in_every_set(sets: Sequence[FeatureSet], labels: Mapping[str, np.ndarray], listed: Sequence[str],
                          where: str | Path, labels_file: str | Path
                          ) -> tuple[list[str], list[str], dict[str, np.ndarray]]:
    """The ``listed`` utterances with labels and features in every set, the labelled ones left out (no
    features somewhere), and each kept utterance's labels cut to its shortest features: one set of frames
    for every feature set. ``where`` (the listing) and ``labels_file`` name the inputs when nothing is left."""
    unextracted = [u for u in listed if u in labels and any(u not in fs.num_frames for fs in sets)]
    left_out = set(unextracted)
    ids = [u for u in listed if u in labels and u not in left_out]
    if not ids:
        raise ProbeError(f"no utterance of {where} has both labels in {labels_file} and features in every "
                         "feature set")
    try:
        cut = {u: min(len(labels_for_frames(labels[u], fs.num_frames[u], u)) for fs in sets) for u in ids}
    except ValueError as e:
        raise ProbeError(str(e)) from None
    return ids, unextracted, {u: labels[u][: cut[u]] for u in ids}


def score_sets(sets: Sequence[FeatureSet], score: Callable[[FeatureSet], dict]) -> list[dict]:
    """One result row per feature set: its name and role, what ``score`` returns for it (which may set the
    role itself), then its dimension, the seconds ``score`` took, its source and, for a set read at the labels'
    rate (:func:`~audiossl.probes.tasks.at_label_rate`), ``frame_rate``: how it was brought there."""
    rows = []
    for features in sets:
        stop_point(f"before scoring {features.name} ({len(rows)} of {len(sets)} feature sets scored)")
        began = time.perf_counter()
        row = {"features": features.name, "role": role(features), **score(features)}
        rows.append({**row, "dim": features.dim, "seconds": round(time.perf_counter() - began, 2),
                     "source": features.meta["source"],
                     **({"frame_rate": features.record} if isinstance(features, AtLabelRate) else {})})
    return rows


def scores(*figures: Score) -> list[dict]:
    """``report["scores"]``: the figures of the result rows, the headline first."""
    return [asdict(figure) for figure in figures]


def _write_curves(report: dict, folder: Path) -> None:
    """TensorBoard scalars per feature set and epoch, written beside ``folder`` and renamed into place.

    The event file is written here, in this thread and atomically, not by
    ``SummaryWriter``, whose writer thread answers a full disk with a thread
    traceback after the command's own error line and leaves its folder behind.
    A failed write leaves the previous ``folder`` as it was and no temporary one.
    """
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter
    from torch.utils.tensorboard.summary import scalar

    now = time.time()
    events = [Event(wall_time=now, file_version="brain.Event:2")]
    events += [Event(wall_time=now, step=epoch, summary=scalar(f"{row['features']}/{name}", value))
               for row in report["results"] for name, values in row["history"].items()
               for epoch, value in enumerate(values, start=1)]

    def write(f) -> None:
        records = RecordWriter(f)
        for event in events:
            records.write(event.SerializeToString())

    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        atomic_write(tmp / f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}", write)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except DiskFullError as e:  # named by the folder the user asked for, not the temporary one
        kept = "the previous curves are intact" if folder.exists() else "no curves were there before"
        raise DiskFullError(e.errno, f"{e.strerror.split(' writing ')[0]} writing {folder}; {kept}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_outputs(report: dict, table: str, out_dir: str | Path) -> None:
    """``out_dir/tb`` (each row's ``history``, per epoch, when the probe trains), ``report.txt`` (the table)
    and, last, ``metrics.json`` (the report), each written atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if any("history" in row for row in report["results"]):
        _write_curves(report, out_dir / "tb")
    atomic_write(out_dir / "report.txt", lambda f: f.write(table.encode() + b"\n"))
    atomic_write(out_dir / "metrics.json", lambda f: f.write(json.dumps(report, indent=2).encode() + b"\n"))
