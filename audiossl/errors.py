"""The one base of every error that is the user's to fix.

A bad setting, a corpus or audio file that cannot be used, a checkpoint or
feature folder that is not what it should be, a folder another run holds:
each module raises its own subclass (``ConfigError``, ``CorpusError``, ...),
whose message names the file or setting and the problem, and the CLI prints
any :class:`UserError` as one line and exits 2. Each subclass also keeps the
built-in type it always had (``ValueError``, ``RuntimeError``), so code that
caught those still does.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: the message says what and where."""
