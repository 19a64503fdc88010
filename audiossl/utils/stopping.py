"""Stopping a training run early, on a signal or a time budget, with a checkpoint.

Schedulers preempt with a signal: SLURM sends SIGTERM at the time limit (and,
with ``--signal``, SIGUSR1 or any other some minutes before), Ctrl-C sends
SIGINT. While the loop runs, SIGTERM, SIGINT and SIGUSR1 only raise a flag:
the current step finishes, the checkpoint is written (atomically, as always),
one line is printed and the run exits with :data:`EXIT_SIGNAL`. A second SIGINT
stops at once without saving (exit 130); a second SIGTERM or SIGUSR1 is
ignored, so a scheduler's follow-up signal does not cut the save short.
DataLoader workers ignore the three signals (:func:`ignore_in_worker`): the
main process stops them.

Under ``torchrun`` each rank checks its flags after every step and the ranks
agree (a max all-reduce on a gloo group, CPU only: no device sync), so every
rank stops after the same step and the checkpoint holds all of them.

Exit codes of ``audiossl train`` (docs/reliability.md lists them too): 0
finished (max_steps reached), 1 failed, 2 user error (nothing trained), 3
time budget spent (checkpoint written), 4 stopped by a signal (checkpoint
written), 130 Ctrl-C twice (stopped without saving).

The other long commands (``extract``, ``probe``, ``units fit``) handle the
same signals the same way (:func:`handle_stop_signals`): their loops reach a
:func:`stop_point` after each batch of files (extraction), each epoch (a
probe's head, k-means) and each feature set scored, where stopping leaves
nothing partial; there the command stops with one line saying how to go on,
and exit 4.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator

import torch
import torch.distributed as dist

EXIT_FINISHED = 0  # max_steps reached
EXIT_FAILED = 1  # the run failed (non-finite losses, unreadable data, disk full)
EXIT_USAGE = 2  # a user error found before training (config, corpus, checkpoint, lock)
EXIT_BUDGET = 3  # max_minutes spent: checkpoint written, the same command continues
EXIT_SIGNAL = 4  # stopped by SIGTERM, SIGINT or SIGUSR1: checkpoint written, the same command continues
EXIT_CODES = {None: EXIT_FINISHED, "budget": EXIT_BUDGET, "signal": EXIT_SIGNAL}

EXIT_INTERRUPTED = 130  # Ctrl-C twice: stopped at once, without saving

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def ignore_in_worker(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: leave the stop signals to the main process."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class StopRequests:
    """The signals received and the time budget, checked once per step.

    ``with StopRequests(max_minutes, distributed) as stops:`` installs the
    handlers (main thread only) and restores the previous ones on exit;
    ``stops.check()`` after a step returns ``"signal"``, ``"budget"`` or None,
    the same on every rank.
    """

    def __init__(self, max_minutes: float = 0.0, distributed: bool = False):
        self.max_minutes = max_minutes
        self.signum = 0  # the first stop signal received (every rank's, after check)
        self.start = time.perf_counter()
        self._previous: dict[int, object] = {}
        self._group = None
        if distributed:
            # Control flags travel on the CPU: a gloo group beside NCCL, the default group under gloo.
            self._group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD

    def _handle(self, signum: int, frame) -> None:
        if self.signum == 0:
            self.signum = signum
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: the user wants out now

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def check(self) -> str | None:
        """``"signal"`` if any rank got a stop signal, else ``"budget"`` if the time is up, else None."""
        out_of_time = self.max_minutes > 0 and time.perf_counter() - self.start > 60 * self.max_minutes
        if self._group is not None:
            flags = torch.tensor([self.signum, int(out_of_time)], dtype=torch.int64)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self._group)
            self.signum, out_of_time = int(flags[0]), bool(flags[1])
        if self.signum:
            return "signal"
        return "budget" if out_of_time else None

    def describe(self, reason: str, step: int, checkpoint) -> str:
        """The one line printed when the run stops early."""
        code = EXIT_CODES[reason]
        cause = (f"received {self.signal_name}" if reason == "signal"
                 else f"the {self.max_minutes:g}-minute budget is spent")
        return (f"stopping at step {step}: {cause}; checkpoint written to {checkpoint}; "
                f"the same command resumes (exit {code})")


class Stopped(Exception):
    """A command other than ``train`` stopped at a :func:`stop_point` on a stop signal.

    Attributes:
        where: what was finished ("after 4 of 12 utterances", "before epoch 3 of phone probe mfcc").
        signal_name: the signal received (``SIGTERM``).
    """

    def __init__(self, where: str, signal_name: str):
        super().__init__(f"stopping {where}: received {signal_name}")
        self.where, self.signal_name = where, signal_name


_handling: StopRequests | None = None  # the running command's, inside handle_stop_signals()


@contextlib.contextmanager
def handle_stop_signals() -> Iterator[StopRequests]:
    """SIGTERM, SIGINT and SIGUSR1 only raise a flag, as in training, until the next :func:`stop_point`.

    For a command whose long loops all reach stop points: one that never reached one would ignore a
    scheduler's SIGTERM until it ends. A second Ctrl-C still stops at once (KeyboardInterrupt).
    """
    global _handling
    with StopRequests() as requests:
        outer, _handling = _handling, requests
        try:
            yield requests
        finally:
            _handling = outer


def stop_requested() -> bool:
    """Whether a stop signal came since :func:`handle_stop_signals` began (for a loop that must tidy up
    before its :func:`stop_point`)."""
    return _handling is not None and bool(_handling.signum)


def stop_point(where: str) -> None:
    """Raise :class:`Stopped` if a stop signal came since :func:`handle_stop_signals` began; else nothing.

    Called between units of work whose results are complete on disk (or not written at all), so stopping
    here leaves nothing partial. Outside :func:`handle_stop_signals` (the library called from Python) it
    never raises.

    Args:
        where: what is finished at this point, for the one line printed.
    """
    if stop_requested():
        raise Stopped(where, _handling.signal_name)
