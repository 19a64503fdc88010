"""Discrete units: k-means on extracted features, saved self-describing.

What the ZeroSpeech 2021 baseline (CPC + k-means with 50 clusters), HuBERT's
targets and textless speech LMs are built on: each 10 ms feature frame
replaced by the index of its nearest k-means centroid. (Not to be confused
with :mod:`audiossl.probes.ctc.targets`, the output units of the CTC probes.)

``audiossl units fit`` (:func:`fit_units`) draws a seeded sample of at most
``max_frames`` frames from an ``audiossl extract`` layer folder, normalizes
them (``standardize``: ``utterance``, the default, every dimension scaled
with each utterance's own mean and standard deviation, as cepstral mean and
variance normalization does; ``global``, with the sample's mean and standard
deviation; ``none``) and runs
:func:`audiossl.units.kmeans.minibatch_kmeans` on it. The model folder::

    UNITS/kmeans.npz     centroids (k, dim) float32, in the normalized space, and with ``global``
                         the sample's mean (dim,) and std (dim,) float64
    UNITS/fit_ids.txt    the utterances the frames were drawn from, one id per line
    UNITS/kmeans.json    what it is, written last: k, dim, layer, the features folder and the
                         checkpoint (path and digest) or baseline they came from, frame rate,
                         the settings, and how the fit went (frames, epochs, inertia, cluster sizes)

A folder with the same settings is kept (the command says so); one made with
other settings is refused, never overwritten. Nothing in it is pickled.

The unit sequences of every utterance (``audiossl units assign``) are
:mod:`audiossl.units.assign`'s.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import typing
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from audiossl.data.alignments import load_split
from audiossl.errors import UserError
from audiossl.features import FeatureSet, source_label
from audiossl.units.kmeans import KMeansSettings, assign, minibatch_kmeans
from audiossl.utils.atomic import atomic_write
from audiossl.version import __version__

__all__ = ["FitSettings", "UnitModel", "UnitsError", "check_features", "fit_units", "sample_frames", "split_ids",
           "standardize_mode", "utterance_normalized"]

MODEL_VERSION = 1
MODEL_RECORD = "kmeans.json"
MODEL_ARRAYS = "kmeans.npz"
FIT_IDS = "fit_ids.txt"
MIN_STD = 1e-5  # a dimension more constant than this is not scaled
Standardize = Literal["global", "utterance", "none"]
STANDARDIZE = typing.get_args(Standardize)


class UnitsError(UserError, ValueError):
    """A units model or assignment that cannot be made or used; the message names the file or folder."""


def standardize_mode(value: str | bool) -> str:
    """One of ``STANDARDIZE``; True / False (what models fitted before the per-utterance choice recorded) read as
    global / none."""
    if isinstance(value, bool):
        return "global" if value else "none"
    if value not in STANDARDIZE:
        raise ValueError(f"standardize must be one of {', '.join(STANDARDIZE)}, got {value!r}")
    return value


@dataclass
class FitSettings:
    kmeans: KMeansSettings = field(default_factory=KMeansSettings)  # k, batch size, epochs, seed ...
    max_frames: int = 1_000_000  # frames drawn (seeded, uniformly over all frames) to fit on; 0: all
    # scale every dimension to zero mean and unit variance before clustering: "utterance" with each
    # utterance's own statistics (raised PNMI for every feature set of docs/benchmarks.md), "global" with the
    # fitting sample's, "none" not at all (True / False, what models fitted before recorded: global / none)
    standardize: Standardize = "utterance"

    def __post_init__(self) -> None:
        self.standardize = standardize_mode(self.standardize)
        if self.max_frames < 0:
            raise ValueError(f"max_frames must not be negative, got {self.max_frames}")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _same_source(a: Mapping, b: Mapping) -> bool:
    """Two features sources are the same model: same checkpoint digest, else the same record."""
    if "sha256" in a and "sha256" in b:
        return a["sha256"] == b["sha256"]
    return dict(a) == dict(b)


class UnitModel:
    """A fitted k-means model read back from its folder (see the module docstring).

    Attributes:
        folder: the model folder.
        record: ``kmeans.json``.
        centroids: (k, dim) float32, in the normalized space.
        standardize: ``global``, ``utterance`` or ``none`` (see :class:`FitSettings`).
        mean, std: (dim,) the fitting sample's statistics with ``global``, else None.
        digest: of ``kmeans.npz``; an assignment records it.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        record_path, arrays_path = self.folder / MODEL_RECORD, self.folder / MODEL_ARRAYS
        if not record_path.is_file():
            raise UnitsError(f"{self.folder}: no units model ({MODEL_RECORD} missing); run audiossl units fit")
        try:
            self.record = json.loads(record_path.read_text())
            with np.load(arrays_path, allow_pickle=False) as arrays:
                self.centroids = arrays["centroids"].astype(np.float32)
                self.mean = arrays["mean"] if "mean" in arrays else None
                self.std = arrays["std"] if "std" in arrays else None
        except (OSError, ValueError, KeyError) as e:
            raise UnitsError(f"{self.folder}: unreadable units model ({e})") from None
        if self.record.get("version") != MODEL_VERSION:
            raise UnitsError(f"{record_path}: units model version {self.record.get('version')!r}, this audiossl "
                             f"reads {MODEL_VERSION}")
        expected = (self.record["k"], self.record["dim"])
        if self.centroids.shape != expected or (self.mean is not None and self.mean.shape != expected[1:]):
            raise UnitsError(f"{arrays_path}: centroids of shape {self.centroids.shape}, {MODEL_RECORD} says "
                             f"{expected}")
        self.standardize = standardize_mode(self.record["settings"]["standardize"])
        self.digest = _digest(arrays_path)
        self._on: dict[str, torch.Tensor] = {}

    @property
    def k(self) -> int:
        return int(self.record["k"])

    @property
    def dim(self) -> int:
        return int(self.record["dim"])

    @property
    def layer(self) -> str:
        return str(self.record["layer"])

    @property
    def source(self) -> dict:
        return dict(self.record["source"])

    @property
    def fit_ids(self) -> list[str]:
        """The utterances the fitting frames were drawn from."""
        return load_split(self.folder / FIT_IDS)

    def standardized(self, feats: np.ndarray) -> np.ndarray:
        """One utterance's (frames, dim) features in the space of the centroids, float32."""
        if self.standardize == "utterance":
            return utterance_normalized(feats)
        feats = np.asarray(feats, dtype=np.float32)
        if self.mean is None:
            return feats
        return ((feats - self.mean) / self.std).astype(np.float32)

    def assign(self, feats: np.ndarray, device: str | torch.device = "cpu") -> np.ndarray:
        """(frames,) int64 index of each frame's nearest centroid (the lowest on a tie).

        Raises:
            UnitsError: for features of another dimension.
        """
        if feats.ndim != 2 or feats.shape[1] != self.dim:
            raise UnitsError(f"{self.folder}: the model clusters {self.dim}-dim frames, got shape {feats.shape}")
        device = torch.device(device)
        if str(device) not in self._on:
            self._on[str(device)] = torch.from_numpy(self.centroids).to(device)
        x = torch.from_numpy(self.standardized(feats)).to(device)
        labels, _ = assign(x, self._on[str(device)])
        return labels.cpu().numpy()


def split_ids(features: FeatureSet, split: str | Path | None) -> tuple[list[str], list[str]]:
    """The split's utterances that have features, and those that do not."""
    if split is None:
        return list(features.num_frames), []
    try:
        listed = load_split(split)
    except (OSError, ValueError) as e:
        raise UnitsError(f"{split}: {getattr(e, 'strerror', None) or e}") from None
    return [u for u in listed if u in features.num_frames], [u for u in listed if u not in features.num_frames]


def utterance_normalized(feats: np.ndarray) -> np.ndarray:
    """(frames, dim) features with every dimension at zero mean and unit variance over the utterance (float32;
    a dimension more constant than ``MIN_STD`` is only centred)."""
    feats = np.asarray(feats, dtype=np.float64)
    if not len(feats):
        return feats.astype(np.float32)
    std = feats.std(0)
    std[std < MIN_STD] = 1.0
    return ((feats - feats.mean(0)) / std).astype(np.float32)


def sample_frames(features: FeatureSet, ids: Sequence[str], max_frames: int, seed: int,
                  progress: bool = True, per_utterance=None) -> np.ndarray:
    """At most ``max_frames`` frames drawn uniformly without replacement from all frames of ``ids``.

    The draw depends only on the utterances' frame counts, their order and
    ``seed``; every utterance is read once, and passed through
    ``per_utterance`` (e.g. :func:`utterance_normalized`) when given.

    Returns:
        (frames, dim) float32, in the order of ``ids`` and of time.
    """
    lengths = np.array([features.num_frames[u] for u in ids], dtype=np.int64)
    total = int(lengths.sum())
    offsets = np.r_[0, np.cumsum(lengths)]
    if max_frames and total > max_frames:
        picked = np.sort(np.random.default_rng(seed).choice(total, size=max_frames, replace=False))
    else:
        picked = np.arange(total)
    bounds = np.searchsorted(picked, offsets)  # picked[bounds[i]:bounds[i + 1]] lie in utterance i
    out = np.empty((len(picked), features.dim), dtype=np.float32)
    for i, utt_id in enumerate(tqdm(ids, desc="sample frames", unit="utt", disable=not progress,
                                    dynamic_ncols=True)):
        lo, hi = bounds[i], bounds[i + 1]
        if hi > lo:
            feats = features.load(utt_id)
            out[lo:hi] = (per_utterance(feats) if per_utterance else feats)[picked[lo:hi] - offsets[i]]
    return out


def _moments(sample: np.ndarray, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation (float64, two passes of ``chunk`` rows: no full-size copy);
    a dimension more constant than ``MIN_STD`` gets a standard deviation of 1."""
    mean = np.zeros(sample.shape[1])
    for start in range(0, len(sample), chunk):
        mean += sample[start: start + chunk].sum(0, dtype=np.float64)
    mean /= max(len(sample), 1)
    squares = np.zeros(sample.shape[1])
    for start in range(0, len(sample), chunk):
        squares += ((sample[start: start + chunk] - mean) ** 2).sum(0)
    std = np.sqrt(squares / max(len(sample), 1))
    std[std < MIN_STD] = 1.0
    return mean, std


def _settings_record(features: FeatureSet, split: str | Path | None, settings: FitSettings) -> dict:
    return {"features": str(features.folder.resolve()), "layer": features.name,
            "split": str(Path(split).resolve()) if split is not None else None,
            "max_frames": settings.max_frames, "standardize": settings.standardize, **asdict(settings.kmeans)}


def _kept_model(out: Path, wanted: dict) -> UnitModel | None:
    """The model already in ``out`` when it was fitted with the settings ``wanted``; None when there is none.

    Raises:
        UnitsError: ``out`` holds a model fitted with other settings.
    """
    if not (out / MODEL_RECORD).is_file():
        return None
    old = json.loads((out / MODEL_RECORD).read_text()).get("settings", {})
    if "standardize" in old:
        old["standardize"] = standardize_mode(old["standardize"])
    differ = sorted(key for key in set(old) | set(wanted) if old.get(key) != wanted.get(key))
    if differ:
        raise UnitsError(f"{out} holds a units model fitted with other settings ({', '.join(differ)}); "
                         "use another folder or delete this one")
    return UnitModel(out)


def _normalized_sample(features: FeatureSet, ids: Sequence[str], settings: FitSettings,
                       progress: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The frames to fit on, normalized as ``settings.standardize`` says, and with ``global`` the sample's
    mean and standard deviation (else None)."""
    per_utterance = utterance_normalized if settings.standardize == "utterance" else None
    sample = sample_frames(features, ids, settings.max_frames, settings.kmeans.seed, progress, per_utterance)
    if not np.isfinite(sample).all():
        raise UnitsError(f"{features.folder}: the sampled frames hold NaN or infinite values")
    mean = std = None
    if settings.standardize == "global":
        mean, std = _moments(sample)
        sample -= mean.astype(np.float32)  # in place: the sample may be gigabytes
        sample /= std.astype(np.float32)
    return sample, mean, std


def _kmeans_with_progress(sample: np.ndarray, settings: KMeansSettings, device: torch.device, progress: bool,
                          where: Path):
    """:func:`minibatch_kmeans` on ``sample``, with a progress bar per epoch; its ValueError names ``where``."""
    bar = tqdm(total=math.ceil(len(sample) / settings.batch_size), desc="k-means epoch 1", unit="batch",
               disable=not progress, dynamic_ncols=True)

    def on_batch(epoch: int, number: int, distance: float) -> None:
        if number == 0 and epoch > 1:
            bar.reset()
            bar.set_description(f"k-means epoch {epoch}")
        bar.update()
        bar.set_postfix_str(f"mean squared distance {distance:.4g}")

    try:
        return minibatch_kmeans(torch.from_numpy(sample).to(device), settings, on_batch)
    except ValueError as e:
        raise UnitsError(f"{where}: {e}") from None
    finally:
        bar.close()


def _save_model(out: Path, arrays: dict[str, np.ndarray], ids: Sequence[str], record: dict) -> None:
    """The model folder's files, each atomically, ``kmeans.json`` last (a folder holding it is complete)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / MODEL_ARRAYS, lambda f: np.savez(f, **arrays))
    ids_text = "".join(f"{u}\n" for u in ids)
    atomic_write(out / FIT_IDS, lambda f: f.write(ids_text.encode()))
    atomic_write(out / MODEL_RECORD, lambda f: f.write(json.dumps(record, indent=2).encode() + b"\n"))


def fit_units(features_dir: str | Path, out: str | Path, layer: str = "context", settings: FitSettings | None = None,
              split: str | Path | None = None, device: str | torch.device = "cpu",
              progress: bool = True) -> tuple[UnitModel, bool]:
    """Fit k-means on a layer's frames and save the model in ``out`` (see the module docstring).

    Args:
        features_dir: an ``audiossl extract`` output folder.
        out: the model folder.
        layer: the layer folder of ``features_dir`` to cluster.
        settings: k-means and sampling settings.
        split: utterance ids to draw frames from (e.g. CPC's
            ``train_split.txt``); None: every utterance of the folder.
        device: where k-means runs.

    Returns:
        The model, and whether it was fitted now (False: the same fit was
        already in ``out`` and is kept).

    Raises:
        UnitsError: for another model in ``out``, no usable utterance, or
            fewer distinct frames than k.
    """
    settings = settings or FitSettings()
    features = FeatureSet(Path(features_dir) / layer)
    out = Path(out)
    wanted = _settings_record(features, split, settings)
    kept = _kept_model(out, wanted)
    if kept is not None:
        return kept, False
    ids, missing = split_ids(features, split)
    if missing:
        print(f"{len(missing)} utterance(s) of {split} have no features in {features.folder} and are left out, "
              f"e.g. {', '.join(missing[:3])}")
    if not ids:
        raise UnitsError(f"no utterance of {split or features.folder} has features in {features.folder}")
    began = time.perf_counter()
    sample, mean, std = _normalized_sample(features, ids, settings, progress)
    device = torch.device(device)
    result = _kmeans_with_progress(sample, settings.kmeans, device, progress, features.folder)
    arrays = {"centroids": result.centroids.cpu().numpy().astype(np.float32)}
    if mean is not None:
        arrays.update(mean=mean, std=std)
    record = {
        "version": MODEL_VERSION, "k": settings.kmeans.k, "dim": features.dim, "layer": features.name,
        "features": str(features.folder.resolve()), "source": features.meta["source"],
        "checkpoint": source_label(features.meta["source"]), "frame_rate": features.frame_rate,
        "standardized": settings.standardize, "settings": wanted,
        "fit": {"utterances": len(ids), "missing_utterances": len(missing),
                "frames_available": sum(features.num_frames[u] for u in ids), "frames_used": len(sample),
                "epochs": result.epochs, "converged": result.converged, "inertia": result.inertia,
                "history": result.history, "reassigned": result.reassigned, "cluster_sizes": result.sizes,
                "empty_clusters": sum(size == 0 for size in result.sizes),
                "seconds": round(time.perf_counter() - began, 2), "device": str(device)},
        "audiossl": __version__, "torch": torch.__version__,
    }
    _save_model(out, arrays, ids, record)
    return UnitModel(out), True


def check_features(model: UnitModel, features: FeatureSet) -> None:
    if features.dim != model.dim:
        raise UnitsError(f"{features.folder}: {features.dim}-dim features; the units model {model.folder} "
                         f"clusters {model.dim}-dim {model.layer} frames")
    if not _same_source(features.meta["source"], model.source):
        raise UnitsError(f"{features.folder}: features of {source_label(features.meta['source'])}; the units model "
                         f"{model.folder} was fitted on features of {source_label(model.source)}")
