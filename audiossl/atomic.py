"""Atomic file writes: a temporary file beside the target, then a rename.

Every file audiossl writes for later runs to read (checkpoints, manifests,
feature arrays, logs cut back on resume) goes through :func:`atomic_write`: the
content goes to ``.<name>.tmp<pid>`` in the target's folder (the same
filesystem, so the rename is atomic), is optionally fsynced, and is renamed
over the target. A crash or a failed write leaves the previous file whole and
removes the temporary one. A full disk (ENOSPC) or an exhausted quota (EDQUOT),
which torch reports as a chain of two tracebacks ending in
``inline_container.cc: unexpected pos``, becomes one :class:`DiskFullError`
line naming the file and saying what is intact.

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

__all__ = ["DiskFullError", "atomic_write", "remove_stale_temps", "temp_path"]

_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
_TEMP = re.compile(r"^\..+\.tmp(\d+)$")


class DiskFullError(OSError):
    """A write that failed because the disk (or the quota) is full; one line naming the file."""


def temp_path(path: Path) -> Path:
    """This process's temporary file for ``path``: ``.<name>.tmp<pid>`` beside it."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _disk_full(e: BaseException) -> int | None:
    """ENOSPC or EDQUOT if ``e`` or an exception it chains is that error (torch wraps it in a RuntimeError)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL:
            return e.errno
        e = e.__cause__ or e.__context__
    return None


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
        if code is None:
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


def remove_stale_temps(folder: str | Path, recursive: bool = False, owner_may_live: bool = True) -> list[Path]:
    """Remove the ``.<name>.tmp<pid>`` files that killed writers left in ``folder``.

    Args:
        recursive: also in every folder below.
        owner_may_live: keep a file whose pid is a running process on this
            machine (its writer may still be at work). Pass False only while
            holding the folder's lock (:mod:`audiossl.lock`), when no other
            writer can be there.

    Returns:
        The files removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for candidate in (folder.rglob(".*.tmp*") if recursive else folder.glob(".*.tmp*")):
        match = _TEMP.match(candidate.name)
        if match is None or not candidate.is_file():
            continue
        pid = int(match.group(1))
        if owner_may_live and pid != os.getpid() and _alive(pid):
            continue
        candidate.unlink(missing_ok=True)
        removed.append(candidate)
    return removed
