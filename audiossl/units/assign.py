"""Unit sequences: a units model assigned to every utterance, in ZeroSpeech 2021's formats.

``audiossl units assign`` (:func:`assign_units`) writes, for a units model of
:mod:`audiossl.units.fit`, per utterance of a features folder made by the same
checkpoint::

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

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from audiossl.data.corpus import write_manifest
from audiossl.features import (
    INDEX,
    INDEX_COLUMNS,
    META,
    NPZ_KEY,
    SOURCES,
    UTTERANCES,
    VERSION,
    FeatureError,
    FeatureSet,
    audio_stamp,
    read_sources,
    stored_frames,
)
from audiossl.units.fit import MODEL_VERSION, UnitModel, UnitsError, check_features, split_ids
from audiossl.utils.atomic import atomic_write, remove_stale_temps
from audiossl.utils.lock import FolderLock

__all__ = ["ONEHOT_FORMATS", "assign_units", "format_line", "open_onehot", "parse_line", "read_quantized",
           "write_quantized"]

TEXT = "quantized_outputs.txt"
PER_UTTERANCE = "quantized_outputs"
ONEHOT = "onehot"
ASSIGN_RECORD = "assign.json"
ONEHOT_FORMATS = ("npy", "npz", "none")


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
    ids, missing = split_ids(features, split)
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
        # A killed run's temporary files, only in what this command writes: OUT itself and its own two trees.
        # Below OUT may live other runs' folders (--out exp while exp/run trains), whose files are not ours.
        for folder, below in ((out, False), (out / PER_UTTERANCE, True), (out / ONEHOT, True)):
            remove_stale_temps(folder, recursive=below)
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
