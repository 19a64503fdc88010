"""Atomic file writes: a temporary file beside the target, then a rename.

Every file audiossl writes for later runs to read (checkpoints, manifests,
feature arrays, logs cut back on resume) goes through :func:`atomic_write`: the
content goes to ``.<name>.tmp<pid>`` in the target's folder (the same
filesystem, so the rename is atomic), is optionally fsynced, and is renamed
over the target. A crash or a failed write leaves the previous file whole and
removes the temporary one. A full disk (ENOSPC), an exhausted quota (EDQUOT) or
a file-size limit (EFBIG, ``ulimit -f``), which torch reports as a chain of two
tracebacks ending in ``inline_container.cc: unexpected pos`` and numpy as a
short write without an errno (``84224 requested and 20448 written``), becomes
one :class:`DiskFullError` line naming the file and saying what is intact.

A writer killed with ``kill -9`` leaves its temporary file behind; the pid in
its name tells :func:`remove_stale_temps` whether the writer is still alive.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from audiossl.utils.lock import LOCK_NAME

__all__ = ["DiskFullError", "atomic_write", "remove_stale_temps", "temp_path"]

_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
         errno.EFBIG: "file too large for the file-size limit (ulimit -f) or the filesystem"}
_TEMP = re.compile(r"^\..+\.tmp(\d+)$")
_SHORT_WRITE = re.compile(r"^(\d+) requested and (\d+) written$")  # numpy's tofile, an OSError without errno
_RETRY_BYTES = 1 << 20  # the most a short write's retry writes to learn its errno


class DiskFullError(OSError):
    """A write that failed for want of room (full disk, quota, file-size limit); one line naming the file."""


def temp_path(path: Path) -> Path:
    """This process's temporary file for ``path``: ``.<name>.tmp<pid>`` beside it."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _disk_full(e: BaseException) -> int | None:
    """ENOSPC, EDQUOT or EFBIG if ``e`` or an exception it chains is that error (torch wraps it in a RuntimeError)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL:
            return e.errno
        e = e.__cause__ or e.__context__
    return None


def _short_write(e: BaseException) -> int | None:
    """The items numpy's ``tofile`` could not write, if ``e`` or an exception it chains is that short write."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        match = _SHORT_WRITE.match(str(e)) if isinstance(e, OSError) and e.errno is None else None
        if match:
            return int(match.group(1)) - int(match.group(2))
        e = e.__cause__ or e.__context__
    return None


def _errno_of_short_write(tmp: Path, missing: int) -> int | None:
    """Why a write came up short, asked of the kernel: write the missing part again while ``tmp`` is there.

    numpy's ``tofile`` turns a short ``fwrite`` into an ``OSError`` with no
    errno, so a full disk looks like any other failure. The same write fails
    the same way again (ENOSPC, EDQUOT, EFBIG), and the retry's bytes go to
    the temporary file, which is removed anyway. ``missing`` counts items, at
    least one byte each; at most ``_RETRY_BYTES`` are written. None when the
    retry succeeds (the cause is gone, so nothing is claimed).
    """
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_APPEND)
    except OSError:
        return None
    try:
        left = max(1, min(missing, _RETRY_BYTES))
        while left > 0:
            left -= os.write(fd, bytes(min(left, 1 << 16)))
        return None
    except OSError as e:
        return e.errno
    finally:
        os.close(fd)


def _open_for_writing(path: Path) -> BinaryIO:
    return open(path, "wb")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object], *, fsync: bool = False,
                 what: str = "file") -> None:
    """Call ``write`` on a temporary file beside ``path``, then rename it to ``path``.

    Args:
        path: the target; its folder is created.
        write: writes the content to the open binary file it is given.
        fsync: flush the content to the disk before the rename (checkpoints).
        what: names the target in a disk-full message (``checkpoint``, ``manifest``).

    Raises:
        DiskFullError: ``no space left on device writing <path>; the previous
            <what> is intact`` (or ``no <what> was there before``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    existed = path.exists()
    try:
        with _open_for_writing(tmp) as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:
        code = _disk_full(e)
        missing = _short_write(e) if code is None else None
        if missing is not None:
            code = _errno_of_short_write(tmp, missing)
        if code not in _FULL:
            if isinstance(e, OSError) and e.filename == str(tmp):
                e.filename = str(path)  # a read-only folder: name the file asked for, not our temporary one
            raise
        kept = f"the previous {what} is intact" if existed else f"no {what} was there before"
        raise DiskFullError(code, f"{_FULL[code]} writing {path}; {kept}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Remove the ``.<name>.tmp<pid>`` files that killed writers left in ``folder``.

    A file is removed only when its writer is provably gone: no process has
    its pid on this machine, or the pid is this process's own. Call it only on
    a folder whose lock (:mod:`audiossl.utils.lock`) this process holds: a pid says
    nothing about writers on other nodes, and the lock keeps those out. A
    killed writer whose pid was reused since keeps its file until that
    process ends; a hidden leftover costs less than a live checkpoint.

    Args:
        recursive: also in the folders below, except those that hold their
            own ``.lock`` (another run's working folder: its lock is not ours)
            and folder links (they lead elsewhere).

    Returns:
        The files removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for where, dirs, names in os.walk(folder):  # links to folders are not followed
        dirs[:] = [d for d in dirs if recursive and not (Path(where) / d / LOCK_NAME).exists()]
        for name in names:
            match = _TEMP.match(name)
            candidate = Path(where) / name
            if match is None or not candidate.is_file():
                continue
            pid = int(match.group(1))
            if pid != os.getpid() and _alive(pid):
                continue
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed
