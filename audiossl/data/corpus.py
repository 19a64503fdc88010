"""Finding utterances: LibriSpeech trees, any folder of audio, manifest TSV.

A manifest is a TSV file with a header line and the columns
``id  path  speaker  num_samples  sample_rate``; ``num_samples`` and
``sample_rate`` are the file's own, read from its header. The scan also
decodes each file once to find the ones a header cannot reveal as unusable
(:mod:`audiossl.data.validate`); those are listed, with the reason, in a
problems file beside the manifest (``train.tsv`` -> ``train.problems.tsv``,
lines ``path  reason``), so that a cached scan still knows what it skipped.
Relative paths in a manifest are relative to the manifest's folder.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

from audiossl.data.validate import check_files

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
MANIFEST_COLUMNS = ("id", "path", "speaker", "num_samples", "sample_rate")
LIBRISPEECH_NAME = re.compile(r"^(\d+)-(\d+)-(\d+)$")


@dataclass(frozen=True)
class Utterance:
    id: str  # LibriSpeech stem, else the relative path without suffix
    path: str  # absolute path of the audio file
    speaker: str
    num_samples: int  # at the file's own sample rate
    sample_rate: int

    def samples_at(self, rate: int) -> int:
        """Length in samples once resampled to ``rate``."""
        return self.num_samples * rate // self.sample_rate


@dataclass(frozen=True)
class Problem:
    path: str
    reason: str


class CorpusError(ValueError):
    """A corpus or manifest that cannot be used; the message names the path."""


def speaker_of(relative: Path, speaker_level: int) -> str:
    """LibriSpeech files carry the speaker in their name; others in a folder."""
    match = LIBRISPEECH_NAME.match(relative.stem)
    if match:
        return match.group(1)
    folders = relative.parts[:-1]
    if not folders:
        return "unknown"
    try:
        return folders[speaker_level]
    except IndexError:
        return folders[-1]


def utterance_id(relative: Path) -> str:
    if LIBRISPEECH_NAME.match(relative.stem):
        return relative.stem
    return relative.with_suffix("").as_posix()


def find_audio(root: Path) -> list[Path]:
    files = [Path(d) / f for d, _, names in os.walk(root, followlinks=True) for f in names
             if f.lower().endswith(AUDIO_SUFFIXES)]
    return sorted(files)


def scan_corpus(root: str | Path, speaker_level: int = -1, progress: bool = True,
                decode: bool = True) -> tuple[list[Utterance], list[Problem]]:
    """Read every audio file's header below ``root`` and, with ``decode``, its samples once.

    Args:
        decode: decode every file once (:mod:`audiossl.data.validate`) to
            catch truncated or corrupt streams and NaN/inf samples, which
            headers hide; without it only headers are read.

    Returns:
        The usable utterances, sorted by id, and the files that were skipped
        with the reason.
    """
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(f"{root}: not a folder")
    utterances, problems, seen = [], [], {}
    paths = find_audio(root)
    for path, check in zip(paths, check_files(paths, decode, progress, desc=f"scan {root.name}")):
        if check.problem is not None:
            problems.append(Problem(str(path), check.problem))
            continue
        relative = path.relative_to(root)
        utt = Utterance(utterance_id(relative), str(path.resolve()), speaker_of(relative, speaker_level),
                        check.num_samples, check.sample_rate)
        if utt.id in seen:
            raise CorpusError(f"{path}: utterance id {utt.id!r} also used by {seen[utt.id]}")
        seen[utt.id] = path
        utterances.append(utt)
    if not utterances:
        raise CorpusError(f"{root}: no usable audio files ({', '.join(AUDIO_SUFFIXES)}) found")
    return sorted(utterances, key=lambda u: u.id), problems


def write_manifest(utterances: list[Utterance], path: str | Path) -> None:
    """Write atomically: a crash leaves the old manifest or none."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(MANIFEST_COLUMNS)
            for u in utterances:
                writer.writerow([u.id, u.path, u.speaker, u.num_samples, u.sample_rate])
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def problems_path(manifest: str | Path) -> Path:
    """The problems file that goes with a manifest: ``x.tsv`` -> ``x.problems.tsv``."""
    manifest = Path(manifest)
    return manifest.with_name(manifest.stem + ".problems.tsv")


def write_problems(problems: list[Problem], path: str | Path) -> None:
    """``path  reason`` lines, written atomically (an empty file when all is well)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    clean = [(p.path, " ".join(p.reason.split())) for p in problems]  # one line, no tabs
    try:
        tmp.write_text("".join(f"{name}\t{reason}\n" for name, reason in clean))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_problems(path: str | Path) -> list[Problem]:
    """The problems file beside a manifest; none when it does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    return [Problem(*line.split("\t", 1)) for line in path.read_text().splitlines() if "\t" in line]


def read_manifest(path: str | Path) -> list[Utterance]:
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise CorpusError(f"{path}: cannot read manifest ({e.strerror})") from None
    if not lines or tuple(lines[0].split("\t")) != MANIFEST_COLUMNS:
        raise CorpusError(f"{path}: first line must be the header {' '.join(MANIFEST_COLUMNS)}")
    utterances, seen = [], set()
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != len(MANIFEST_COLUMNS):
            raise CorpusError(f"{path}:{number}: expected {len(MANIFEST_COLUMNS)} tab-separated columns, got {len(cols)}")
        utt_id, audio, speaker, num_samples, rate = cols
        try:
            num_samples, rate = int(num_samples), int(rate)
        except ValueError:
            raise CorpusError(f"{path}:{number}: num_samples and sample_rate must be integers") from None
        if utt_id in seen:
            raise CorpusError(f"{path}:{number}: duplicate utterance id {utt_id!r}")
        if not utt_id or utt_id.startswith(("/", "\\")) or ".." in re.split(r"[/\\]", utt_id):
            # Ids name output files (OUT/<layer>/<id>.npy): one must not point outside the folder.
            raise CorpusError(f"{path}:{number}: utterance id {utt_id!r} must be a relative name without '..'")
        seen.add(utt_id)
        audio_path = Path(audio) if Path(audio).is_absolute() else path.parent / audio
        utterances.append(Utterance(utt_id, str(audio_path), speaker, num_samples, rate))
    if not utterances:
        raise CorpusError(f"{path}: manifest lists no utterances")
    return utterances


def load_corpus(source: str | Path, cache: str | Path | None = None, speaker_level: int = -1,
                progress: bool = True) -> tuple[list[Utterance], list[Problem]]:
    """Utterances from a manifest file or a folder.

    Args:
        source: a manifest ``.tsv`` or a folder to scan.
        cache: where to keep the manifest of a scanned folder; reused when it
            exists and lists files below ``source``.

    Returns:
        The utterances and the files the scan skipped (read back from the
        problems file beside a manifest or cache, so a reused scan still
        reports them).
    """
    source = Path(source)
    if source.is_file():
        return read_manifest(source), read_problems(problems_path(source))
    if cache is not None and Path(cache).is_file():
        cached = read_manifest(cache)
        root = str(source.resolve())
        if all(Path(u.path).is_relative_to(root) for u in cached):
            return cached, read_problems(problems_path(cache))
    utterances, problems = scan_corpus(source, speaker_level, progress)
    if cache is not None:
        write_problems(problems, problems_path(cache))
        write_manifest(utterances, cache)
    return utterances, problems
