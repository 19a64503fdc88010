#!/usr/bin/env python3
"""Side-by-side timing of the CPC loss: matrix product + gather vs gathering.

    python tools/bench_infonce.py [--batch 8] [--frames 128] [--steps 12] [--negatives 128] [--dim 256]

Times forward + backward of the InfoNCE loss for the same sampled candidate
indices with audiossl's implementation (one (steps, B*P, B*T) matrix product,
then a gather) and with the naive reference from the tests (gather every
candidate vector into a (steps, candidates, B*P, dim) tensor and multiply
element-wise, as CPC_audio's criterion does). Prints medians, the ratio and
the largest difference between the two losses.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from audiossl.objectives.infonce import contrastive_losses, sample_candidates, score_candidates  # noqa: E402

from reference_infonce import reference_losses  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--negatives", type=int, default=128)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    z = torch.randn(args.batch, args.frames, args.dim, device=device, requires_grad=True)
    positions = args.frames - args.steps
    preds = torch.randn(args.steps, args.batch * positions, args.dim, device=device, requires_grad=True)
    lengths = torch.full((args.batch,), args.frames, device=device)
    candidates, valid = sample_candidates(lengths, args.frames, args.steps, args.negatives)

    def fast():
        losses, _ = contrastive_losses(score_candidates(preds, z, candidates), valid)
        losses.sum().backward()
        return losses.detach()

    def naive():
        losses, _ = reference_losses(preds, z, candidates, valid)
        losses.sum().backward()
        return losses.detach()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = {"fast": [], "naive": []}
    results = {}
    for _ in range(args.repeats + 1):  # the first round warms up
        for name, fn in (("fast", fast), ("naive", naive)):
            z.grad = preds.grad = None
            sync()
            start = time.perf_counter()
            results[name] = fn()
            sync()
            times[name].append(time.perf_counter() - start)
    fast_s = statistics.median(times["fast"][1:])
    naive_s = statistics.median(times["naive"][1:])
    print(f"device {device}  threads {torch.get_num_threads()}  batch {args.batch} x {args.frames} frames  "
          f"steps {args.steps}  negatives {args.negatives}  dim {args.dim}  median of {args.repeats}")
    print(f"  matrix product + gather  {fast_s:8.4f} s (forward + backward)")
    print(f"  naive gather (reference) {naive_s:8.4f} s")
    print(f"  ratio {naive_s / fast_s:.1f}x; max |loss difference| "
          f"{(results['fast'] - results['naive']).abs().max().item():.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
