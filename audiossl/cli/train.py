"""``audiossl train``: pretrain a model; re-running resumes from ``--exp-dir``."""

from __future__ import annotations

import argparse
import json
import sys

from audiossl.cli.options import add_config_args, config_from, device_from, print_config
from audiossl.utils.stopping import EXIT_CODES, EXIT_FAILED, EXIT_INTERRUPTED


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="pretrain a model; re-running resumes from --exp-dir")
    add_config_args(p)
    p.add_argument("--data", required=True, help="corpus folder or manifest TSV")
    p.add_argument("--exp-dir", required=True, help="experiment folder (checkpoint, logs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--strict", action="store_true",
                   help="fail before training if any file is unusable or shorter than the window")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    import os

    from audiossl.train import TrainingError, train

    cfg = config_from(args)
    device_from(cfg.train.device)  # CUDA asked for where there is none: a user error, before the folder is made
    if os.environ.get("RANK", "0") == "0":
        print_config(cfg)
    try:
        summary = train(cfg, args.data, args.exp_dir, progress=not args.no_progress, strict=args.strict)
    except TrainingError as e:
        print(f"audiossl train: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"audiossl train: interrupted twice: stopped at once, without saving (the last checkpoint is in "
              f"{args.exp_dir})", file=sys.stderr)
        return EXIT_INTERRUPTED
    if os.environ.get("RANK", "0") == "0" and summary["stopped"] is None:
        metrics = {k: round(v, 4) for k, v in summary["metrics"].items() if "_k" not in k}
        print(f"done at step {summary['step']}: {json.dumps(metrics)}; checkpoint {summary['checkpoint']}")
    return EXIT_CODES[summary["stopped"]]
