"""Every numeric setting of ``train``, ``extract``, each probe and ``units fit``, fed the values that slip past
range checks written as comparisons: nan, inf, -inf, -1, 0, 1e400 (inf once parsed) and a non-number.

Each value is refused before any work, with exit 2, one line on stderr naming the setting, nothing on stdout
and nothing written or scanned; or it is valid (listed in ``VALID``: 0 where it means "none" or "off", -1 for
the speaker folder level) and the validation the command runs first accepts it. The settings are found, not
listed: every numeric field of the config sections and of the probes' settings dataclasses, and every option
whose argparse type is a number, so a new setting is fuzzed from the day it is added. Validation fails before
any model is built or data read, so the whole file runs in a few seconds.
"""

from __future__ import annotations

import argparse
import typing
from pathlib import Path

import pytest

from audiossl.cli import main
from audiossl.cli.app import build_parser
from audiossl.cli.options import count, non_negative_float, positive_float, positive_int, seed
from audiossl.config import ConfigError, build_config, build_settings, fields_by_key
from audiossl.objectives import OBJECTIVES
from audiossl.probes.abx.item_files import ItemABXSettings
from audiossl.probes.abx.labels import ABXSettings
from audiossl.probes.ctc.probe import CTCSettings
from audiossl.probes.linear import ProbeSettings

VALUES = ["nan", "inf", "-inf", "-1", "0", "1e400", "many"]
NUMBERS = (int, float)
NUMBER_OPTIONS = (int, float, positive_int, count, seed, positive_float, non_negative_float)

# (setting, value) pairs that are valid: a documented 0 ("none", "off", "all") or -1 (the parent folder).
VALID = {
    "train": {("speaker_level", "-1"), ("speaker_level", "0"), ("num_workers", "0"), ("context_dropout", "0"),
              ("weight_decay", "0"), ("warmup_steps", "0"), ("clip_grad", "0"), ("seed", "0"),
              ("max_minutes", "0"), ("mpc_zero_prob", "0"), ("mpc_random_prob", "0"),
              ("mpc_freq_mask_bins", "0"), ("npc_vq_groups", "0"), ("augment_pitch_semitones", "0"),
              ("augment_reverb_prob", "0"), ("augment_eq_prob", "0"), ("augment_eq_gain_db", "0"),
              ("augment_band_reject_prob", "0"), ("w2v2_diversity_weight", "0"), ("w2v2_feature_penalty", "0"),
              ("w2v2_feature_grad_mult", "0"), ("hubert_unmasked_weight", "0"), ("hubert_feature_penalty", "0"),
              ("hubert_feature_grad_mult", "0")},
    ProbeSettings: {("weight_decay", "0"), ("patience", "0"), ("heldout_fraction", "0"), ("seed", "0"),
                    ("hidden", "0")},
    CTCSettings: {("weight_decay", "0"), ("patience", "0"), ("heldout_fraction", "0"), ("seed", "0")},
    ABXSettings: {("max_triples_per_item", "0"), ("context_frames", "0"), ("seed", "0")},
    ItemABXSettings: {("seed", "0")},
    "options": {("--chunk-seconds", "0"), ("--speaker-level", "-1"), ("--speaker-level", "0"),
                ("--num-workers", "0"), ("--window-frames", "0"), ("--max-frames", "0"), ("--tol", "0"),
                ("--init-size", "0"), ("--seed", "0")},
}

# The command (and the options it needs to get as far as its checks) of each probe task, and its settings.
PROBES = {
    "phone": (["--alignments", "{tmp}/a.txt"], ProbeSettings),
    "speaker": ([], ProbeSettings),
    "abx": (["--alignments", "{tmp}/a.txt"], ABXSettings),
    "abx --item-file": (["--item-file", "{tmp}/x.item"], ItemABXSettings),
    "ctc-phone": (["--alignments", "{tmp}/a.txt"], CTCSettings),
    "ctc-subword": ([], CTCSettings),
    "units": (["--units", "{tmp}/u", "--features", "{tmp}/f", "--alignments", "{tmp}/a.txt"], ABXSettings),
}


def is_number(typ) -> bool:
    """int, float, an optional one, or a list or tuple of them."""
    args = [t for t in typing.get_args(typ) if t is not type(None) and t is not Ellipsis]
    return typ in NUMBERS or any(is_number(t) for t in args)


def numeric_fields(cls: type) -> list[str]:
    hints = typing.get_type_hints(cls)
    return [name for name in hints if is_number(hints[name]) and name in cls.__dataclass_fields__]


def command_args(command: str, tmp: Path, corpus: Path) -> list[str]:
    """A command line that would run, but for the value under test."""
    source = ["--baseline", "mfcc", "--data", str(corpus), "--out", str(tmp / "out"), "--no-progress"]
    if command == "train":
        return ["train", "--data", str(corpus), "--exp-dir", str(tmp / "exp"), "--no-progress"]
    if command == "extract":
        return ["extract", *source]
    if command == "units fit":
        return ["units", "fit", "--features", str(tmp / "f"), "--out", str(tmp / "out")]
    task = command.removeprefix("probe ")
    extra, _ = PROBES[task]
    if task == "units":
        source = ["--out", str(tmp / "out")]
    return ["probe", task.split()[0], *source, *(a.format(tmp=tmp) for a in extra)]


def subparser(path: list[str]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = sub.choices[name]
    return parser


def number_options(path: list[str]) -> list[str]:
    return [a.option_strings[0] for a in subparser(path)._actions
            if a.option_strings and a.type in NUMBER_OPTIONS]


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def assert_refused(argv: list[str], what: str, tmp: Path, capsys) -> None:
    before = tree(tmp)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse: a bad option
        code = e.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in captured.err, (argv[-1], code, captured.err)
    assert what in lines[0] and lines[0].startswith("audiossl "), (argv[-1], lines)
    assert captured.out == "" and tree(tmp) == before, (argv[-1], captured.out)  # nothing done, nothing written


CONFIG_KEYS = [key for key, (_, typ) in fields_by_key().items() if is_number(typ)]
# An objective's settings are checked when it trains: each is fuzzed on a run of its owner (its paper preset).
OWNER_PRESETS = {name: {} if name == "cpc" else {"preset": f"{name}_paper"} for name in OBJECTIVES}


def owner_overrides(key: str) -> dict[str, str]:
    owners = [name for name, objective in OBJECTIVES.items() if key in objective.Settings.__dataclass_fields__]
    return OWNER_PRESETS[owners[0]] if owners else {}


@pytest.mark.parametrize("key", CONFIG_KEYS)
def test_train_settings(key, tiny_corpus, tmp_path, capsys):
    owner = owner_overrides(key)
    for value in VALUES:
        if (key, value) in VALID["train"]:
            build_config(overrides={**owner, key: value})  # what train checks first, before anything
        else:
            argv = command_args("train", tmp_path, tiny_corpus) + [f"{k}={v}" for k, v in owner.items()]
            assert_refused(argv + [f"{key}={value}"], key, tmp_path, capsys)


def test_another_objectives_settings_are_not_read():
    """A CPC run does not check (nor use) MPC's settings; an MPC run refuses the same value."""
    assert build_config(overrides={"mpc_span": 0}).objective.mpc_span == 0
    with pytest.raises(ConfigError, match="mpc_span"):
        build_config(overrides={"preset": "mpc_paper", "mpc_span": 0})


PROBE_SETTINGS = [(task, key) for task, (_, cls) in PROBES.items() for key in numeric_fields(cls)]


@pytest.mark.parametrize("task, key", PROBE_SETTINGS, ids=[f"{t}-{k}" for t, k in PROBE_SETTINGS])
def test_probe_settings(task, key, tiny_corpus, tmp_path, capsys):
    cls = PROBES[task][1]
    for value in VALUES:
        if (key, value) in VALID[cls]:
            build_settings(cls, overrides={key: value})  # what the probe checks first, before anything
        else:
            argv = command_args(f"probe {task}", tmp_path, tiny_corpus) + [f"{key}={value}"]
            assert_refused(argv, key, tmp_path, capsys)


COMMANDS = {"extract": ["extract"], "units fit": ["units", "fit"],
            **{f"probe {task}": ["probe", task.split()[0]] for task in PROBES}}
OPTIONS = [(command, option) for command, path in COMMANDS.items() for option in number_options(path)]


@pytest.mark.parametrize("command, option", OPTIONS, ids=[f"{c}-{o}" for c, o in OPTIONS])
def test_command_options(command, option, tiny_corpus, tmp_path, capsys):
    argv = command_args(command, tmp_path, tiny_corpus)
    for value in VALUES:
        if (option, value) in VALID["options"]:
            subparser([]).parse_args(argv + [option, value])  # the option's own check: parsing
        else:
            assert_refused(argv + [option, value], option, tmp_path, capsys)


def test_every_command_has_its_numbers_fuzzed():
    """The enumeration finds what it should, so the tests above cannot pass by fuzzing nothing."""
    assert {"lr", "seed", "cpc_temperature", "mpc_mask_proportion", "encoder_kernels"} <= set(CONFIG_KEYS)
    assert set(number_options(["extract"])) == {"--batch-size", "--batch-seconds", "--chunk-seconds",
                                                "--sample-rate", "--speaker-level", "--num-workers"}
    assert "--window-frames" in number_options(["probe", "speaker"])
    assert "--vocab-size" in number_options(["probe", "ctc-subword"])
    assert set(numeric_fields(CTCSettings)) >= {"lr", "epochs", "heldout_fraction", "seed"}
