"""``audiossl <command>``: thin handlers that parse, build a config, call the library.

Exit codes: 0 done; 1 the run failed (``audiossl train``: non-finite losses,
unreadable data mid-run; any command: the disk filled up); 2 a user error,
found before any work; 3 and 4 ``audiossl train`` stopped early with a
checkpoint, by its time budget or by a signal (see :mod:`audiossl.stopping`);
130 interrupted (Ctrl-C twice during training, once elsewhere).

One module per command, each adding its parser (``add_parser``) and handling it (``cmd_*``):
:mod:`~audiossl.cli.prepare`, :mod:`~audiossl.cli.train`, :mod:`~audiossl.cli.bench`,
:mod:`~audiossl.cli.extract`, :mod:`~audiossl.cli.probe` (and its tasks ``probe_abx``, ``probe_ctc``,
``probe_units``), :mod:`~audiossl.cli.units`, :mod:`~audiossl.cli.convert`, :mod:`~audiossl.cli.report`;
:mod:`~audiossl.cli.options` holds what several of them share.
"""

from __future__ import annotations

import argparse
import errno
import sys

from audiossl.allocator import reexec_under_tcmalloc
from audiossl.atomic import DiskFullError
from audiossl.audio import AudioError
from audiossl.checkpoint import CheckpointError
from audiossl.cli import (bench, convert, extract, prepare, probe, probe_abx, probe_ctc, probe_units, report, train,
                          units)
from audiossl.config import ConfigError
from audiossl.data.corpus import CorpusError
from audiossl.discrete import UnitsError
from audiossl.extract import FeatureError
from audiossl.lock import FolderLocked
from audiossl.probes import ProbeError
from audiossl.resume import ResumeError
from audiossl.stopping import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE

# Errors that are the user's to fix: one line, no traceback.
USER_ERRORS = (ConfigError, CorpusError, AudioError, CheckpointError, FeatureError, ProbeError, FileNotFoundError,
               ResumeError, FolderLocked, UnitsError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audiossl", description="Self-supervised speech representation learning.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (prepare, train, bench, extract):
        command.add_parser(sub)
    tasks = probe.add_parser(sub)  # probe phone and probe speaker
    for task in (probe_abx, probe_ctc, probe_units):
        task.add_parser(tasks)
    for command in (units, convert, report):
        command.add_parser(sub)
    return parser


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``, taking ``key=value`` overrides wherever they stand among the options."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    overrides = [item for item in rest if "=" in item and not item.startswith("-")]
    unknown = [item for item in rest if item not in overrides]
    if overrides and not hasattr(args, "overrides"):
        unknown = rest
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if overrides:
        args.overrides = args.overrides + overrides
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if argv is None:  # run as a program, not called from Python: the process is ours to replace
        reexec_under_tcmalloc(args.command, sys.argv[1:])
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"audiossl {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except DiskFullError as e:
        print(f"audiossl {args.command}: error: {e.strerror}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {e.filename}" if e.filename else ""
        print(f"audiossl {args.command}: error: {e.strerror.lower()}{where}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"audiossl {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
