"""Run the heavy commands under tcmalloc when the machine has it.

glibc's malloc serves every block above 32 MB (the most its mmap threshold
can be set to) with a fresh ``mmap``, and returns it on free. A CPC step's
encoder activations are such blocks (8 x 4096 frames x 256 channels of
float32 is 33.5 MB), so each one is page-faulted in again every step: about
100,000 minor faults a step, most of the time of the memory-bound layers
(the first conv's norm and ReLU). tcmalloc keeps freed memory for reuse.
PyTorch's own CPU launcher (``torch.backends.xeon.run_cpu``) preloads it for
the same reason; docs/benchmarks.md has the step time with and without.

``train``, ``bench``, ``extract`` and ``probe`` re-execute themselves once
with tcmalloc in ``LD_PRELOAD`` when the library is installed (Debian:
``libtcmalloc-minimal4``; ``tools/setup.sh`` installs it as root) and it is
not loaded yet. ``AUDIOSSL_ALLOCATOR=system`` keeps glibc's malloc.
"""

from __future__ import annotations

import glob
import os
import sys

HEAVY_COMMANDS = ("train", "bench", "extract", "probe")
SEARCH = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
          "/usr/lib64/libtcmalloc_minimal.so.4", "/usr/lib/libtcmalloc_minimal.so.4")


def find_tcmalloc() -> str | None:
    for path in SEARCH:
        if os.path.exists(path):
            return path
    found = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libtcmalloc*.so*")))  # a conda environment's
    return found[0] if found else None


def loaded() -> bool:
    """Whether this process runs under tcmalloc (preloaded or linked)."""
    try:
        with open("/proc/self/maps") as maps:
            return "libtcmalloc" in maps.read()
    except OSError:
        return "tcmalloc" in os.environ.get("LD_PRELOAD", "")


def reexec_under_tcmalloc(command: str | None, argv: list[str]) -> None:
    """Replace this process by ``python -m audiossl.cli ARGV`` with tcmalloc preloaded, when it helps.

    Returns (doing nothing) for light commands, with ``AUDIOSSL_ALLOCATOR=system``,
    without the library, when it is loaded already, or when a re-execution
    already happened (``AUDIOSSL_REEXEC`` is set: the preload failed).
    """
    if command not in HEAVY_COMMANDS or os.environ.get("AUDIOSSL_ALLOCATOR", "tcmalloc") == "system":
        return
    if os.environ.get("AUDIOSSL_REEXEC") or loaded():
        return
    library = find_tcmalloc()
    if library is None:
        return
    env = dict(os.environ, AUDIOSSL_REEXEC="1",
               LD_PRELOAD=" ".join(p for p in (library, os.environ.get("LD_PRELOAD", "")) if p),
               # tcmalloc warns on stderr for every block above 1 GB; a large batch's scores are such blocks.
               TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD=os.environ.get("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD",
                                                                     str(1 << 40)))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "audiossl.cli", *argv], env)
