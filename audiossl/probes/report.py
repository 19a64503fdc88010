"""Phone and speaker probe runs: every requested layer beside the hand-made floor, and their outputs.

A run reads the model's extracted layers (an ``audiossl extract`` folder, or
one :func:`probe_features` fills from a checkpoint or a hand-made baseline
first), extracts the floors (MFCC, log-mel) for the same utterances into the
same folder when they are not there yet, trains the same linear probe on each
and returns one report. A seeded tenth of the training utterances is held out
to choose each probe's epoch (early stopping). Utterances of the splits that
have no phone alignment, or no features in a feature set, are dropped from
that probe and reported (count and first ids), never silently.

:func:`write_outputs` puts a report in a folder, every file written atomically::

    OUT/metrics.json   the report, schema below
    OUT/report.txt     the printed table (format_report)
    OUT/tb/            TensorBoard, per epoch: <features>/train_loss, <features>/heldout_accuracy
                       and <features>/heldout_loss

``metrics.json``::

    {"task": "phone" | "speaker",
     "num_classes": int, "unit": str,        # what one example is: "10 ms frame", "utterance (mean)" ...
     "train_utterances": int,                # the training split, held-out part included
     "heldout_utterances": int,              # of those, held out to choose the epoch
     "test_utterances": int,
     "accuracy": float, "chance": float,     # the first result's, for readers wanting one number
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
         "missing": {                        # split utterances dropped from this probe
             "alignments": {"count": int, "ids": [str, ...]},   # phone probe only; first ids
             "features": {"count": int, "ids": [str, ...]}},
         "train_accuracy": float, "heldout_accuracy": float | null, "test_loss": float, "dim": int,
         "source": {...},                    # meta.json's: checkpoint path and digest, or baseline name
         "history": {"train_loss": [...], "heldout_accuracy": [...], "heldout_loss": [...]}}, ...]}
                                             # one value per epoch run
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from audiossl.data.alignments import load_alignments, load_phone_inventory, load_split
from audiossl.data.corpus import Utterance, load_corpus
from audiossl.extract import FeatureSet, extract, open_source, select_utterances
from audiossl.features import atomic_write
from audiossl.probes.baselines import BASELINES, build_baseline
from audiossl.probes.linear import ProbeSettings, train_linear_probe
from audiossl.probes.tasks import ProbeError, default_split, heldout_split, phone_examples, speaker_examples

__all__ = ["DEFAULT_SETTINGS", "PUBLISHED", "feature_sets_with_floors", "format_report", "phone_probe",
           "probe_features", "speaker_probe", "write_outputs", "write_table_and_metrics"]

# van den Oord et al. 2018, Table 1: linear probes on LibriSpeech 100 h (test accuracy).
PUBLISHED = {
    "phone": {"CPC": 0.646, "MFCC": 0.397, "supervised": 0.746},
    "speaker": {"CPC": 0.974, "MFCC": 0.176, "supervised": 0.985},
}

# Few examples per utterance for speakers: smaller batches, more epochs, more patience.
DEFAULT_SETTINGS = {"phone": ProbeSettings(), "speaker": ProbeSettings(epochs=100, batch_size=64, patience=20)}
SHOWN_IDS = 5  # missing utterances named in reports


def _read(loader, *args):
    """Run a file reader; its ValueError (naming file and line) becomes a ProbeError."""
    try:
        return loader(*args)
    except ValueError as e:
        raise ProbeError(str(e)) from None


def _open_layers(features_dir: Path, layers: Sequence[str]) -> list[FeatureSet]:
    if not layers:
        raise ProbeError("no layers to probe")
    return [FeatureSet(features_dir / layer) for layer in layers]


@contextlib.contextmanager
def probe_features(out_dir: str | Path | None, features: str | Path | None = None,
                   checkpoint: str | Path | None = None, baseline: str | None = None,
                   layers: Sequence[str] = ("context",), data: str | Path | None = None,
                   id_files: Sequence[str | Path] = (), device: str | torch.device = "cpu", num_workers: int = 0,
                   progress: bool = True) -> Iterator[tuple[Path, list[str]]]:
    """The feature folder and layers a probe reads: given, or extracted from a checkpoint or a baseline.

    Exactly one of ``features``, ``checkpoint`` and ``baseline``. The latter
    two extract ``data``'s utterances (those of ``id_files`` when given) into
    ``out_dir/features``, where a re-run finds and reuses them, or into a
    temporary folder removed on exit when ``out_dir`` is None.

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
    model, names, source = open_source(checkpoint, baseline, layers, device)
    utterances, _ = select_utterances(data, id_files, progress=progress, missing_ok=True)
    if not utterances:
        raise ProbeError(f"{data}: none of the utterances listed in {', '.join(map(str, id_files))}")
    with contextlib.ExitStack() as stack:
        folder = (Path(out_dir) / "features" if out_dir is not None
                  else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="audiossl-probe-"))))
        extract(model, utterances, folder, names, source, root=data if Path(data).is_dir() else None,
                device=device, num_workers=num_workers, progress=progress)
        yield folder, list(names)


def _split(reference: FeatureSet, train_split, test_split, usable=None) -> tuple[list[str], list[str]]:
    """Split files, or the default hold-out over the utterances of ``reference`` that ``usable`` admits."""
    if (train_split is None) != (test_split is None):
        raise ProbeError("give both a training and a test split, or neither")
    if train_split is not None:
        train_ids, test_ids = _read(load_split, train_split), _read(load_split, test_split)
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


def _audio(data: str | Path | None, ids: Sequence[str], progress: bool) -> list[Utterance] | None:
    """The utterances of ``data`` among ``ids``; None without ``data``."""
    if data is None:
        return None
    wanted = set(ids)
    return [u for u in load_corpus(data, progress=progress)[0] if u.id in wanted]


def _with_baselines(layer_sets: list[FeatureSet], baselines: Sequence[str], ids: Sequence[str],
                    device: torch.device, num_workers: int, progress: bool,
                    utterances: Sequence[Utterance] | None = None) -> list[FeatureSet]:
    """The layers, then each baseline extracted beside them for ``ids`` (resumed if there).

    The baselines' audio: ``utterances`` when given, else the files the first
    layer was extracted from.
    """
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ProbeError(f"unknown baseline(s) {unknown}; known: {', '.join(BASELINES)}")
    reference = layer_sets[0]
    wanted = set(ids)
    todo = [u for u in (reference.utterances if utterances is None else utterances) if u.id in wanted]
    sets = list(layer_sets)
    for name in baselines:
        if name in [fs.name for fs in sets]:
            continue
        if not todo:
            raise ProbeError(f"no audio to extract the {name} floor from for the {len(wanted)} utterance(s) probed")
        model = build_baseline(name, int(reference.meta["sample_rate"]))
        sets.extend(extract(model, todo, reference.folder.parent, {name: "encoder"}, {"baseline": name},
                            device=device, num_workers=num_workers, progress=progress).values())
    return sets


def feature_sets_with_floors(features_dir: str | Path, layers: Sequence[str], baselines: Sequence[str],
                             ids: Sequence[str], data: str | Path | None, device: torch.device, num_workers: int = 0,
                             progress: bool = True) -> list[FeatureSet]:
    """The layers of ``features_dir``, then each baseline extracted beside them for ``ids`` (resumed if there).

    The baselines' audio: the utterances of ``data`` when given, else the
    files the first layer was extracted from.
    """
    layer_sets = _open_layers(Path(features_dir), layers)
    return _with_baselines(layer_sets, baselines, ids, device, num_workers, progress, _audio(data, ids, progress))


def _majority(train_labels: np.ndarray, test_labels: np.ndarray) -> float:
    """Test accuracy of always answering the most frequent training class."""
    most_common = Counter(train_labels.tolist()).most_common(1)[0][0]
    return float(np.mean(test_labels == most_common))


def _listing(ids: Sequence[str]) -> dict:
    return {"count": len(ids), "ids": list(ids[:SHOWN_IDS])}


def _run(task: str, sets: list[FeatureSet], train_ids: list[str], test_ids: list[str], examples,
         num_classes: int, settings: ProbeSettings, device: torch.device, progress: bool,
         unlabelled: Sequence[str] | None = None) -> dict:
    """Probe every feature set on the utterances it has; ``unlabelled`` ones are dropped everywhere."""
    fit_ids, heldout_ids = heldout_split(train_ids, settings.heldout_fraction, settings.seed)
    dropped = set(unlabelled or ())
    rows = []
    for features in sets:
        usable = [u for u in train_ids + test_ids if u not in dropped]
        missing = {"alignments": _listing(unlabelled)} if unlabelled is not None else {}
        missing["features"] = _listing([u for u in usable if u not in features.num_frames])
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
        history = result.pop("history")
        role = "baseline" if "baseline" in features.meta["source"] else "model"
        # Keys in the order of the schema; dict displays evaluate left to right, so the pops come first.
        rows.append({"features": features.name, "role": role, "accuracy": result.pop("accuracy"),
                     "chance": _majority(train_y, test_y),
                     **{k: result.pop(k) for k in ("train_examples", "heldout_examples", "test_examples", "epochs",
                                                   "best_epoch")},
                     "missing": missing, **result, "source": features.meta["source"], "history": history})
    return {"task": task, "num_classes": num_classes, "train_utterances": len(train_ids),
            "heldout_utterances": len(heldout_ids), "test_utterances": len(test_ids),
            "accuracy": rows[0]["accuracy"], "chance": rows[0]["chance"], "settings": asdict(settings),
            "published": PUBLISHED[task], "results": rows}


def phone_probe(features_dir: str | Path, alignments: str | Path, layers: Sequence[str] = ("context",),
                baselines: Sequence[str] = tuple(BASELINES), *, data: str | Path | None = None,
                phones: str | Path | None = None, train_split: str | Path | None = None,
                test_split: str | Path | None = None, settings: ProbeSettings | None = None,
                device: str | torch.device = "cpu", num_workers: int = 0, progress: bool = True) -> dict:
    """Linear phone classification per 10 ms frame, for each layer and baseline.

    Args:
        features_dir: an ``audiossl extract`` output folder.
        alignments: ``converted_aligned_phones.txt``.
        layers: sub-folders of ``features_dir`` to probe.
        baselines: hand-made features to probe beside them (``mfcc``, ``logmel``).
        data: a corpus folder or manifest holding the baselines' audio;
            None: the files the features were extracted from.
        phones: the phone inventory; fixes the number of classes (else the
            largest label + 1).
        train_split, test_split: utterance id lists; neither: every fifth
            labelled utterance of each speaker is held out.
        settings: the linear probe's training settings.
        device: where baselines are extracted and probes trained.
        num_workers: audio decoding processes for baseline extraction.

    Returns:
        The report (see the module docstring), a JSON-ready dict.
    """
    features_dir, device = Path(features_dir), torch.device(device)
    settings = settings or DEFAULT_SETTINGS["phone"]
    layer_sets = _open_layers(features_dir, layers)
    num_classes = len(_read(load_phone_inventory, phones)) if phones is not None else None
    labels = _read(load_alignments, alignments, num_classes)
    if not labels:
        raise ProbeError(f"{alignments}: no alignments")
    if num_classes is None:
        num_classes = 1 + max(int(l.max()) for l in labels.values())
    train_ids, test_ids = _split(layer_sets[0], train_split, test_split, usable=labels)
    labelled = [u for u in train_ids + test_ids if u in labels]
    sets = _with_baselines(layer_sets, baselines, labelled, device, num_workers, progress,
                           _audio(data, labelled, progress))
    report = _run("phone", sets, train_ids, test_ids,
                  lambda fs, ids, what: phone_examples(fs, labels, ids, what), num_classes, settings, device,
                  progress, unlabelled=[u for u in train_ids + test_ids if u not in labels])
    report["unit"] = "10 ms frame"
    return report


def speaker_probe(features_dir: str | Path, layers: Sequence[str] = ("context",),
                  baselines: Sequence[str] = tuple(BASELINES), *, data: str | Path | None = None,
                  window_frames: int = 0, pool: str = "mean", train_split: str | Path | None = None,
                  test_split: str | Path | None = None, settings: ProbeSettings | None = None,
                  device: str | torch.device = "cpu", num_workers: int = 0, progress: bool = True) -> dict:
    """Linear speaker classification per utterance (or window), for each layer and baseline.

    Args:
        features_dir: an ``audiossl extract`` output folder.
        layers: sub-folders of ``features_dir`` to probe.
        baselines: hand-made features to probe beside them (``mfcc``, ``logmel``).
        data: a corpus folder or manifest holding the baselines' audio;
            None: the files the features were extracted from.
        window_frames: frames per example; 0: whole utterances (CPC's protocol).
        pool: ``mean`` or ``last`` frame of each window.
        train_split, test_split: utterance id lists; neither: every fifth
            utterance of each speaker is held out.
        settings: the linear probe's training settings.
        device: where baselines are extracted and probes trained.
        num_workers: audio decoding processes for baseline extraction.

    Returns:
        The report (see the module docstring), a JSON-ready dict.
    """
    features_dir, device = Path(features_dir), torch.device(device)
    settings = settings or DEFAULT_SETTINGS["speaker"]
    layer_sets = _open_layers(features_dir, layers)
    train_ids, test_ids = _split(layer_sets[0], train_split, test_split)
    speakers = layer_sets[0].speakers
    speaker_index = {s: i for i, s in enumerate(sorted({speakers[u] for u in train_ids if u in speakers}))}
    sets = _with_baselines(layer_sets, baselines, train_ids + test_ids, device, num_workers, progress,
                           _audio(data, train_ids + test_ids, progress))
    report = _run("speaker", sets, train_ids, test_ids,
                  lambda fs, ids, what: speaker_examples(fs, ids, speaker_index, window_frames, pool, what),
                  len(speaker_index), settings, device, progress)
    unit = "utterance" if window_frames == 0 else f"window of {window_frames} frames"
    report["unit"] = f"{unit} ({pool})"
    return report


def format_report(report: dict) -> str:
    """The report as a table: one row per feature set, then the paper's figures and what was dropped."""
    lines = [f"{report['task']} probe: {report['num_classes']} classes, one example per {report['unit']}; "
             f"{report['train_utterances']} training utterances ({report['heldout_utterances']} held out to choose "
             f"the epoch) / {report['test_utterances']} test",
             f"{'features':<16}{'dim':>5}{'train acc':>11}{'held-out':>10}{'test acc':>10}{'chance':>8}"
             f"{'epoch':>8}   examples (train / held-out / test)"]
    for row in report["results"]:
        name = row["features"] + (" (floor)" if row["role"] == "baseline" else "")
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


def _write_curves(report: dict, folder: Path) -> None:
    """TensorBoard scalars per feature set and epoch, written beside ``folder`` and renamed into place."""
    from torch.utils.tensorboard import SummaryWriter

    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    writer = SummaryWriter(str(tmp))
    for row in report["results"]:
        for name, values in row["history"].items():
            for epoch, value in enumerate(values, start=1):
                writer.add_scalar(f"{row['features']}/{name}", value, epoch)
    writer.close()
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def write_table_and_metrics(report: dict, table: str, out_dir: str | Path) -> None:
    """``out_dir/report.txt`` (the table) and, last, ``metrics.json`` (the report), each written atomically.

    Every probe's outputs (the trained ones add their curves first: :func:`write_outputs`).
    """
    out_dir = Path(out_dir)
    atomic_write(out_dir / "report.txt", lambda f: f.write(table.encode() + b"\n"))
    atomic_write(out_dir / "metrics.json", lambda f: f.write(json.dumps(report, indent=2).encode() + b"\n"))


def write_outputs(report: dict, table: str, out_dir: str | Path) -> None:
    """``out_dir/tb`` (curves), ``report.txt`` (the table) and, last, ``metrics.json`` (the report)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_curves(report, out_dir / "tb")
    write_table_and_metrics(report, table, out_dir)
