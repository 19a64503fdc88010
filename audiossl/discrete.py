"""Discrete units: k-means on extracted features, saved self-describing, and unit sequences on disk.

What the ZeroSpeech 2021 baseline (CPC + k-means with 50 clusters), HuBERT's
targets and textless speech LMs are built on: each 10 ms feature frame
replaced by the index of its nearest k-means centroid. (Not to be confused
with :mod:`audiossl.probes.units`, the output units of the CTC probes.)

``audiossl units fit`` (:func:`fit_units`) draws a seeded sample of at most
``max_frames`` frames from an ``audiossl extract`` layer folder, normalizes
them (``standardize``: ``utterance``, the default, every dimension scaled
with each utterance's own mean and standard deviation, as cepstral mean and
variance normalization does; ``global``, with the sample's mean and standard
deviation; ``none``) and runs
:func:`audiossl.kmeans.minibatch_kmeans` on it. The model folder::

    UNITS/kmeans.npz     centroids (k, dim) float32, in the normalized space, and with ``global``
                         the sample's mean (dim,) and std (dim,) float64
    UNITS/fit_ids.txt    the utterances the frames were drawn from, one id per line
    UNITS/kmeans.json    what it is, written last: k, dim, layer, the features folder and the
                         checkpoint (path and digest) or baseline they came from, frame rate,
                         the settings, and how the fit went (frames, epochs, inertia, cluster sizes)

A folder with the same settings is kept (the command says so); one made with
other settings is refused, never overwritten. Nothing in it is pickled.

``audiossl units assign`` (:func:`assign_units`) writes, per utterance of a
features folder made by the same checkpoint::

    OUT/quantized_outputs.txt            ZeroSpeech 2021's format: <utt_id> TAB 3,3,17,... one line per
                                         utterance, in the features' index order (written last)
    OUT/quantized_outputs/<rel>.txt      the same line, one file per utterance (<rel>: the path of the
                                         utterance's array in the features folder)
    OUT/onehot/                          the units as one-hot (frames, k) float16 arrays in the folder
                                         layout of audiossl extract (meta.json, index.tsv ...), so
                                         ``audiossl probe abx --features OUT --layer onehot`` reads them
    OUT/assign.json                      the model (folder, digest, k) and the features assigned
    OUT/sources.tsv                      <utt_id> TAB <size>:<mtime_ns> of the features file each
                                         utterance's units came from, appended as each is written

Re-running skips every utterance whose files are complete and whose features
file has not changed since; a folder assigned with another model is refused.
The ZeroSpeech 2021 baseline's ``quantize_audio.py`` writes the same
``quantized_outputs.txt`` (its id is the audio file's stem, which for
LibriSpeech is the utterance id) and its ``build_1hot_features.py`` the
one-hot features, one text file each.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import audiossl
from audiossl.atomic import remove_stale_temps
from audiossl.data.alignments import load_split
from audiossl.data.corpus import write_manifest
from audiossl.features import (INDEX, INDEX_COLUMNS, META, NPZ_KEY, SOURCES, UTTERANCES, VERSION, FeatureError,
                               FeatureSet, atomic_write, audio_stamp, read_sources, source_label, stored_frames)
from audiossl.kmeans import KMeansSettings, assign, minibatch_kmeans
from audiossl.lock import FolderLock

__all__ = ["FitSettings", "UnitModel", "UnitsError", "assign_units", "check_features", "fit_units", "format_line",
           "open_onehot", "parse_line", "read_quantized", "sample_frames", "utterance_normalized", "write_quantized"]

MODEL_VERSION = 1
MODEL_RECORD = "kmeans.json"
MODEL_ARRAYS = "kmeans.npz"
FIT_IDS = "fit_ids.txt"
TEXT = "quantized_outputs.txt"
PER_UTTERANCE = "quantized_outputs"
ONEHOT = "onehot"
ASSIGN_RECORD = "assign.json"
ONEHOT_FORMATS = ("npy", "npz", "none")
MIN_STD = 1e-5  # a dimension more constant than this is not scaled
STANDARDIZE = ("global", "utterance", "none")


class UnitsError(ValueError):
    """A units model or assignment that cannot be made or used; the message names the file or folder."""


@dataclass
class FitSettings:
    kmeans: KMeansSettings = field(default_factory=KMeansSettings)  # k, batch size, epochs, seed ...
    max_frames: int = 1_000_000  # frames drawn (seeded, uniformly over all frames) to fit on; 0: all
    # scale every dimension to zero mean and unit variance before clustering: "utterance" with each
    # utterance's own statistics (raised PNMI for every feature set of docs/benchmarks.md), "global" with the
    # fitting sample's, "none" not at all (True / False, what models fitted before recorded: global / none)
    standardize: str = "utterance"

    def __post_init__(self) -> None:
        if isinstance(self.standardize, bool):  # what models fitted before the per-utterance choice recorded
            self.standardize = "global" if self.standardize else "none"
        if self.standardize not in STANDARDIZE:
            raise ValueError(f"standardize must be one of {', '.join(STANDARDIZE)}, got {self.standardize!r}")
        if self.max_frames < 0:
            raise ValueError(f"max_frames must not be negative, got {self.max_frames}")


# ---- the ZeroSpeech 2021 text format

def format_line(utt_id: str, units: Sequence[int] | np.ndarray) -> str:
    """``<utt_id> TAB 3,3,17,...`` (no line break)."""
    if any(c in utt_id for c in "\t\n\r"):
        raise UnitsError(f"utterance id {utt_id!r} holds a tab or a line break, which the format cannot hold")
    return f"{utt_id}\t{','.join(str(int(u)) for u in units)}"


def parse_line(line: str, where: str) -> tuple[str, np.ndarray]:
    """One ``<utt_id> TAB 3,3,17,...`` line -> the id and its (frames,) int64 units.

    Raises:
        UnitsError: naming ``where`` (file and line) for a line without a tab,
            an empty id or a unit that is not a non-negative integer.
    """
    line = line.rstrip("\r\n")
    utt_id, tab, text = line.partition("\t")
    if not tab or not utt_id:
        raise UnitsError(f"{where}: expected '<utt_id><TAB>3,3,17,...', got {line[:60]!r}")
    if not text:
        return utt_id, np.zeros(0, dtype=np.int64)
    fields = text.split(",")
    if not all(f.isdigit() for f in fields):
        bad = next(f for f in fields if not f.isdigit())
        raise UnitsError(f"{where}: utterance {utt_id!r} has unit {bad!r}, not a non-negative integer")
    return utt_id, np.array([int(f) for f in fields], dtype=np.int64)


def write_quantized(path: str | Path, sequences: Mapping[str, np.ndarray]) -> None:
    """Write ``quantized_outputs.txt``: one line per utterance, in the mapping's order, atomically."""
    text = "".join(format_line(u, units) + "\n" for u, units in sequences.items())
    atomic_write(path, lambda f: f.write(text.encode()))


def read_quantized(path: str | Path) -> dict[str, np.ndarray]:
    """Read ``quantized_outputs.txt`` (this module's or the ZeroSpeech baseline's; blank lines skipped).

    Raises:
        UnitsError: for a malformed line or an id given twice, naming the file and line.
    """
    sequences: dict[str, np.ndarray] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UnitsError(f"{path}: cannot read units ({e.strerror})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        utt_id, units = parse_line(line, f"{path}:{number}")
        if utt_id in sequences:
            raise UnitsError(f"{path}:{number}: utterance {utt_id!r} is listed twice")
        sequences[utt_id] = units
    return sequences


# ---- the model

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
        self.standardize = FitSettings(standardize=self.record["settings"]["standardize"]).standardize
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


def _fit_ids(features: FeatureSet, split: str | Path | None) -> tuple[list[str], list[str]]:
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
    std = feats.std(0) if len(feats) else np.ones(feats.shape[1])
    std[std < MIN_STD] = 1.0
    return ((feats - feats.mean(0)) / std).astype(np.float32) if len(feats) else feats.astype(np.float32)


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
    if (out / MODEL_RECORD).is_file():
        old = json.loads((out / MODEL_RECORD).read_text()).get("settings", {})
        if "standardize" in old:  # True / False in a model fitted before the per-utterance choice
            old["standardize"] = FitSettings(standardize=old["standardize"]).standardize
        differ = sorted(key for key in set(old) | set(wanted) if old.get(key) != wanted.get(key))
        if differ:
            raise UnitsError(f"{out} holds a units model fitted with other settings ({', '.join(differ)}); "
                             "use another folder or delete this one")
        return UnitModel(out), False
    ids, missing = _fit_ids(features, split)
    if missing:
        print(f"{len(missing)} utterance(s) of {split} have no features in {features.folder} and are left out, "
              f"e.g. {', '.join(missing[:3])}")
    if not ids:
        raise UnitsError(f"no utterance of {split or features.folder} has features in {features.folder}")
    began = time.perf_counter()
    per_utterance = utterance_normalized if settings.standardize == "utterance" else None
    sample = sample_frames(features, ids, settings.max_frames, settings.kmeans.seed, progress, per_utterance)
    if not np.isfinite(sample).all():
        raise UnitsError(f"{features.folder}: the sampled frames hold NaN or infinite values")
    mean = std = None
    if settings.standardize == "global":
        mean, std = _moments(sample)
        sample -= mean.astype(np.float32)  # in place: the sample may be gigabytes
        sample /= std.astype(np.float32)
    device = torch.device(device)
    batches = math.ceil(len(sample) / settings.kmeans.batch_size)
    bar = tqdm(total=batches, desc="k-means epoch 1", unit="batch", disable=not progress, dynamic_ncols=True)

    def on_batch(epoch: int, number: int, distance: float) -> None:
        if number == 0 and epoch > 1:
            bar.reset()
            bar.set_description(f"k-means epoch {epoch}")
        bar.update()
        bar.set_postfix_str(f"mean squared distance {distance:.4g}")

    try:
        result = minibatch_kmeans(torch.from_numpy(sample).to(device), settings.kmeans, on_batch)
    except ValueError as e:
        raise UnitsError(f"{features.folder}: {e}") from None
    finally:
        bar.close()
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
        "audiossl": audiossl.__version__, "torch": torch.__version__,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / MODEL_ARRAYS, lambda f: np.savez(f, **arrays))
    ids_text = "".join(f"{u}\n" for u in ids)
    atomic_write(out / FIT_IDS, lambda f: f.write(ids_text.encode()))
    atomic_write(out / MODEL_RECORD, lambda f: f.write(json.dumps(record, indent=2).encode() + b"\n"))
    return UnitModel(out), True


# ---- assignment

def check_features(model: UnitModel, features: FeatureSet) -> None:
    if features.dim != model.dim:
        raise UnitsError(f"{features.folder}: {features.dim}-dim features; the units model {model.folder} "
                         f"clusters {model.dim}-dim {model.layer} frames")
    if not _same_source(features.meta["source"], model.source):
        raise UnitsError(f"{features.folder}: features of {source_label(features.meta['source'])}; the units model "
                         f"{model.folder} was fitted on features of {source_label(model.source)}")


def _onehot_meta(model: UnitModel, features: FeatureSet, file_format: str) -> dict:
    source = {"units": str(model.folder.resolve()), "sha256": model.digest, "features": features.meta["source"]}
    return {"version": VERSION, "layer": ONEHOT, "source": source, "dim": model.k,
            "frame_rate": features.frame_rate, "hop": features.meta.get("hop"),
            "sample_rate": features.meta.get("sample_rate"), "dtype": "float16", "format": file_format}


def _stored_units(path: Path, utt_id: str) -> int | None:
    """Frames of a per-utterance units file an earlier run wrote; None if unusable."""
    try:
        found, units = parse_line(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnitsError, UnicodeDecodeError):
        return None
    return len(units) if found == utt_id else None


def assign_units(model: UnitModel, features_dir: str | Path, out: str | Path, layer: str | None = None,
                 split: str | Path | None = None, onehot: str = "npy", device: str | torch.device = "cpu",
                 progress: bool = True) -> dict:
    """Write the unit sequence of every utterance (see the module docstring); resumes.

    Args:
        model: the fitted units.
        features_dir: an ``audiossl extract`` output folder made by the
            checkpoint (or baseline) the model was fitted on.
        out: the output folder.
        layer: the layer folder to read (default: the model's).
        split: utterance ids to assign; None: every utterance of the folder.
        onehot: ``npy`` or ``npz`` one-hot arrays under ``out/onehot``, or ``none``.
        device: where the distances are computed.

    Returns:
        ``{"utterances", "reused", "written", "frames", "units_used", "missing"}``.

    Raises:
        UnitsError: for features the model does not fit, a folder assigned
            with another model or settings, or no utterance to assign.
    """
    if onehot not in ONEHOT_FORMATS:
        raise UnitsError(f"one-hot format {onehot!r} is not one of {', '.join(ONEHOT_FORMATS)}")
    features = FeatureSet(Path(features_dir) / (layer or model.layer))
    check_features(model, features)
    ids, missing = _fit_ids(features, split)
    if not ids:
        raise UnitsError(f"no utterance of {split or features.folder} has features in {features.folder}")
    out = Path(out)
    record = {"version": MODEL_VERSION, "units": str(model.folder.resolve()), "model_sha256": model.digest,
              "k": model.k, "features": str(features.folder.resolve()), "layer": features.name,
              "source": features.meta["source"], "onehot": onehot}
    out.mkdir(parents=True, exist_ok=True)
    with FolderLock(out, "audiossl units assign"):
        record_path = out / ASSIGN_RECORD
        if record_path.is_file():
            old = json.loads(record_path.read_text())
            differ = sorted(k for k in ("model_sha256", "k", "layer", "source", "onehot")
                            if old.get(k) != record.get(k))
            if differ:
                raise UnitsError(f"{out} holds units assigned with another model or settings ({', '.join(differ)}); "
                                 "use another folder or delete this one")
        remove_stale_temps(out, recursive=True, owner_may_live=False)  # a killed run's; the lock keeps writers out
        atomic_write(record_path, lambda f: f.write(json.dumps(record, indent=2).encode() + b"\n"))
        return _assign(model, features, ids, missing, out, onehot, torch.device(device), progress)


def _assign(model: UnitModel, features: FeatureSet, ids: list[str], missing: list[str], out: Path, onehot: str,
            device: torch.device, progress: bool) -> dict:
    onehot_dir = out / ONEHOT
    if onehot != "none":
        onehot_dir.mkdir(exist_ok=True)
        (onehot_dir / INDEX).unlink(missing_ok=True)  # written again once every array is there
        meta = _onehot_meta(model, features, onehot)
        atomic_write(onehot_dir / META, lambda f: f.write(json.dumps(meta, indent=2).encode() + b"\n"))
    relative = {u: features.paths[u].relative_to(features.folder) for u in ids}
    text_path = {u: out / PER_UTTERANCE / relative[u].with_suffix(".txt") for u in ids}
    array_path = {u: onehot_dir / relative[u].with_suffix(f".{onehot}") for u in ids}
    recorded = read_sources(out)
    eye = np.eye(model.k, dtype=np.float16)
    sequences: dict[str, np.ndarray] = {}
    reused = 0
    bar = tqdm(ids, desc=f"assign {model.k} units", unit="utt", disable=not progress, dynamic_ncols=True)
    with open(out / SOURCES, "a") as journal:
        for utt_id in bar:
            stamp, frames = audio_stamp(features.paths[utt_id]), features.num_frames[utt_id]
            done = (recorded.get(utt_id) == stamp and _stored_units(text_path[utt_id], utt_id) == frames
                    and (onehot == "none" or stored_frames(array_path[utt_id]) == frames))
            if done:
                sequences[utt_id] = parse_line(text_path[utt_id].read_text(encoding="utf-8"), "")[1]
                reused += 1
                continue
            units = model.assign(features.load(utt_id), device)
            line = format_line(utt_id, units) + "\n"
            atomic_write(text_path[utt_id], lambda f: f.write(line.encode()))
            if onehot != "none":
                array = eye[units]
                save = ((lambda f: np.savez_compressed(f, **{NPZ_KEY: array})) if onehot == "npz"
                        else (lambda f: np.save(f, array)))
                atomic_write(array_path[utt_id], save)
            journal.write(f"{utt_id}\t{stamp}\n")
            journal.flush()
            sequences[utt_id] = units
    if onehot != "none":
        done = [u for u in features.utterances if u.id in sequences]
        rows = [INDEX_COLUMNS, *((u.id, array_path[u.id].relative_to(onehot_dir).as_posix(), len(sequences[u.id]),
                                  model.k, f"{features.frame_rate:g}", ONEHOT, f"units:{model.folder}")
                                 for u in done)]
        index = "".join("\t".join(map(str, row)) + "\n" for row in rows).encode()
        write_manifest(done, onehot_dir / UTTERANCES)
        atomic_write(onehot_dir / INDEX, lambda f: f.write(index))
    write_quantized(out / TEXT, sequences)
    used = np.unique(np.concatenate(list(sequences.values()))) if sequences else np.zeros(0)
    return {"utterances": len(sequences), "reused": reused, "written": len(sequences) - reused,
            "frames": int(sum(len(s) for s in sequences.values())), "units_used": len(used),
            "missing": len(missing)}


def open_onehot(out: str | Path) -> FeatureSet:
    """The one-hot layer of an assignment folder, as the probes read it."""
    try:
        return FeatureSet(Path(out) / ONEHOT)
    except FeatureError as e:
        raise UnitsError(str(e)) from None
