"""``audiossl probe units``: discrete units against phone labels, beside k-means on the floors."""

from __future__ import annotations

import argparse
import json

from audiossl.cli.options import add_settings_args, count, name_list, settings_from
from audiossl.cli.probe import run_options, show
from audiossl.config import settings_help


def add_parser(tasks: argparse._SubParsersAction) -> None:
    from audiossl.probes.abx.labels import ABXSettings

    t = tasks.add_parser("units", help="discrete units against phone labels: purity, PNMI and ABX of one-hot units, "
                         "beside k-means on the floors",
                         epilog=f"settings (audiossl.probes.abx.labels.ABXSettings): {settings_help(ABXSettings)}")
    t.add_argument("--units", required=True, help="an audiossl units fit folder")
    t.add_argument("--features", required=True, help="the audiossl extract folder holding the units' layer")
    t.add_argument("--alignments", required=True, help="converted_aligned_phones.txt")
    t.add_argument("--phones", help="phone inventory (phones.txt): number of classes and the silence class SIL")
    t.add_argument("--split", help="utterance ids to score (CPC's test_split.txt; default: all)")
    t.add_argument("--data", help="corpus folder or manifest of the floors' audio (default: the features' audio)")
    t.add_argument("--baselines", type=name_list, default=None,
                   help="hand-made floors clustered with the same settings (default: mfcc,logmel; 'none' for none)")
    add_settings_args(t, "ABX (of the one-hot units)")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    t.add_argument("--num-workers", type=count, default=2, help="audio decoding processes for the floors")
    t.add_argument("--out", help="output folder: metrics.json, report.txt and the floors' k-means (kmeans_<floor>)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_probe_units)


def cmd_probe_units(args: argparse.Namespace) -> int:
    import dataclasses

    from audiossl.probes.abx.labels import ABXSettings
    from audiossl.probes.unit_quality import format_units_report, units_probe

    abx = settings_from(args, ABXSettings, what="ABX setting")
    options = run_options(args, args.baselines if args.baselines is not None else ["mfcc", "logmel"])
    print(f"# units probe of {args.units} on {args.features}: floors {', '.join(options.baselines) or 'none'}; "
          f"abx {json.dumps(dataclasses.asdict(abx))}")
    report = units_probe(args.units, args.features, args.alignments, split=args.split, phones=args.phones, abx=abx,
                         out=args.out, options=options)
    return show(report, format_units_report(report), args.out)
