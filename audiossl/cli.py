"""``audiossl <command>``: thin handlers that parse, build a config, call the library."""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from audiossl.audio import AudioError
from audiossl.checkpoint import CheckpointError
from audiossl.config import ConfigError, build_config, parse_overrides
from audiossl.data.corpus import CorpusError

# Errors that are the user's to fix: one line, no traceback.
USER_ERRORS = (ConfigError, CorpusError, AudioError, CheckpointError, FileNotFoundError)


def _config_from(args: argparse.Namespace):
    return build_config(args.config, parse_overrides(args.overrides))


def _print_config(cfg) -> None:
    print("# resolved config")
    print(yaml.safe_dump(cfg.flat(), sort_keys=False).rstrip())


def cmd_prepare(args: argparse.Namespace) -> int:
    from audiossl.data.corpus import scan_corpus, write_manifest

    utterances, problems = scan_corpus(args.data, args.speaker_level)
    write_manifest(utterances, args.out)
    hours = sum(u.num_samples / u.sample_rate for u in utterances) / 3600
    speakers = len({u.speaker for u in utterances})
    print(f"{args.out}: {len(utterances)} utterances, {speakers} speakers, {hours:.2f} h")
    for p in problems:
        print(f"skipped {p.path}: {p.reason}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import os

    from audiossl.train import TrainingError, train

    cfg = _config_from(args)
    if os.environ.get("RANK", "0") == "0":
        _print_config(cfg)
    try:
        summary = train(cfg, args.data, args.exp_dir, progress=not args.no_progress)
    except TrainingError as e:
        print(f"audiossl train: error: {e}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":
        metrics = {k: round(v, 4) for k, v in summary["metrics"].items() if "_k" not in k}
        print(f"done at step {summary['step']}: {json.dumps(metrics)}; checkpoint {summary['checkpoint']}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from audiossl.bench import benchmark, format_result

    cfg = _config_from(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = benchmark(cfg, steps=args.steps, warmup=args.warmup, device=args.device)
    print(format_result(result))
    if args.json:
        print(json.dumps(result))
    return 0


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="flat YAML config file (recipes/conf/*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. lr=1e-3")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audiossl", description="Self-supervised speech representation learning.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="scan a corpus folder into a manifest TSV")
    p.add_argument("--data", required=True, help="corpus folder (LibriSpeech layout or any audio tree)")
    p.add_argument("--out", required=True, help="manifest TSV to write")
    p.add_argument("--speaker-level", type=int, default=-1, help="folder level naming the speaker (non-LibriSpeech)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="pretrain a model; re-running resumes from --exp-dir")
    _add_config_args(p)
    p.add_argument("--data", required=True, help="corpus folder or manifest TSV")
    p.add_argument("--exp-dir", required=True, help="experiment folder (checkpoint, logs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("bench", help="training-step throughput on random audio")
    _add_config_args(p)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"audiossl {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
