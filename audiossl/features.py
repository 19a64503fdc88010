"""The on-disk feature folder that ``audiossl extract`` writes and the probes read.

Layout of an extraction folder ``OUT``::

    OUT/<layer>/meta.json       what made the features: source, layer, dim, frame rate, dtype, file format
    OUT/<layer>/<relative path>.npy|.npz
                                (frames, dim) array of one utterance; the tree mirrors the audio's paths
                                relative to the corpus folder (or, for a manifest, to the common parent
                                folder of its audio files); ``.npz`` holds it compressed as ``features``
    OUT/<layer>/utterances.tsv  the utterances extracted (a manifest, see data.corpus)
    OUT/<layer>/index.tsv       id  path  frames  dim  frame_rate_hz  layer  checkpoint,
                                one line per utterance, written last
    OUT/<layer>/sources.tsv     id  <size>:<mtime_ns> of the audio file an array was made from,
                                appended as each array is written (the last line of an id counts)

``path`` in the index is relative to the layer folder; ``checkpoint`` is the
checkpoint's path, or ``baseline:<name>`` for a hand-made feature. Utterance
ids stay the keys. Every file is written to a temporary name and renamed
(:func:`audiossl.utils.atomic.atomic_write`); no array lies outside its layer folder
(:func:`feature_path` refuses a path with ``..`` or an absolute one).
"""

from __future__ import annotations

import csv
import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath

import numpy as np

from audiossl.data.corpus import CorpusError, Utterance, read_manifest, write_manifest
from audiossl.errors import UserError
from audiossl.utils.atomic import atomic_write

__all__ = ["FeatureError", "FeatureSet", "audio_stamp", "feature_path", "read_sources",
           "relative_paths", "source_label", "stored_frames"]

VERSION = 2
META = "meta.json"
INDEX = "index.tsv"
UTTERANCES = "utterances.tsv"
SOURCES = "sources.tsv"
INDEX_COLUMNS = ("id", "path", "frames", "dim", "frame_rate_hz", "layer", "checkpoint")
FORMATS = ("npy", "npz")
NPZ_KEY = "features"  # the array's name inside an .npz file


class FeatureError(UserError, ValueError):
    """Features that cannot be written or read; the message names the folder or file."""


def feature_path(layer_folder: str | Path, relative: str | PurePath, utt_id: str) -> Path:
    """Where an utterance's array lives: ``layer_folder / relative``, never outside the folder.

    Args:
        layer_folder: ``OUT/<layer>``.
        relative: the array's path below it (from ``relative_paths`` or ``index.tsv``).
        utt_id: names the utterance in the error.

    Raises:
        FeatureError: naming the utterance and the path, for an empty or
            absolute path or one with a ``..`` part.
    """
    path = PurePath(relative)
    if not path.parts or path.anchor or ".." in path.parts:
        raise FeatureError(f"utterance {utt_id!r}: features path {str(relative)!r} would lie outside "
                           f"{layer_folder}; refused")
    return Path(layer_folder) / path


def _absolute(path: str | Path) -> PurePath:
    """``path`` made absolute without collapsing ``..`` (``os.path.abspath`` would hide an escape)."""
    path = PurePath(path)
    return path if path.is_absolute() else PurePath(os.getcwd()) / path


def relative_paths(utterances: Sequence[Utterance], root: str | Path | None = None,
                   file_format: str = "npy") -> dict[str, PurePath]:
    """Each utterance's array path below a layer folder: its audio path relative to ``root``, new suffix.

    Args:
        utterances: their ``path`` is the audio file.
        root: the corpus folder; None, or a folder that does not hold every
            file (e.g. symlinked audio): the common parent folder of the files.
        file_format: ``npy`` or ``npz``, the new suffix.

    Returns:
        utterance id -> relative path, checked by :func:`feature_path`.

    Raises:
        FeatureError: for a path that would leave the layer folder, or two
            utterances that would share one array.
    """
    audio = {u.id: _absolute(u.path) for u in utterances}
    base = _absolute(Path(root).resolve()) if root is not None else None
    if base is None or not all(path.is_relative_to(base) for path in audio.values()):
        base = PurePath(os.path.commonpath([str(path.parent) for path in audio.values()]))
    relative, owner = {}, {}
    for utt_id, path in audio.items():
        rel = path.relative_to(base)
        try:  # before with_suffix, which cannot rename ".."
            feature_path("OUT/<layer>", rel, utt_id)
        except FeatureError as e:
            raise FeatureError(f"{e} (audio {path})") from None
        rel = rel.with_suffix(f".{file_format}")
        if rel in owner:
            raise FeatureError(f"utterances {owner[rel]!r} and {utt_id!r} would share the features file {rel} "
                               f"(audio {audio[owner[rel]]} and {path})")
        owner[rel], relative[utt_id] = utt_id, rel
    return relative


def audio_stamp(path: str | Path) -> str:
    """``<size>:<mtime_ns>`` of an audio file (``missing`` if it cannot be read): what its features were made from."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def read_sources(layer_folder: str | Path) -> dict[str, str]:
    """``sources.tsv``: utterance id -> the stamp of the audio its array was made from (the last line wins)."""
    try:
        lines = (Path(layer_folder) / SOURCES).read_text().splitlines()
    except OSError:
        return {}
    return dict(line.split("\t", 1) for line in lines if line.count("\t") == 1)


def _read_array(path: Path) -> np.ndarray:
    if path.suffix == ".npz":
        with np.load(path) as archive:
            return archive[NPZ_KEY]
    return np.load(path)


def stored_frames(path: Path) -> int | None:
    """Frames of an array written by an earlier run, read from its header; None if unusable."""
    try:
        if path.suffix == ".npz":
            with zipfile.ZipFile(path) as archive, archive.open(f"{NPZ_KEY}.npy") as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                return int(read_header(f)[0][0])
        return int(np.load(path, mmap_mode="r").shape[0])
    except (OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile):
        return None


def source_label(source: Mapping) -> str:
    """The index's ``checkpoint`` column: the checkpoint path, ``baseline:<name>``, else ``-``."""
    if "checkpoint" in source:
        return str(source["checkpoint"])
    return f"baseline:{source['baseline']}" if "baseline" in source else "-"


class FeatureSet:
    """One layer's extracted features, read back from its folder.

    Attributes:
        folder: the layer's folder (``OUT/<layer>``).
        meta: ``meta.json``: source, layer, dim, frame_rate, hop, sample_rate, dtype, format.
        utterances: the utterances extracted, in index order.
        speakers: utterance id -> speaker.
        num_frames: utterance id -> frames.
        paths: utterance id -> the array's file.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        meta_path, index_path = self.folder / META, self.folder / INDEX
        if not meta_path.is_file():
            raise FeatureError(f"{self.folder}: not a feature folder (no {META}); run audiossl extract first")
        if not index_path.is_file():
            raise FeatureError(f"{self.folder}: extraction did not finish (no {INDEX}); run audiossl extract again")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("version") != VERSION:
            raise FeatureError(f"{meta_path}: feature folder version {self.meta.get('version')!r}, this audiossl "
                               f"reads {VERSION}; extract again into a new folder")
        try:
            self.utterances = read_manifest(self.folder / UTTERANCES)
        except CorpusError as e:
            raise FeatureError(str(e)) from None
        self.speakers = {u.id: u.speaker for u in self.utterances}
        self.num_frames: dict[str, int] = {}
        self.paths: dict[str, Path] = {}
        with open(index_path, newline="") as f:
            rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            if tuple(next(rows, ())) != INDEX_COLUMNS:
                raise FeatureError(f"{index_path}: first line must be the header {' '.join(INDEX_COLUMNS)}")
            for number, row in enumerate(rows, start=2):
                if len(row) != len(INDEX_COLUMNS) or not row[2].isdigit() or row[0] not in self.speakers:
                    raise FeatureError(f"{index_path}:{number}: expected an id of {UTTERANCES}, a path, "
                                       f"a frame count and {len(INDEX_COLUMNS) - 3} more columns")
                self.paths[row[0]] = feature_path(self.folder, row[1], row[0])
                self.num_frames[row[0]] = int(row[2])
        if len(self.num_frames) != len(self.speakers):
            raise FeatureError(f"{index_path}: lists {len(self.num_frames)} utterances, {UTTERANCES} "
                               f"{len(self.speakers)}")

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def frame_rate(self) -> float:
        """Frames per second; 100 (10 ms, audiossl's own) where ``meta.json`` does not say."""
        return float(self.meta.get("frame_rate", 100.0))

    def load(self, utt_id: str) -> np.ndarray:
        """(frames, dim) array of one utterance, in the stored dtype."""
        if utt_id not in self.num_frames:
            raise FeatureError(f"{self.folder}: no features for utterance {utt_id!r}")
        path = self.paths[utt_id]
        try:
            feats = _read_array(path)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise FeatureError(f"{path}: cannot read features ({e})") from None
        expected = (self.num_frames[utt_id], self.dim)
        if feats.shape != expected:
            raise FeatureError(f"{path}: shape {feats.shape}, the index says {expected}")
        return feats


def write_index(folder: Path, done: list[Utterance], relative: dict[str, PurePath], num_frames: dict[str, int],
                 dim: int, frame_rate: str, layer: str, source: dict) -> None:
    """Finish a layer folder: ``utterances.tsv``, then ``index.tsv``, whose presence marks it finished.

    ``extract`` calls it once every array of ``done`` is written; readers (:class:`FeatureSet`) trust nothing
    in a folder without it.
    """
    rows = [INDEX_COLUMNS, *((u.id, relative[u.id].as_posix(), num_frames[u.id], dim, frame_rate, layer,
                              source_label(source)) for u in done)]
    index = "".join("\t".join(map(str, row)) + "\n" for row in rows).encode()
    write_manifest(done, folder / UTTERANCES)
    atomic_write(folder / INDEX, lambda f: f.write(index))


def check_inside(out_dir: Path, folders: Mapping[str, Path], relative: Mapping[str, Path]) -> None:
    """Refuse a folder symlink (a layer folder, or one of the tree below it) that leads out of ``out_dir``."""
    top = out_dir.resolve()
    for folder in folders.values():
        inside = folder.resolve()
        if not inside.is_relative_to(top):
            raise FeatureError(f"{folder} leads to {inside}, outside {out_dir}; refused (remove the link)")
        for parent in sorted({r.parent for r in relative.values()}):
            where = (folder / parent).resolve()
            if not where.is_relative_to(inside):
                raise FeatureError(f"{folder / parent} leads to {where}, outside {folder}; refused "
                                   "(remove the link)")
