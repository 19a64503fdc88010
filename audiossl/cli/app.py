"""The parser of every command and how a command's errors become one line and an exit code.

``audiossl.cli.main`` imports this module only after deciding whether to re-execute under
tcmalloc: its imports (the error classes' modules) load torch.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import sys

from audiossl.cli import (
    bench,
    convert,
    extract,
    prepare,
    probe,
    probe_abx,
    probe_ctc,
    probe_units,
    report,
    train,
    units,
)
from audiossl.errors import UserError
from audiossl.utils.atomic import DiskFullError
from audiossl.utils.stopping import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_SIGNAL, EXIT_USAGE, Stopped, handle_stop_signals

# Errors that are the user's to fix: one line, no traceback. Every module's own derives from UserError
# (audiossl/errors.py); a missing file named on the command line is the user's too.
USER_ERRORS = (UserError, FileNotFoundError)
# OSErrors that say a path cannot be used as given (--out or --exp-dir read-only, a file where a folder goes):
# the user's to fix, one line naming the path (exit 2).
UNUSABLE_PATHS = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                  errno.EPERM: "operation not permitted", errno.EEXIST: "it exists and is not a folder",
                  errno.ENOTDIR: "a part of the path is a file, not a folder", errno.EISDIR: "it is a folder"}

# What a command stopped by a signal leaves, and how to go on (``train`` says it itself).
AFTER_STOP = {
    "extract": "the arrays written are kept and the same command resumes from them",
    "probe": "no result is written; the same command runs the probe again, reusing the features extracted so far",
    "units": "no unit model is written; the same command fits again",
}


class Parser(argparse.ArgumentParser):
    """argparse with a bad option as one line naming it (exit 2), as every other user error, not a usage block."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="audiossl", description="Self-supervised speech representation learning.")
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


def run(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (None: ``sys.argv[1:]``), run the command, turn its errors into exit codes."""
    args = _parse(argv)
    # Training handles its signals itself; these commands stop at their loops' stop points.
    stoppable = args.command in ("extract", "probe") or (args.command == "units" and args.action == "fit")
    try:
        with handle_stop_signals() if stoppable else contextlib.nullcontext():
            return args.func(args)
    except Stopped as e:
        print(f"{e}; {AFTER_STOP[args.command]} (exit {EXIT_SIGNAL})")
        return EXIT_SIGNAL
    except USER_ERRORS as e:
        print(f"audiossl {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except DiskFullError as e:
        print(f"audiossl {args.command}: error: {e.strerror}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as e:
        if e.errno in UNUSABLE_PATHS and e.filename:
            print(f"audiossl {args.command}: error: cannot use {e.filename}: {UNUSABLE_PATHS[e.errno]}",
                  file=sys.stderr)
            return EXIT_USAGE
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {e.filename}" if e.filename else ""
        print(f"audiossl {args.command}: error: {e.strerror.lower()}{where}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"audiossl {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
