#!/usr/bin/env python3
"""Step cost of several training configs against the first, their steps alternated in one process.

What converts a time budget into steps for a setting that changes the step's
cost (docs/benchmarks.md, "The harder corpus"): each variant's model and
objective are built as training builds them, and one forward, backward and
AdamW step on a random batch of its window and batch size is timed in turn,
so a busy machine slows every side alike. Batches carry ``augmented_wavs``
(the clean windows plus noise) when the config says ``augment: past``; the
augmentation itself runs on the loader's workers, not in the step.

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 OMP_NUM_THREADS=1 \\
        python tools/bench_step_ratio.py recipes/conf/cpc_wave_tts.yaml \\
        "recipes/conf/cpc_wave_tts.yaml augment=past" "recipes/conf/cpc_wave_tts.yaml context=lstm"
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from audiossl.config import build_config
from audiossl.settings import parse_overrides
from audiossl.train.loop import build_pretrainer


def variant(spec: str):
    config, *items = spec.split()
    cfg = build_config(config, parse_overrides(items))
    module = build_pretrainer(cfg)
    optimizer = torch.optim.AdamW(module.parameters(), 1e-4)
    size, samples = cfg.train.batch_size, cfg.data.window_samples
    wavs = torch.randn(size, samples) * 0.1
    batch = {"wavs": wavs, "lengths": torch.full((size,), samples), "starts": [0] * size}
    if cfg.augment.augment == "past":
        batch["augmented_wavs"] = wavs + 0.05 * torch.randn_like(wavs)
    return module, optimizer, batch


def step(module, optimizer, batch) -> float:
    start = time.perf_counter()
    loss, _ = module.objective(module.model, batch)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+", help='"CONFIG.yaml [key=value ...]"; the first is the reference')
    parser.add_argument("--rounds", type=int, default=10, help="timed steps of each (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each first (default 3)")
    args = parser.parse_args()
    torch.manual_seed(0)
    variants = [variant(spec) for spec in args.specs]
    times: list[list[float]] = [[] for _ in variants]
    for round_ in range(args.warmup + args.rounds):
        for i, parts in enumerate(variants):
            seconds = step(*parts)
            if round_ >= args.warmup:
                times[i].append(seconds)
    print(f"threads {torch.get_num_threads()}, capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{args.rounds} steps each after {args.warmup}, medians")
    reference = statistics.median(times[0])
    for spec, samples in zip(args.specs, times):
        median = statistics.median(samples)
        print(f"{median:.3f} s/step ({min(samples):.3f}-{max(samples):.3f}), {median / reference:.2f}x  {spec}")


if __name__ == "__main__":
    main()
