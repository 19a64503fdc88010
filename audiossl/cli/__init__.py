"""``audiossl <command>``: thin handlers that parse, build a config, call the library.

Exit codes: 0 done; 1 the run failed (``audiossl train``: non-finite losses,
unreadable data mid-run; any command: the disk filled up); 2 a user error,
found before any work (or a path that cannot be written: read-only, a file
where a folder goes; a bad option or setting is one line, without argparse's
usage block); 3 and 4 ``audiossl train`` stopped early with a checkpoint, by
its time budget or by a signal (see :mod:`audiossl.utils.stopping`); 4 also
``extract``, ``probe`` and ``units fit`` stopped by a signal where nothing is
partial; 130 interrupted (Ctrl-C twice in those, once elsewhere).

One module per command, each adding its parser (``add_parser``) and handling it (``cmd_*``):
:mod:`~audiossl.cli.prepare`, :mod:`~audiossl.cli.train`, :mod:`~audiossl.cli.bench`,
:mod:`~audiossl.cli.extract`, :mod:`~audiossl.cli.probe` (and its tasks ``probe_abx``, ``probe_ctc``,
``probe_units``), :mod:`~audiossl.cli.units`, :mod:`~audiossl.cli.convert`, :mod:`~audiossl.cli.report`;
:mod:`~audiossl.cli.options` holds what several of them share.
"""

from __future__ import annotations

import sys

from audiossl.utils.allocator import reexec_under_tcmalloc


def main(argv: list[str] | None = None) -> int:
    """``audiossl ARGV``; ``argv`` None: the program's own arguments.

    Run as a program (not called from Python), the process is ours to replace:
    a heavy command re-executes under tcmalloc here, before anything imports
    torch, which would otherwise load twice (a second a command).
    """
    if argv is None:
        args = sys.argv[1:]
        reexec_under_tcmalloc(next((a for a in args if not a.startswith("-")), None), args)
    from audiossl.cli.app import run

    return run(argv)
