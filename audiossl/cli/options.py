"""What several commands share: the config and its ``key=value`` overrides, the device, the layers to read,
comma-separated names, and the numbers options take."""

from __future__ import annotations

import argparse
import math

import yaml

from audiossl.config import MAX_SEED, ConfigError, build_config, build_settings, parse_overrides


def add_config_args(p: argparse.ArgumentParser) -> None:
    """``--config`` and the ``key=value`` overrides, read by :func:`config_from`."""
    p.add_argument("--config", help="flat YAML config file (recipes/conf/*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. lr=1e-3")


def add_settings_args(p: argparse.ArgumentParser, what: str) -> None:
    """``--config`` and ``key=value`` items for a probe's settings (:func:`settings_from`), as ``train`` has."""
    p.add_argument("--config", help=f"flat YAML file of {what} settings (key: value)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help=f"{what} settings, over --config's")


def settings_from(args: argparse.Namespace, cls: type, base=None, what: str = "setting"):
    """The settings dataclass ``cls`` from ``--config`` and the ``key=value`` items."""
    return build_settings(cls, args.config, parse_overrides(args.overrides), base, what)


def config_from(args: argparse.Namespace):
    """The config of ``--config`` with the overrides applied."""
    return build_config(args.config, parse_overrides(args.overrides))


def print_config(cfg) -> None:
    """Print the resolved config as flat YAML, as a run starts."""
    print("# resolved config")
    print(yaml.safe_dump(cfg.flat(), sort_keys=False).rstrip())


def device_from(spec: str):
    """``--device`` (auto | cpu | cuda | cuda:N) as a torch device; CUDA where there is none is a user error."""
    from audiossl.runtime import choose_device

    return choose_device(spec)  # a DeviceError, a UserError, when it cannot


def layers_from(args: argparse.Namespace) -> list[str]:
    """``--layer`` (default: context); refused with ``--baseline``, whose one layer is named after it."""
    if args.layers is None:
        return ["context"]
    if getattr(args, "baseline", None):
        raise ConfigError(f"--layer {','.join(args.layers)} is for --ckpt or --features; --baseline "
                          f"{args.baseline} has one layer, named {args.baseline}")
    return args.layers


def name_list(text: str) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]``; ``"none"`` -> ``[]``."""
    return [] if text == "none" else [name for name in text.split(",") if name]


def _number(text: str, kind: type, what: str, admits) -> int | float:
    """``text`` as a finite ``kind`` that ``admits``, or argparse's error naming the option (one line, exit 2).

    Checked while parsing, so a bad value stops a command before it reads or writes anything (``nan`` and
    ``inf``, which pass any comparison written as a range check, included).
    """
    try:
        value = kind(text)
    except (ValueError, OverflowError):
        value = None
    if value is None or not math.isfinite(value) or not admits(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, "a positive integer", lambda v: v > 0)


def count(text: str) -> int:
    """A number of things, 0 included (``--num-workers``, ``--window-frames``)."""
    return _number(text, int, "an integer of at least 0", lambda v: v >= 0)


def seed(text: str) -> int:
    return _number(text, int, f"a seed in [0, {MAX_SEED}]", lambda v: 0 <= v <= MAX_SEED)


def positive_float(text: str) -> float:
    return _number(text, float, "a positive number", lambda v: v > 0)


def non_negative_float(text: str) -> float:
    return _number(text, float, "a number of at least 0", lambda v: v >= 0)
