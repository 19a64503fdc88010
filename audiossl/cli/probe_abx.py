"""``audiossl probe abx``: ABX on items cut from frame alignments or read from an item file; ``--write-items``."""

from __future__ import annotations

import argparse
import contextlib
import json

from audiossl.cli.options import add_settings_args, layers_from, settings_from
from audiossl.cli.probe import probe_options, run_options, show
from audiossl.config import ConfigError, settings_help
from audiossl.probes import ProbeError


def add_parser(tasks: argparse._SubParsersAction) -> None:
    from audiossl.probes.abx.item_files import ItemABXSettings
    from audiossl.probes.abx.labels import ABXSettings

    t = tasks.add_parser("abx", parents=[probe_options(source_required=False)],
                         help="ABX phone discriminability within and across speakers, on items cut from frame "
                         "alignments or on a Libri-light/ZeroSpeech item file",
                         epilog=f"settings with --alignments (audiossl.probes.abx.labels.ABXSettings): "
                         f"{settings_help(ABXSettings)}; with --item-file (audiossl.probes.abx.item_files."
                         f"ItemABXSettings, zrc-abx2's defaults): {settings_help(ItemABXSettings)}")
    t.add_argument("--alignments", help="converted_aligned_phones.txt (items are cut from it)")
    t.add_argument("--item-file", help="a Libri-light/ZeroSpeech .item file: score its items as zrc-abx2 does "
                   "(instead of --alignments)")
    t.add_argument("--write-items", metavar="OUT.item", help="write --alignments' items (of --split) as an item "
                   "file with --phones' names, and stop")
    t.add_argument("--phones", help="phone inventory (phones.txt); names the silence class SIL (default: class 0)")
    t.add_argument("--split", help="utterance ids to draw items from (CPC's test_split.txt; default: all)")
    add_settings_args(t, "ABX")
    t.set_defaults(func=cmd_probe_abx)


def cmd_probe_abx(args: argparse.Namespace) -> int:
    import dataclasses

    from audiossl.probes.abx.labels import ABXSettings, abx_probe, format_abx_report
    from audiossl.probes.runner import probe_features

    if args.write_items:
        return cmd_write_items(args)
    if not (args.features or args.ckpt or args.baseline):
        raise ConfigError("probe abx needs one of --features, --ckpt and --baseline (or --write-items)")
    if args.item_file:
        return cmd_probe_items(args)
    if not args.alignments:
        raise ConfigError("probe abx needs --alignments (items cut from frame labels) or --item-file")
    settings = settings_from(args, ABXSettings, what="ABX setting")
    options = run_options(args)
    print(f"# abx on {args.features or args.ckpt or 'baseline ' + args.baseline}: floors "
          f"{', '.join(options.baselines) or 'none'}; {json.dumps(dataclasses.asdict(settings))}")
    with probe_features(args.out, args.features, args.ckpt, args.baseline, layers_from(args), args.data,
                        [args.split] if args.split else [], options) as (features_dir, layers):
        report = abx_probe(features_dir, args.alignments, layers, split=args.split, phones=args.phones,
                           settings=settings, options=options)
    return show(report, format_abx_report(report), args.out)


def cmd_write_items(args: argparse.Namespace) -> int:
    from audiossl.data.alignments import load_alignments, load_phone_inventory, load_split
    from audiossl.probes.abx.items import items_from_alignments, speaker_from_id, write_item_file
    from audiossl.probes.ctc.targets import silence_class

    if not args.alignments or not args.phones:
        raise ConfigError("--write-items needs --alignments and --phones (the items' phone names)")
    if args.features or args.ckpt or args.baseline or args.item_file:
        raise ConfigError("--write-items only writes the item file: no --features, --ckpt, --baseline or --item-file")
    try:
        names = load_phone_inventory(args.phones)
        labels = load_alignments(args.alignments, len(names))
        ids = load_split(args.split) if args.split else list(labels)
    except ValueError as e:
        raise ProbeError(str(e)) from None
    unlabelled = [u for u in ids if u not in labels]
    if unlabelled:
        raise ProbeError(f"{len(unlabelled)} utterance(s) of {args.split} have no labels in {args.alignments}, "
                         f"e.g. {', '.join(unlabelled[:3])}")
    lines = items_from_alignments({u: labels[u] for u in ids}, names, {u: speaker_from_id(u) for u in ids},
                                  silence_class(args.phones))
    if not lines:
        raise ProbeError(f"no item in the {len(ids)} utterance(s): no non-silence phone has a neighbour on each side")
    write_item_file(args.write_items, lines)
    print(f"{args.write_items}: {len(lines):,} items from {len(ids)} utterances, "
          f"{len({line[6] for line in lines})} speakers")
    return 0


def cmd_probe_items(args: argparse.Namespace) -> int:
    import dataclasses
    import tempfile

    from audiossl.probes.abx.item_files import ItemABXSettings, format_item_report, item_file_probe
    from audiossl.probes.abx.items import ItemFileError, read_item_file
    from audiossl.probes.runner import probe_features

    if args.alignments or args.split:
        raise ConfigError("--item-file names the items: no --alignments or --split")
    settings = settings_from(args, ItemABXSettings, what="ABX item-file setting")
    options = run_options(args)
    print(f"# abx on {args.item_file} with {args.features or args.ckpt or 'baseline ' + args.baseline}: floors "
          f"{', '.join(options.baselines) or 'none'}; {json.dumps(dataclasses.asdict(settings))}")
    with contextlib.ExitStack() as stack:
        ids_file = None
        if args.ckpt or args.baseline:  # extract only the item file's utterances
            try:
                files = list(dict.fromkeys(read_item_file(args.item_file).file))
            except ItemFileError as e:
                raise ProbeError(str(e)) from None
            ids_file = stack.enter_context(tempfile.NamedTemporaryFile("w", suffix=".txt"))
            ids_file.write("".join(f + "\n" for f in files))
            ids_file.flush()
        features_dir, layers = stack.enter_context(probe_features(
            args.out, args.features, args.ckpt, args.baseline, layers_from(args), args.data,
            [ids_file.name] if ids_file else [], options))
        report = item_file_probe(features_dir, args.item_file, layers, settings=settings, options=options)
    return show(report, format_item_report(report), args.out)
