"""An exclusive lock on a working folder, so two runs never share one.

``audiossl train`` holds ``EXP_DIR/.lock`` and ``audiossl extract`` holds
``OUT/.lock`` for as long as they run: ``fcntl.flock`` on the file, with the
holder's pid, host and start time written inside, so a refused second launch
says who holds the folder. A second training run is refused; a second
extraction into the same folder (two probes sharing a features folder) waits
for the first and then reuses what it wrote. The kernel drops the lock when the holder exits,
however it exits (``kill -9`` included), so a stale lock never blocks a
re-run.

What it does not cover: on NFS, ``flock`` is turned into a POSIX lock that
the server arbitrates between clients (Linux 2.6.12 and later), so it works
across nodes only where the server supports locking; a mount with ``nolock``
(or Lustre with ``localflock``) keeps locks local to each node, and a
filesystem that refuses locks (some FUSE mounts) gets a warning and no lock.
It guards one folder against other audiossl runs, not against other programs
writing there, nor against reading a checkpoint while it is replaced (the
rename is atomic, so a reader sees the old or the new file, never half).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
import time
from pathlib import Path

from audiossl.errors import UserError

__all__ = ["FolderLock", "FolderLocked"]

LOCK_NAME = ".lock"


class FolderLocked(UserError, RuntimeError):
    """Another run holds the folder; the message names it."""


class FolderLock:
    """``with FolderLock(folder, "audiossl train"):`` holds ``folder/.lock`` exclusively.

    Args:
        wait: when another process holds the lock, wait for it (saying so)
            instead of raising.

    Raises:
        FolderLocked: at entry, when another process holds the lock (and not ``wait``).
    """

    def __init__(self, folder: str | Path, command: str, wait: bool = False):
        self.folder, self.command, self.wait = Path(folder), command, wait
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def holder(self) -> str:
        """What the lock file says about its holder (``pid 123 on node4 since ...``)."""
        try:
            text = self.path.read_text().strip()
        except OSError:
            text = ""
        return text or "an unknown process (its lock file is empty)"

    def __enter__(self) -> "FolderLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES) and self.wait:
                print(f"waiting for {self.folder}: in use by {self.holder()}", file=sys.stderr)
                fcntl.flock(fd, fcntl.LOCK_EX)
                return self._hold(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise FolderLocked(f"{self.folder} is in use by {self.holder()}; wait for that run to end, "
                                   "or use another folder") from None
            # ENOLCK, EINVAL, ENOSYS...: the filesystem does not lock.
            print(f"warning: cannot lock {self.path} ({os.strerror(e.errno)}); make sure no other run uses "
                  f"{self.folder}", file=sys.stderr)
            return self
        return self._hold(fd)

    def _hold(self, fd: int) -> "FolderLock":
        stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        os.ftruncate(fd, 0)
        os.write(fd, f"{self.command} (pid {os.getpid()} on {socket.gethostname()}, since {stamp})\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            # Empty the file first: a reader between the two steps sees no stale holder.
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
