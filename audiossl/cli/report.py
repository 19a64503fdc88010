"""``audiossl report``: figures and a markdown page for an experiment folder."""

from __future__ import annotations

import argparse

from audiossl.cli.options import device_from


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="figures and a markdown page (report.md) for an experiment folder")
    p.add_argument("exp_dir", metavar="EXP_DIR", help="a recipe run folder or an audiossl train --exp-dir")
    p.add_argument("--out", help="output folder (default: EXP_DIR/report)")
    p.add_argument("--utterance", help="utterance id to draw (default: the first of the test split, else the corpus)")
    p.add_argument("--data", help="corpus folder or manifest TSV (default: the training manifest)")
    p.add_argument("--labels", help="folder with converted_aligned_phones.txt, phones.txt and the split lists "
                   "(default: looked for in the corpus folder and above it)")
    p.add_argument("--layer", default="context", help="layer whose features are shown (default: context)")
    p.add_argument("--max-utterances", type=int, default=300,
                   help="utterances for the confusion classifier and the projection (default: 300)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N, where features are computed")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from audiossl.report import make_report

    out = Path(args.out) if args.out else Path(args.exp_dir) / "report"
    outcome = make_report(args.exp_dir, out, args.utterance, args.data, args.labels, args.layer,
                          device_from(args.device), args.max_utterances)
    for name, status in outcome.items():
        print(f"{out / name}" if status == "written" else f"{name}: not available ({status})")
    print(f"report: {out / 'report.md'}")
    return 0
