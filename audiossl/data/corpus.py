"""Finding utterances: LibriSpeech trees, any folder of audio, manifest TSV.

A manifest is a TSV file with a header line and the columns
``id  path  speaker  num_samples  sample_rate``; ``num_samples`` and
``sample_rate`` are the file's own, read from its header. The scan also
decodes each file once to find the ones a header cannot reveal as unusable
(:mod:`audiossl.data.validate`); those are listed, with the reason, in a
problems file beside the manifest (``train.tsv`` -> ``train.problems.tsv``,
lines ``path  reason``), so that a cached scan still knows what it skipped.
Relative paths in a manifest are relative to the manifest's folder. A folder
scan follows links to folders elsewhere but walks each real folder and counts
each real file once (:func:`find_audio`), so a link loop cannot multiply the
data; a sample rate no audio has (:func:`audiossl.data.validate.rate_problem`)
is a problem in a scan and an error in a manifest.

A scan cached for training (``EXP_DIR/manifest.tsv``) keeps a third file,
``manifest.stamps.tsv``: the size and modification time of every file it
scanned. A later run walks the folder again (names and ``stat`` only) and
scans just the files that are new or whose size or time changed; files gone
from the folder leave the manifest. It prints what it reused, added, redid
and dropped. Names with a tab or a line break cannot be held by a TSV line
and are listed as problems.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from audiossl.data.validate import check_files, rate_problem
from audiossl.errors import UserError
from audiossl.utils.atomic import atomic_write

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


class CorpusError(UserError, ValueError):
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


def _identity(path: str | Path) -> tuple[int, int] | None:
    """(device, inode) of what ``path`` leads to: one per real folder or file, however it is reached."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _walk_once(root: Path) -> tuple[list[Path], list[str]]:
    """os.walk following folder links, each real folder once; the audio files found and the links not followed.

    A link is not followed when it leads into the tree itself (that folder is
    walked as itself: ``ln -s . spk/again`` is a loop) or to a folder reached
    already (a second link to one target); links to folders elsewhere (a
    corpus assembled from other disks) are followed once.
    """
    inside = Path(os.path.realpath(root))
    seen, files, skipped = {_identity(root)}, [], []
    for where, dirs, names in os.walk(root, followlinks=True):
        kept = []
        for name in sorted(dirs):
            path = os.path.join(where, name)
            key = _identity(path)
            if key in seen or (os.path.islink(path) and Path(os.path.realpath(path)).is_relative_to(inside)):
                skipped.append(f"{path} -> {os.path.realpath(path)}")
                continue
            seen.add(key)
            kept.append(name)
        dirs[:] = kept
        files += [Path(where) / f for f in names if f.lower().endswith(AUDIO_SUFFIXES)]
    return files, skipped


def find_audio(root: Path) -> list[Path]:
    """The audio files below ``root``, sorted, each real file once (links are followed, never twice).

    A folder link that leads back into the tree or to a folder walked already,
    and a file that is the same file as another one found (a link or a hard
    link to it), are skipped and named on stdout: without that a loop like
    ``ln -s . spk/again`` repeats every file dozens of times under fake
    speakers.
    """
    paths, skipped = _walk_once(root)
    first: dict[tuple[int, int], Path] = {}
    twice, unreadable = [], []  # unreadable (a broken link): kept, so the scan names its problem
    for path in sorted(paths, key=lambda p: (p.is_symlink(), p)):  # the file itself before a link to it
        key = _identity(path)
        if key is None:
            unreadable.append(path)
        elif key in first:
            twice.append(f"{path} (the same file as {first[key]})")
        else:
            first[key] = path
    for link in skipped:
        print(f"skipped {link}: a link to a folder scanned already; following it would count its files twice")
    if twice:
        print(f"skipped {len(twice)} file(s) found again through links, e.g. {'; '.join(twice[:3])}")
    return sorted([*first.values(), *unreadable])


def _stamp(path: Path) -> tuple[int, int]:
    """(size, modification time in ns): what tells a cached scan that a file changed."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _scan(root: Path, paths: list[Path], speaker_level: int, progress: bool,
          decode: bool) -> tuple[list[Utterance], list[Problem]]:
    """Check ``paths`` (below ``root``) and make utterances of the usable ones, in the order given."""
    utterances, problems = [], []
    for path, check in zip(paths, check_files(paths, decode, progress, desc=f"scan {root.name}")):
        if any(c in str(path) for c in "\t\n\r"):
            problems.append(Problem(str(path).encode("unicode_escape").decode(),
                                    "its name holds a tab or a line break, which a manifest line cannot hold"))
        elif check.problem is not None:
            problems.append(Problem(str(path), check.problem))
        else:
            relative = path.relative_to(root)
            utterances.append(Utterance(utterance_id(relative), str(path.resolve()),
                                        speaker_of(relative, speaker_level), check.num_samples, check.sample_rate))
    return utterances, problems


def _check_unique(utterances: list[Utterance], root: Path) -> list[Utterance]:
    seen: dict[str, str] = {}
    for utt in utterances:
        if utt.id in seen:
            raise CorpusError(f"{utt.path}: utterance id {utt.id!r} also used by {seen[utt.id]}")
        seen[utt.id] = utt.path
    if not utterances:
        raise CorpusError(f"{root}: no usable audio files ({', '.join(AUDIO_SUFFIXES)}) found")
    return sorted(utterances, key=lambda u: u.id)


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
    utterances, problems = _scan(root, find_audio(root), speaker_level, progress, decode)
    return _check_unique(utterances, root), problems


def write_manifest(utterances: list[Utterance], path: str | Path) -> None:
    """Write atomically: a crash leaves the old manifest or none.

    Fields are written as they are, tab-separated, no quoting (``read_manifest``
    splits on tabs), so a ``"`` in a name stays a ``"``; a tab or a line break
    in a field is refused.
    """
    rows = [MANIFEST_COLUMNS, *((u.id, u.path, u.speaker, u.num_samples, u.sample_rate) for u in utterances)]
    for row in rows:
        bad = [str(field) for field in row if any(c in str(field) for c in "\t\n\r")]
        if bad:
            raise CorpusError(f"{path}: {bad[0]!r} holds a tab or a line break, which a manifest line cannot hold")
    text = "".join("\t".join(map(str, row)) + "\n" for row in rows)
    atomic_write(path, lambda f: f.write(text.encode()), what="manifest")


def problems_path(manifest: str | Path) -> Path:
    """The problems file that goes with a manifest: ``x.tsv`` -> ``x.problems.tsv``."""
    manifest = Path(manifest)
    return manifest.with_name(manifest.stem + ".problems.tsv")


def write_problems(problems: list[Problem], path: str | Path) -> None:
    """``path  reason`` lines, written atomically (an empty file when all is well)."""
    clean = [(p.path, " ".join(p.reason.split())) for p in problems]  # one line, no tabs
    text = "".join(f"{name}\t{reason}\n" for name, reason in clean)
    atomic_write(path, lambda f: f.write(text.encode()), what="problems file")


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
            raise CorpusError(f"{path}:{number}: expected {len(MANIFEST_COLUMNS)} tab-separated columns, "
                              f"got {len(cols)}")
        utt_id, audio, speaker, num_samples, rate = cols
        try:
            num_samples, rate = int(num_samples), int(rate)
        except ValueError:
            raise CorpusError(f"{path}:{number}: num_samples and sample_rate must be integers") from None
        if rate_problem(rate) or num_samples < 0:
            # Lengths in seconds divide by the rate: refused here, not a ZeroDivisionError mid-run.
            raise CorpusError(f"{path}:{number}: {audio}: " + (rate_problem(rate) or f"num_samples {num_samples} < 0"))
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


def stamps_path(manifest: str | Path) -> Path:
    """The scan record that goes with a cached manifest: ``x.tsv`` -> ``x.stamps.tsv``."""
    manifest = Path(manifest)
    return manifest.with_name(manifest.stem + ".stamps.tsv")


def _read_stamps(path: Path, header: str) -> dict[str, tuple[int, int, str]] | None:
    """relative path -> (size, mtime_ns, utterance id or ""), or None without a record of this scan."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    if not lines or lines[0] != header:
        return None
    stamps = {}
    for line in lines[1:]:
        fields = line.split("\t")
        if len(fields) != 4 or not (fields[1].isdigit() and fields[2].isdigit()):
            return None
        stamps[fields[0]] = (int(fields[1]), int(fields[2]), fields[3])
    return stamps


def _rescan(source: Path, cache: Path, speaker_level: int,
            progress: bool) -> tuple[list[Utterance], list[Problem]]:
    """The cached scan of ``source``, brought up to date with the folder: only new and changed files are scanned."""
    root = Path(os.path.abspath(source))
    header = f"# audiossl scan of {root} speaker_level={speaker_level}"
    paths = find_audio(root)
    current = {path.relative_to(root).as_posix(): path for path in paths}
    had_cache = cache.is_file()
    stamps = _read_stamps(stamps_path(cache), header) if had_cache else None
    now = {}
    for rel, path in current.items():
        try:
            now[rel] = _stamp(path)
        except OSError:  # gone since the walk: the scan names it
            now[rel] = (-1, -1)
    known = stamps or {}
    reused = [rel for rel in current if rel in known and known[rel][:2] == now[rel]]
    todo = [rel for rel in current if rel not in reused]
    gone = [rel for rel in known if rel not in current]
    if stamps is not None and not todo and not gone:
        utterances, problems = read_manifest(cache), read_problems(problems_path(cache))
        print(f"{cache}: reused the scan of all {len(reused)} files of {source} (none added, changed or gone)")
        return utterances, problems
    utterances, problems = _scan(root, [current[rel] for rel in todo], speaker_level, progress, decode=True)
    if reused:
        ids = {known[rel][2] for rel in reused if known[rel][2]}
        kept_problems = {os.path.abspath(root / rel) for rel in reused if not known[rel][2]}
        utterances += [u for u in read_manifest(cache) if u.id in ids]
        problems += [p for p in read_problems(problems_path(cache)) if os.path.abspath(p.path) in kept_problems]
    utterances = _check_unique(utterances, source)
    by_path = {u.path: u.id for u in utterances}
    write_problems(problems, problems_path(cache))
    write_manifest(utterances, cache)
    lines = [header] + [f"{rel}\t{now[rel][0]}\t{now[rel][1]}\t{by_path.get(str(current[rel].resolve()), '')}"
                        for rel in current if now[rel][0] >= 0 and "\t" not in rel and "\n" not in rel]
    text = "".join(line + "\n" for line in lines)
    atomic_write(stamps_path(cache), lambda f: f.write(text.encode()), what="scan record")
    if stamps is None:
        print(f"{cache}: scanned {len(todo)} files of {source}"
              + (" (the cached scan had no record of file sizes and times)" if had_cache else ""))
    else:
        added = sum(rel not in known for rel in todo)
        print(f"{cache}: {len(reused)} files reused, {added} added, {len(todo) - added} changed and scanned again, "
              f"{len(gone)} gone from {source}")
    return utterances, problems


def drop_unreadable(utterances: list[Utterance], source: str | Path) -> tuple[list[Utterance], list[Problem]]:
    """The utterances whose file can be opened now, and a problem for each other one.

    A manifest may list paths that do not resolve here (a relative manifest
    moved away from its audio, a corpus on another node's disk); a file gone
    is a problem like any other, and a corpus none of whose files is there is
    refused before training rather than left to fail window after window.

    Raises:
        CorpusError: when no file can be read, naming one and the likely cause.
    """
    kept, problems = [], []
    for u in utterances:
        if os.access(u.path, os.R_OK):
            kept.append(u)
        else:
            reason = "no such file" if not os.path.exists(u.path) else "permission denied"
            problems.append(Problem(u.path, f"cannot be opened ({reason}); it was there when the corpus was listed"))
    if not kept:
        where = (f"; relative paths in a manifest are read from its folder, {Path(source).resolve().parent}"
                 if Path(source).is_file() else "")
        raise CorpusError(f"{source}: none of its {len(utterances)} audio files can be opened, e.g. "
                          f"{problems[0].path} ({problems[0].reason.split(';')[0]}){where}")
    return kept, problems


def load_corpus(source: str | Path, cache: str | Path | None = None, speaker_level: int = -1,
                progress: bool = True) -> tuple[list[Utterance], list[Problem]]:
    """Utterances from a manifest file or a folder.

    Args:
        source: a manifest ``.tsv`` or a folder to scan.
        cache: where to keep the manifest of a scanned folder; when it
            exists, only the files added or changed since (by size and
            modification time, see ``stamps_path``) are scanned.

    Returns:
        The utterances and the files the scan skipped (read back from the
        problems file beside a manifest or cache, so a reused scan still
        reports them).
    """
    source = Path(source)
    if source.is_file():
        return read_manifest(source), read_problems(problems_path(source))
    if cache is not None:
        if not source.is_dir():
            raise CorpusError(f"{source}: not a folder")
        return _rescan(source, Path(cache), speaker_level, progress)
    return scan_corpus(source, speaker_level, progress)
