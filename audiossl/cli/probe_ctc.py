"""``audiossl probe ctc-phone`` and ``ctc-subword``: CTC recognition on frozen features."""

from __future__ import annotations

import argparse
import contextlib
import json

from audiossl.cli.options import layers_from, positive_int, settings_from
from audiossl.cli.probe import probe_options, run_options, show, trained_probe_options
from audiossl.config import settings_help


def add_parser(tasks: argparse._SubParsersAction) -> None:
    from audiossl.probes.ctc.probe import DEFAULT_LR, CTCSettings

    shared = probe_options(source_required=True)
    ctc = trained_probe_options("CTC head")
    epilog = (f"settings (audiossl.probes.ctc.probe.CTCSettings): {settings_help(CTCSettings)}; lr None: "
              + ", ".join(f"{head} {lr:g}" for head, lr in DEFAULT_LR.items()))
    t = tasks.add_parser("ctc-phone", parents=[shared, ctc], help="CTC phone recognition; phone error rate",
                         epilog=epilog)
    t.add_argument("--alignments", required=True, help="converted_aligned_phones.txt (collapsed to phone sequences)")
    t.add_argument("--phones", help="phone inventory (phones.txt); number of classes and the silence class SIL")
    t.add_argument("--keep-silence", action="store_true", help="keep silence as a unit instead of dropping it")
    t.set_defaults(func=cmd_probe_ctc)
    t = tasks.add_parser("ctc-subword", parents=[shared, ctc],
                         help="CTC recognition of sentencepiece pieces; character and word error rates", epilog=epilog)
    t.add_argument("--transcripts", action="append", metavar="PATH",
                   help="transcript file or folder of *.trans.txt (repeatable; default: those beside the audio)")
    t.add_argument("--vocab-size", type=positive_int, default=100, help="most sentencepiece pieces")
    t.add_argument("--sp-type", choices=["unigram", "bpe"], default="unigram", help="sentencepiece model type")
    t.add_argument("--units", help="sentencepiece model file, trained if absent (default: OUT/units.model)")
    t.set_defaults(func=cmd_probe_ctc)


def cmd_probe_ctc(args: argparse.Namespace) -> int:
    import dataclasses
    import tempfile
    from pathlib import Path

    from audiossl.probes.ctc.probe import CTCSettings, ctc_phone_probe, ctc_subword_probe, format_ctc_report
    from audiossl.probes.runner import probe_features

    settings = settings_from(args, CTCSettings, what="CTC setting")
    options = run_options(args)
    print(f"# {args.task} probe on {args.features or args.ckpt or 'baseline ' + args.baseline}: floors "
          f"{', '.join(options.baselines) or 'none'}; {json.dumps(dataclasses.asdict(settings))}")
    with contextlib.ExitStack() as stack:
        features_dir, layers = stack.enter_context(probe_features(
            args.out, args.features, args.ckpt, args.baseline, layers_from(args), args.data,
            [s for s in (args.train_split, args.test_split) if s], options))
        common = {"train_split": args.train_split, "test_split": args.test_split, "settings": settings,
                  "options": options}
        if args.task == "ctc-phone":
            report = ctc_phone_probe(features_dir, args.alignments, layers, phones=args.phones,
                                     keep_silence=args.keep_silence, **common)
        else:
            # The units live beside the results and are reused by the next run; without --out, for this run only.
            units = args.units or Path(args.out or stack.enter_context(tempfile.TemporaryDirectory())) / "units.model"
            report = ctc_subword_probe(features_dir, units, layers, vocab_size=args.vocab_size,
                                       sp_type=args.sp_type, transcripts=args.transcripts or (), **common)
    return show(report, format_ctc_report(report), args.out)
