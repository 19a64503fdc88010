"""Reading settings text strictly: flat YAML files, ``key=value`` items and the typed values they hold.

:mod:`audiossl.config` builds the training config, and any settings dataclass (a probe's), from what this
module reads. Everything refused here is refused before any work starts, in one line naming the file or
the key: a file that is not UTF-8 or not YAML, a nested mapping, a key given twice (in a file, or twice on
the command line), a value of the wrong type, and a number that is not finite (``nan``, ``inf``, ``1e400``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from audiossl.errors import UserError

__all__ = ["ConfigError", "check_choices", "choices_of", "coerce", "load_config_file", "parse_overrides"]


class ConfigError(UserError, ValueError):
    """A configuration that cannot be used; the message is one line."""


def coerce(key: str, value: Any, typ: Any) -> Any:
    """Convert value (from YAML or a command-line string) to typ, or raise."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(typ):  # X | None
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            return None
        (typ,) = [t for t in typing.get_args(typ) if t is not type(None)]
        origin = typing.get_origin(typ)
    if origin is typing.Literal:  # its values are checked with the section's other values (check_choices)
        typ = type(typing.get_args(typ)[0])
    if origin is tuple:  # tuple[X, ...]: written as a list
        return tuple(coerce(key, value, list[typing.get_args(typ)[0]]))
    if origin is list:
        (item_type,) = typing.get_args(typ)
        if isinstance(value, str):  # "2,1", "2 1", "[2,1]", "[2, 1]"; "[]" is the empty list
            text = value.strip()
            if text.startswith("[") and text.endswith("]"):
                text = text[1:-1]
            value = text.replace(",", " ").split()
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
        return [coerce(key, v, item_type) for v in value]
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key {key!r}: expected true or false, got {value!r}")
    if typ in (int, float):
        # YAML gives ints for floats written without a point; a float is never an int; bools are neither.
        accepted = (int,) if typ is int else (int, float)
        number = None
        if (isinstance(value, accepted) and not isinstance(value, bool)) or isinstance(value, str):
            try:
                number = typ(value)
            except (ValueError, OverflowError):  # not a number; an integer too large for a float
                pass
        # nan and inf (also 1e400, which overflows to inf) pass every range check written as a comparison:
        # refused here, where every number of a config file, an override or a probe setting passes.
        if number is not None and math.isfinite(number):
            return number
        expected = "an integer" if typ is int else "a finite number"
        raise ConfigError(f"config key {key!r}: expected {expected}, got {value!r}")
    if typ is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key {key!r}: expected a string, got {value!r}")
    raise AssertionError(f"unsupported config type {typ}")


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``["lr=1e-3", "context=lstm"]`` -> dict; malformed items and a key given twice are errors.

    A key given twice would silently take its last value, so ``lr=0.1 ... lr=0.3`` is refused (an override
    still replaces the config file's value: that is what it is for).
    """
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value")
        key = key.strip().replace("-", "_")
        if key in out:
            raise ConfigError(f"override {key!r} is given twice ({key}={out[key]} and {item}); keep one")
        out[key] = value.strip()
    return out


class _DuplicateKey(Exception):
    """A mapping key given twice in a YAML file (``line`` and ``first`` from 1)."""

    def __init__(self, key: Any, first: int, line: int):
        super().__init__(key, first, line)
        self.key, self.first, self.line = key, first, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last one silently,
    so ``lr: 0.1`` followed further down by ``lr: 0.2`` would train with 0.2 and nobody would see it)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep) if isinstance(key_node, yaml.ScalarNode) else None
            if key is None or key == "<<":
                continue
            if key in first_line:
                raise _DuplicateKey(key, first_line[key], key_node.start_mark.line + 1)
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A flat YAML file's ``{key: value}``; unreadable, non-UTF-8, malformed, nested files and keys given twice
    are ConfigErrors naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {e.object[e.start]:#04x} at offset {e.start}); "
                          "config files are YAML text") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except _DuplicateKey as e:
        raise ConfigError(f"{path}: key {e.key!r} is given twice (lines {e.first} and {e.line}); keep one") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a flat mapping of key: value")
    for key, value in data.items():
        if isinstance(value, dict):
            raise ConfigError(f"{path}: key {key!r} holds a mapping; config files are flat")
    return data


MAX_SEED = 2**32 - 1


def choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    """Refuse a value of ``key`` that is not one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"config key {key!r}: {value!r} is not one of {', '.join(choices)}")


@functools.cache
def _literal_fields(cls: type) -> dict[str, tuple[str, ...]]:
    """The fields of the dataclass ``cls`` typed ``Literal[...]``, with the values each allows."""
    hints = typing.get_type_hints(cls)
    return {f.name: typing.get_args(hints[f.name]) for f in dataclasses.fields(cls)
            if typing.get_origin(hints[f.name]) is typing.Literal}


def choices_of(cls: type, name: str) -> tuple[str, ...]:
    """The values the ``Literal[...]`` field ``name`` of the dataclass ``cls`` allows: the type is the one
    place a setting's choices are written."""
    return _literal_fields(cls)[name]


def check_choices(instance: Any, owner: type | None = None) -> None:
    """Refuse, as :func:`choice` does, the first field typed ``Literal[...]`` whose value is not one of its values.

    Args:
        instance: a dataclass instance (a config section).
        owner: the dataclass whose ``Literal`` fields are checked on ``instance`` (an objective's ``Settings``
            on the joined objective section); None: ``instance``'s own class.
    """
    for name, allowed in _literal_fields(owner or type(instance)).items():
        choice(name, getattr(instance, name), allowed)


def positive(values: dict[str, float]) -> None:
    """Refuse any of ``{key: value}`` that is not positive."""
    for key, value in values.items():
        if value <= 0:
            raise ConfigError(f"config key {key!r} must be positive, got {value}")


def non_negative(values: dict[str, float]) -> None:
    """Refuse any of ``{key: value}`` that is negative."""
    for key, value in values.items():
        if value < 0:
            raise ConfigError(f"config key {key!r} must not be negative, got {value}")


def check_seed(key: str, seed: int) -> None:
    """Refuse a seed numpy or torch would refuse mid-run (after files were written): ``[0, MAX_SEED]``."""
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"config key {key!r} must be a seed in [0, {MAX_SEED}], got {seed}")
