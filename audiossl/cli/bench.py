"""``audiossl bench``: training-step throughput on random audio and, with ``--data``, the data loader's."""

from __future__ import annotations

import argparse
import json

from audiossl.cli.options import add_config_args, config_from


def _counts(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]``; anything else is a usage error."""
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not counts or min(counts) < 0:
        raise argparse.ArgumentTypeError(f"expected counts of 0 or more, got {text!r}")
    return counts


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="training-step throughput on random audio")
    add_config_args(p)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model and objective (compile=true)")
    p.add_argument("--data", help="also time the training data loader on this corpus folder or manifest TSV")
    p.add_argument("--workers", type=_counts, default=[1, 2, 4],
                   help="with --data: comma-separated DataLoader worker counts (default 1,2,4)")
    p.add_argument("--loader-seconds", type=float, default=5.0,
                   help="with --data: seconds of batches counted per worker count")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from audiossl.train.bench import benchmark, format_loader, format_result, loader_benchmark

    cfg = config_from(args)
    if args.compile:
        cfg.train.compile = True
    if args.threads:
        torch.set_num_threads(args.threads)
    loader = None
    if args.data is not None:  # first: a bad corpus fails before the model is timed
        print(f"# data loader on {args.data} (a folder is scanned first)", flush=True)
        loader = loader_benchmark(cfg, args.data, args.workers, seconds=args.loader_seconds)
    result = benchmark(cfg, steps=args.steps, warmup=args.warmup, device=args.device)
    print(format_result(result))
    if loader is not None:
        print(format_loader(loader, result["audio_seconds_per_second"]))
        result["loader"] = loader
    if args.json:
        print(json.dumps(result))
    return 0
