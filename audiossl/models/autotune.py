"""Choosing among equivalent implementations by timing them where they run.

The conv formulations of :func:`audiossl.models.encoders.strided_conv` were
measured on the CPU, where the rule that picks one is fixed in code. On an
accelerator no figure exists yet, and the fastest depends on the card, the
library versions and the shapes, so the choice is made the way
``torch.backends.cudnn.benchmark`` makes cuDNN's: the first call with a new
key times every candidate and the winner is kept for the rest of the process.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Hashable

import torch

# key -> the name of the fastest candidate, filled at first use.
CHOICES: dict[Hashable, str] = {}


def fastest(candidates: dict[str, Callable[[], object]], repeats: int = 3, warmup: int = 2,
            sync: Callable[[], None] | None = None) -> str:
    """The name of the candidate whose best of ``repeats`` timed calls is shortest.

    Each candidate is called ``warmup`` times untimed first (allocator, kernel
    selection, lazy initialization), then ``repeats`` times between calls to
    ``sync``, which must wait for the device's queued work: an asynchronous
    device's clock would otherwise measure only the launches. The best time,
    not the mean, is compared, as the one least disturbed by other work.
    """
    if not candidates:
        raise ValueError("no candidates to choose from")
    sync = sync or (lambda: None)
    best: dict[str, float] = {}
    for name, run in candidates.items():
        for _ in range(warmup):
            run()
        times = []
        for _ in range(max(1, repeats)):
            sync()
            start = time.perf_counter()
            run()
            sync()
            times.append(time.perf_counter() - start)
        best[name] = min(times)
    return min(best, key=best.__getitem__)


def choose(key: Hashable, candidates: dict[str, Callable[[], object]], device: torch.device) -> str:
    """The cached choice for ``key``, measured by :func:`fastest` on ``device`` the first time the key is seen."""
    if key not in CHOICES:
        CHOICES[key] = fastest(candidates, sync=functools.partial(synchronize, device))
    return CHOICES[key]


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a no-op where the device has no queue: the CPU, meta)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    else:
        getattr(getattr(torch, device.type, None), "synchronize", lambda: None)()
