"""Reading an experiment folder: what ``audiossl train``, ``extract`` and ``probe`` left there.

The layout is the one ``recipes/librispeech/run.sh`` makes::

    EXP_DIR/pretrain/          audiossl train: checkpoint.pt, config.yaml, manifest.tsv,
                               tb/ (TensorBoard scalars), train_log.tsv
    EXP_DIR/features_*/<layer> audiossl extract: meta.json, index.tsv, <id>.npy
    EXP_DIR/probe_<kind>_<source>/metrics.json
                               audiossl probe (kind phone, speaker, abx, ctc-phone ...;
                               source model, mfcc, logmel)

A bare ``audiossl train`` folder (checkpoint.pt and tb/ directly inside) is
read as its own training folder. Phone alignments and split lists are the CPC
release's files (``converted_aligned_phones.txt``, ``phones.txt``,
``train_split.txt``, ``test_split.txt``, see :mod:`audiossl.data.alignments`).
:class:`PageInputs` finds what the page's figures read once and loads it when
a figure asks, raising :class:`Unavailable` for what is missing;
:mod:`audiossl.report` turns all this into figures.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from audiossl.data.alignments import load_alignments, load_phone_inventory, load_split
from audiossl.data.audio import read_audio
from audiossl.data.corpus import Utterance, load_corpus, read_manifest
from audiossl.extract import FeatureError, FeatureSet

__all__ = ["Labels", "LayerFeatures", "PageInputs", "ProbeScore", "Unavailable", "find_feature_folder", "find_labels",
           "find_training_folder", "load_utterances", "per_step_curves", "read_probe_scores", "read_scalars",
           "read_train_log"]

Curve = tuple[np.ndarray, np.ndarray]  # (steps, values), both (points,)
# Flat metrics.json keys (one score per file), in order of preference: (key, metric, lower is better).
METRIC_KEYS = (("accuracy", "accuracy", False), ("per", "PER", True),
               ("abx_error", "ABX error", True), ("error_rate", "error", True), ("error", "error", True))


@dataclasses.dataclass
class ProbeScore:
    task: str  # phone, speaker, abx, ctc-phone ...
    metric: str  # accuracy, PER, error
    source: str  # model (or model:<layer>), mfcc, logmel ...
    value: float  # a fraction
    lower_is_better: bool
    chance: float | None  # majority-class accuracy, when the probe reports it

    @property
    def group(self) -> str:
        return f"{self.task} {self.metric}"


@dataclasses.dataclass
class Labels:
    folder: Path  # where the files were found
    alignments: dict[str, np.ndarray]  # utterance id -> 100 Hz phone classes
    phones: list[str]  # class -> name
    train_ids: list[str] | None  # train_split.txt, when there
    test_ids: list[str] | None  # test_split.txt, when there


def read_scalars(tb_dir: str | Path) -> dict[str, Curve]:
    """Every scalar of the TensorBoard event files in ``tb_dir``: ``{tag: (steps, values)}``, by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    events.Reload()
    curves = {}
    for tag in events.Tags()["scalars"]:
        points = sorted((e.step, e.value) for e in events.Scalars(tag))
        curves[tag] = (np.array([s for s, _ in points]), np.array([v for _, v in points]))
    return curves


def read_train_log(path: Path) -> dict[str, Curve]:
    """``train_log.tsv`` (step, loss, lr per step) as curves."""
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    rows = np.array([[float(x) for x in row] for row in rows if len(row) == 3]).reshape(-1, 3)
    return {"train/loss": (rows[:, 0], rows[:, 1]), "train/lr": (rows[:, 0], rows[:, 2])} if len(rows) else {}


def per_step_curves(scalars: dict[str, Curve], name: str) -> dict[int, Curve]:
    """``{k: curve}`` of the tags ``<name>_per_step/<name>_k<k>`` (CPC's per-prediction-step metrics)."""
    pattern = re.compile(rf"{name}_per_step/{name}_k(\d+)$")
    return {int(m.group(1)): curve for tag, curve in scalars.items() if (m := pattern.match(tag))}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scores_in(kind: str, source: str, metrics: dict) -> list[ProbeScore]:
    """The scores of one metrics.json.

    An ``audiossl probe`` report (:mod:`audiossl.probes.runner`) names its
    figures (``scores``: key, label, lower is better) and has a row per
    feature set (``results``): the probed layers and the floors extracted
    beside them; a row's source is its baseline's name, else ``model``
    (``model:<layer>`` when several layers were probed). Any other file gives
    one score from the first known flat key (``METRIC_KEYS``), its source from
    the folder name.
    """
    if not isinstance(metrics.get("results"), list):
        for key, metric, lower in METRIC_KEYS:
            if _number(metrics.get(key)):
                chance = metrics.get("chance")
                return [ProbeScore(kind, metric, source, float(metrics[key]), lower, chance)]
        return []
    figures = [f for f in metrics.get("scores") or () if isinstance(f, dict) and {"key", "label"} <= set(f)]
    rows = [row for row in metrics["results"] if isinstance(row, dict)]
    layers = [row for row in rows if row.get("role") != "baseline"]
    task = metrics.get("task", kind)
    if task == "units" and "k" in metrics:  # one group per number of units
        task = f"units k={metrics['k']}"
    scores = []
    for row in rows:
        name = row.get("features") if row.get("role") == "baseline" else None
        name = name or ("model" if len(layers) == 1 else f"model:{row.get('features')}")
        chance = row.get("chance", metrics.get("chance"))
        for figure in figures:
            lower = bool(figure.get("lower_is_better"))
            if _number(row.get(figure["key"])):
                scores.append(ProbeScore(task, figure["label"], name, float(row[figure["key"]]), lower,
                                         None if lower else chance))
    return scores


def read_probe_scores(exp_dir: str | Path) -> tuple[list[ProbeScore], list[str]]:
    """Scores of ``EXP_DIR/probe_<kind>_<source>/metrics.json`` files, one per (metric, source).

    Returns:
        The scores and one note per file that could not be read or held no
        known metric.
    """
    scores, notes, seen = [], [], set()
    for path in sorted(Path(exp_dir).glob("probe_*/metrics.json")):
        name = path.parent.name.removeprefix("probe_")
        kind, _, source = name.rpartition("_") if "_" in name else (name, "", "model")
        try:
            metrics = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            notes.append(f"`{path}`: unreadable ({e})")
            continue
        found = _scores_in(kind, source, metrics) if isinstance(metrics, dict) else []
        if not found:
            notes.append(f"`{path}`: no known metric (neither audiossl probe results nor one of "
                         f"{', '.join(k for k, _, _ in METRIC_KEYS)})")
        for score in found:
            if (score.group, score.source) not in seen:
                seen.add((score.group, score.source))
                scores.append(score)
    return scores, notes


def find_labels(folders: Sequence[Path]) -> Labels | None:
    """The first of ``folders`` holding ``converted_aligned_phones.txt``, read."""
    for folder in folders:
        path = folder / "converted_aligned_phones.txt"
        if not path.is_file():
            continue
        phones = folder / "phones.txt"
        names = load_phone_inventory(phones) if phones.is_file() else None
        alignments = load_alignments(path, len(names) if names else None)
        if names is None:
            names = [str(c) for c in range(1 + max((int(a.max()) for a in alignments.values()), default=0))]
        splits = [load_split(folder / f) if (folder / f).is_file() else None
                  for f in ("train_split.txt", "test_split.txt")]
        return Labels(folder, alignments, names, *splits)
    return None


class LayerFeatures:
    """One layer's per-utterance features: from an extraction folder, else computed from the checkpoint.

    Args:
        folder: an ``audiossl extract`` layer folder, or None.
        checkpoint: the trained model, used for utterances the folder lacks
            (loaded on first use), or None.
        layer: the model layer (``encoder``, ``context``, ``context_<i>``).
        utterances: id -> utterance, where the audio is.
        device: where the model runs.
    """

    def __init__(self, folder: FeatureSet | None, checkpoint: Path | None, layer: str,
                 utterances: dict[str, Utterance], device: torch.device):
        if folder is None and checkpoint is None:
            raise ValueError("features need an extraction folder or a checkpoint")
        self.folder, self.checkpoint, self.layer = folder, checkpoint, layer
        self.utterances, self.device, self._model = utterances, device, None
        self.describe = f"`{folder.folder}`" if folder is not None else f"layer `{layer}` of `{checkpoint}`"

    @property
    def frame_rate(self) -> float:
        return self.folder.frame_rate if self.folder is not None else self._get_model().frame_rate

    def _get_model(self):
        if self._model is None:
            from audiossl.checkpoint import load_model

            self._model = load_model(self.checkpoint, self.device)
        return self._model

    def load(self, ids: Sequence[str], batch_size: int = 8) -> dict[str, np.ndarray]:
        """``{id: (frames, dim) float32}`` for the ids that can be had."""
        feats = {}
        if self.folder is not None:
            feats = {u: self.folder.load(u).astype(np.float32) for u in ids if u in self.folder.num_frames}
        todo = sorted((self.utterances[u] for u in ids if u not in feats and u in self.utterances),
                      key=lambda u: u.num_samples)
        if todo and self.checkpoint is not None:
            model = self._get_model()
            for start in range(0, len(todo), batch_size):
                batch = todo[start: start + batch_size]
                wavs = [read_audio(u.path, model.sample_rate) for u in batch]
                lengths = torch.tensor([len(w) for w in wavs])
                padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True).to(self.device)  # (B, T)
                with torch.inference_mode():
                    out, _ = model.extract_features(padded, lengths.to(self.device), (self.layer,))
                x, frames = out[self.layer]
                for row, u in enumerate(batch):
                    feats[u.id] = x[row, : int(frames[row])].float().cpu().numpy()
        return feats




def find_training_folder(exp_dir: Path) -> Path | None:
    """``EXP_DIR/pretrain``, or ``EXP_DIR`` itself, whichever holds checkpoint.pt or tb/."""
    for folder in (exp_dir / "pretrain", exp_dir):
        if (folder / "checkpoint.pt").is_file() or (folder / "tb").is_dir():
            return folder
    return None


def find_feature_folder(exp_dir: Path, layer: str) -> FeatureSet | None:
    """A finished extraction of ``layer`` from a checkpoint (not a baseline), below ``exp_dir``."""
    for meta in sorted(exp_dir.glob(f"*/{layer}/meta.json")) + sorted(exp_dir.glob(f"{layer}/meta.json")):
        try:
            folder = FeatureSet(meta.parent)
        except FeatureError:  # unfinished or foreign: look further
            continue
        if "checkpoint" in folder.meta.get("source", {}):
            return folder
    return None


def load_utterances(data: str | Path | None, manifest: Path | None,
                    folder: FeatureSet | None) -> tuple[str, list[Utterance]]:
    """The corpus: ``data`` when given, else the training manifest, else the extraction's list.

    A corpus folder that training scanned already is read from its manifest
    rather than scanned again.

    Returns:
        Where the utterances came from (markdown) and the utterances.
    """
    if data:
        data = Path(data)
        if data.is_dir() and manifest is not None and manifest.is_file():
            cached = read_manifest(manifest)
            if all(Path(u.path).is_relative_to(data.resolve()) for u in cached):
                return f"`{data}` (as listed in `{manifest}`)", cached
        return f"`{data}`", load_corpus(data, progress=False)[0]
    if manifest is not None and manifest.is_file():
        return f"`{manifest}`", read_manifest(manifest)
    if folder is not None:
        return f"`{folder.folder / 'utterances.tsv'}`", folder.utterances
    return "", []


class Unavailable(Exception):
    """A figure's inputs are missing; the message says which."""


class PageInputs:
    """What the page's figures read from an experiment folder, found once and loaded only when a figure asks."""

    def __init__(self, exp_dir: Path, data: str | Path | None, labels: str | Path | None, utterance: str | None,
                 layer: str, device: torch.device, max_utterances: int):
        self.exp_dir, self.utterance, self.max_utterances, self.device = exp_dir, utterance, max_utterances, device
        self.pretrain = find_training_folder(exp_dir)
        checkpoint = self.pretrain / "checkpoint.pt" if self.pretrain else None
        checkpoint = checkpoint if checkpoint and checkpoint.is_file() else None
        folder = find_feature_folder(exp_dir, layer)
        # audiossl train keeps the manifest of a folder it scanned; the recipe keeps its own beside the run.
        manifests = [p / "manifest.tsv" for p in (self.pretrain, exp_dir) if p is not None]
        self.corpus, utterances = load_utterances(data, next((m for m in manifests if m.is_file()), None), folder)
        self.utterances = {u.id: u for u in utterances}
        self.features = (LayerFeatures(folder, checkpoint, layer, self.utterances, device)
                         if folder is not None or checkpoint is not None else None)
        self._label_dirs = [Path(labels)] if labels else []
        if data:
            self._label_dirs.append(Path(data) if Path(data).is_dir() else Path(data).parent)
        if utterances:
            root = Path(os.path.commonpath([u.path for u in utterances]))
            self._label_dirs += [root, *list(root.parents)[:4]]
        self._labels: Labels | None | bool = False

    @property
    def labels(self) -> Labels | None:
        if self._labels is False:
            self._labels = find_labels(self._label_dirs)
        return self._labels

    def need_labels(self) -> Labels:
        if self.labels is None:
            searched = ", ".join(f"`{d}`" for d in self._label_dirs[:3]) or "no folder (no corpus known)"
            raise Unavailable(f"missing phone alignments: no converted_aligned_phones.txt in {searched} "
                              "(pass --labels DIR)")
        return self.labels

    def need_features(self) -> LayerFeatures:
        if self.features is None:
            raise Unavailable("missing model features: no checkpoint.pt and no audiossl extract folder in "
                              f"`{self.exp_dir}`")
        return self.features

    def speaker(self, utt_id: str) -> str:
        return self.utterances[utt_id].speaker
