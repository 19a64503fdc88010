#!/usr/bin/env python3
"""Side-by-side timing of a CPC training step: CPC_audio's own against audiossl's.

    git clone https://github.com/facebookresearch/CPC_audio /path/to/CPC_audio
    python tools/bench_peer.py --peer /path/to/CPC_audio [--rounds 3] [--steps 3] [--warmup 1] [--threads 2] \\
        [key=value ...]

CPC_audio's side is its own code, imported from the checkout (nothing of it
is copied here): ``cpc/model.py``'s ``CPCEncoder``, ``CPCAR`` and
``CPCModel`` and ``cpc/criterion/criterion.py``'s
``CPCUnsupersivedCriterion``, built as its ``cpc/train.py`` builds them for

    --hiddenEncoder 256 --normMode layerNorm --arMode GRU --nLevelsGRU 1 --hiddenGar 256
    --nPredicts 12 --negativeSamplingExt 128 --rnnMode linear
    --sizeWindow 20480 --batchSizeGPU 8 --samplingType samespeaker
    --learningRate 2e-4 (Adam, betas 0.9 / 0.999, eps 1e-8)

and stepped as its ``trainStep`` steps (model, criterion, the sum of the 12
losses, backward, Adam, zero_grad) on random audio of shape (8, 1, 20480).
audiossl's side is ``audiossl.train.bench.benchmark`` at
``recipes/conf/cpc_libri.yaml``, the same setting (``--config`` to change
it; ``audiossl bench`` prints the same figure). The two sides alternate for
``--rounds`` rounds in one process, on the same torch threads, so a noisy
machine slows both; each round prints both medians and their ratio.

What the step does not need is worked around, nothing else: CPC_audio's
criterion package imports ``progressbar`` (for its CTC phone alignment) at
import time; when that package is missing, an empty module stands in for it.
``samespeaker`` sampling only changes which windows fill a batch, not the
step, and ``keepHidden`` is off for it (``--samplingType sequential`` alone
keeps the GRU state), as here.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


class PeerError(RuntimeError):
    """The checkout cannot be used; the message says why."""


def import_peer(peer: Path):
    """CPC_audio's model and criterion classes, imported from the checkout at ``peer``."""
    if not (peer / "cpc" / "model.py").is_file() or not (peer / "cpc" / "criterion" / "criterion.py").is_file():
        raise PeerError(f"{peer} is not a CPC_audio checkout (no cpc/model.py and cpc/criterion/criterion.py)")
    if importlib.util.find_spec("progressbar") is None:
        sys.modules["progressbar"] = types.ModuleType("progressbar")  # used only by its CTC alignment
    sys.path.insert(0, str(peer))
    try:
        from cpc.criterion.criterion import CPCUnsupersivedCriterion
        from cpc.model import CPCAR, CPCEncoder, CPCModel
    except ImportError as e:
        raise PeerError(f"cannot import CPC_audio from {peer}: {e}") from None
    return CPCEncoder, CPCAR, CPCModel, CPCUnsupersivedCriterion


def peer_step_times(classes, steps: int, warmup: int, device: torch.device, seed: int = 1) -> list[float]:
    """Seconds per training step of CPC_audio's model + criterion at the settings above."""
    CPCEncoder, CPCAR, CPCModel, CPCUnsupersivedCriterion = classes
    torch.manual_seed(seed)
    model = CPCModel(CPCEncoder(256, "layerNorm"), CPCAR(256, 256, False, 1, mode="GRU")).to(device).train()
    criterion = CPCUnsupersivedCriterion(12, 256, 256, 128, mode=None, rnnMode="linear", dropout=False,
                                         speakerEmbedding=0, nSpeakers=1, sizeInputSeq=20480 // 160)
    criterion = criterion.to(device).train()
    optimizer = torch.optim.Adam(list(criterion.parameters()) + list(model.parameters()), lr=2e-4,
                                 betas=(0.9, 0.999), eps=1e-8)
    batch = 0.1 * torch.randn(8, 1, 20480, device=device)
    label = torch.zeros(8, dtype=torch.long, device=device)
    times = []
    for i in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        c_feature, encoded, label_out = model(batch, label)
        losses, _ = criterion(c_feature, encoded, label_out)
        losses.sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", required=True, type=Path, help="a CPC_audio checkout (facebookresearch/CPC_audio)")
    parser.add_argument("--config", type=Path, default=REPO / "recipes" / "conf" / "cpc_libri.yaml",
                        help="audiossl's config (default: recipes/conf/cpc_libri.yaml, the peer's setting)")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two sides")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side and round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="audiossl config overrides, e.g. precision=bf16 (CPC_audio's side stays fp32)")
    args = parser.parse_args(argv)
    if min(args.rounds, args.steps) < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--rounds, --steps and --threads must be at least 1, --warmup at least 0")

    from audiossl.config import ConfigError, build_config, parse_overrides
    from audiossl.train.bench import benchmark

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    try:
        classes = import_peer(args.peer.resolve())
        cfg = build_config(args.config, parse_overrides(args.overrides))
    except (PeerError, ConfigError, FileNotFoundError) as e:
        print(f"bench_peer: error: {e}", file=sys.stderr)
        return 2
    if (cfg.train.batch_size, cfg.data.window_samples) != (8, 20480):
        print(f"note: {args.config} trains on batch {cfg.train.batch_size} x {cfg.data.window_samples} samples; "
              "CPC_audio's side stays at 8 x 20480", file=sys.stderr)
    print(f"# CPC_audio from {args.peer}, audiossl at {args.config} {' '.join(args.overrides)}; "
          f"{args.threads} threads on {device}, median of {args.steps} steps after {args.warmup} per side and round")
    print("| round | CPC_audio step | audiossl step | ratio |")
    print("|---|---|---|---|")
    for round_index in range(1, args.rounds + 1):
        peer = statistics.median(peer_step_times(classes, args.steps, args.warmup, device))
        ours = benchmark(cfg, steps=args.steps, warmup=args.warmup, device=args.device)["step"]
        print(f"| {round_index} | {peer:.2f} s | {ours:.2f} s | {peer / ours:.1f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
