"""``audiossl probe``: the command, its linear tasks (phone, speaker), and what every probe task shares.

The other tasks have a module each, which adds its parser to the ``probe`` command's tasks:
:mod:`~audiossl.cli.probe_abx`, :mod:`~audiossl.cli.probe_ctc` and :mod:`~audiossl.cli.probe_units`.
"""

from __future__ import annotations

import argparse
import json

from audiossl.cli.options import add_settings_args, count, device_from, layers_from, name_list, settings_from
from audiossl.config import ConfigError, settings_help
from audiossl.models.baselines import BASELINES


def probe_options(source_required: bool) -> argparse.ArgumentParser:
    """The options every probe shares: the source (required unless a task does without), floors, device, output."""
    shared = argparse.ArgumentParser(add_help=False)
    source = shared.add_mutually_exclusive_group(required=source_required)
    source.add_argument("--features", help="an audiossl extract output folder")
    source.add_argument("--ckpt", "--checkpoint", dest="ckpt",
                        help="a checkpoint, a Hugging Face model folder or a fairseq .pt; its features are extracted "
                        "from --data first (cached in OUT/features)")
    source.add_argument("--baseline", choices=sorted(BASELINES),
                        help="probe a hand-made feature of --data (cached in OUT/features)")
    shared.add_argument("--data", help="corpus folder or manifest: required with --ckpt and --baseline; with "
                        "--features, where the floors' audio is read (default: the audio the features came from)")
    shared.add_argument("--layer", "--layers", dest="layers", type=name_list, default=None,
                        help="with --features or --ckpt, comma-separated layers to probe (default: context; a Hugging "
                        "Face or fairseq model's encoder, layer_0 .. layer_N)")
    shared.add_argument("--baselines", type=name_list, default=None,
                        help="hand-made floors probed beside the main source (default: mfcc,logmel; with "
                        "--baseline: none; 'none' for none)")
    shared.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    shared.add_argument("--num-workers", type=count, default=2, help="audio decoding processes for extraction")
    shared.add_argument("--out", help="output folder: metrics.json, report.txt, tb/ (TensorBoard curves) and, "
                        "with --ckpt or --baseline, the extracted features")
    shared.add_argument("--no-progress", action="store_true", help="no progress bars")
    return shared


def trained_probe_options(what: str) -> argparse.ArgumentParser:
    """What the probes that train a head share: the two split files and the head's settings."""
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--train-split", help="training utterance ids (CPC's train_split.txt)")
    shared.add_argument("--test-split", help="test utterance ids (CPC's test_split.txt); without both splits "
                        "every fifth utterance of each speaker is held out")
    add_settings_args(shared, what)
    return shared


def floors(args: argparse.Namespace) -> list[str]:
    """The floors probed beside the source: a hand-made feature probed as the source is its own floor."""
    if (args.ckpt or args.baseline) and not args.data:
        raise ConfigError("--data (a corpus folder or manifest) is required with --ckpt and --baseline")
    return args.baselines if args.baselines is not None else [] if args.baseline else ["mfcc", "logmel"]


def run_options(args: argparse.Namespace, baselines: list[str] | None = None):
    """The :class:`~audiossl.probes.runner.RunOptions` of the shared flags, built once per command: the floors
    (``baselines``, else :func:`floors`), their audio (``--data`` with ``--features``; else the files the features
    are extracted from), ``--device``, ``--num-workers`` and the progress bars."""
    from audiossl.probes.runner import RunOptions

    baselines = floors(args) if baselines is None else baselines
    return RunOptions(baselines, args.data if args.features else None, device_from(args.device), args.num_workers,
                      not args.no_progress)


def show(report: dict, table: str, out: str | None) -> int:
    """Print a probe's table and, with ``--out``, write its outputs and say where they are."""
    from audiossl.probes.runner import write_outputs

    print(table)
    if out:
        write_outputs(report, table, out)
        curves = any("history" in row for row in report["results"])
        print(f"metrics: {out}/metrics.json; table: {out}/report.txt" + (f"; curves: {out}/tb" if curves else ""))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Add ``probe`` with its phone and speaker tasks; returns the tasks, for the other tasks' modules to add to."""
    p = sub.add_parser("probe", help="linear phone or speaker, ABX, CTC and discrete-unit probes on frozen "
                       "features, beside MFCC/log-mel")
    tasks = p.add_subparsers(dest="task", required=True)
    from audiossl.probes.classify import DEFAULT_SETTINGS
    from audiossl.probes.linear import ProbeSettings

    shared = probe_options(source_required=True)
    fit = trained_probe_options("linear probe")
    t = tasks.add_parser("phone", parents=[shared, fit], help="phone class per 10 ms frame",
                         epilog="settings (audiossl.probes.linear.ProbeSettings): "
                         + settings_help(ProbeSettings, DEFAULT_SETTINGS["phone"]))
    t.add_argument("--alignments", required=True, help="converted_aligned_phones.txt")
    t.add_argument("--phones", help="phone inventory (phones.txt); fixes the number of classes")
    t = tasks.add_parser("speaker", parents=[shared, fit], help="speaker per utterance (mean-pooled) or per window",
                         epilog="settings (audiossl.probes.linear.ProbeSettings): "
                         + settings_help(ProbeSettings, DEFAULT_SETTINGS["speaker"]))
    t.add_argument("--window-frames", type=count, default=0,
                   help="frames per example (default 0: whole utterances; CPC_audio uses 128)")
    t.add_argument("--pool", choices=["mean", "last"], default="mean", help="pool a window by its mean or last frame")
    p.set_defaults(func=cmd_probe)
    return tasks


def cmd_probe(args: argparse.Namespace) -> int:
    import dataclasses

    from audiossl.probes.classify import DEFAULT_SETTINGS, format_report, phone_probe, speaker_probe
    from audiossl.probes.linear import ProbeSettings
    from audiossl.probes.runner import probe_features

    settings = settings_from(args, ProbeSettings, DEFAULT_SETTINGS[args.task], "linear probe setting")
    options = run_options(args)
    print(f"# {args.task} probe on {args.features or args.ckpt or 'baseline ' + args.baseline}: floors "
          f"{', '.join(options.baselines) or 'none'}; {json.dumps(dataclasses.asdict(settings))}")
    with probe_features(args.out, args.features, args.ckpt, args.baseline, layers_from(args), args.data,
                        [s for s in (args.train_split, args.test_split) if s], options) as (features_dir, layers):
        common = {"layers": layers, "train_split": args.train_split, "test_split": args.test_split,
                  "settings": settings, "options": options}
        if args.task == "phone":
            report = phone_probe(features_dir, args.alignments, phones=args.phones, **common)
        else:
            report = speaker_probe(features_dir, window_frames=args.window_frames, pool=args.pool, **common)
    return show(report, format_report(report), args.out)
