#!/usr/bin/env python3
"""Each part of the CPC training step as a share of the device's bf16 matmul peak.

    python tools/gpu_peak.py [--device cuda] [--config recipes/conf/cpc_libri.yaml] \\
        [--bench-json FILE ...] [key=value ...]

Run by ``tools/gpu_bench.sh`` after its eager CPC runs, it

1. measures the matmul rate the device reaches: 8192 x 8192 products in bf16,
   TF32 and strict fp32 on CUDA, timed by CUDA events, best of ``--repeats``;
   on the CPU (the dry run) 512 x 512 in bf16 and fp32, seconds in all;
2. counts the FLOPs of one training step's parts with
   ``torch.utils.flop_counter.FlopCounterMode``, model and objective built as
   ``audiossl bench`` builds them, at each bench result's batch and window:
   ``model`` (the frontend, encoder and context forward), ``objective`` (the
   rest of the forward: heads, scores, loss) and ``backward``;
3. divides each by the median seconds ``audiossl bench --json`` measured for
   it (FILE holds that command's output; its last JSON line is read) and
   prints the TFLOP/s achieved and the share of the bf16 peak.

The counter counts matrix products and convolutions only: norms,
activations, the candidates' gather and the optimizer add time but no FLOPs,
so a part's share is what its products reach in the time the whole part
took. FLOPs do not depend on precision, so they are counted in fp32, and with
cuDNN off: cuDNN's fused RNN is one op the counter has no formula for, while
without it the GRU runs as matrix products the counter sees. ``step`` is the
forward's and backward's FLOPs over the whole step's time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from audiossl.config import Config, build_config, parse_overrides  # noqa: E402
from audiossl.train.loop import build_pretrainer  # noqa: E402

PARTS = ("model", "objective", "backward")


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5, inner: int = 10) -> float:
    """TFLOP/s of ``size`` x ``size`` products in ``dtype``: the best of ``repeats`` runs of ``inner`` products."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    for _ in range(2):  # warm-up: cuBLAS's handle and heuristics, the CPU's thread pool
        torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                torch.mm(a, b)
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            for _ in range(inner):
                torch.mm(a, b)
            seconds = time.perf_counter() - t0
        best = min(best, seconds / inner)
    return 2 * size**3 / best / 1e12


def peaks(device: torch.device, size: int, repeats: int) -> dict[str, float]:
    """The bf16 and fp32 matmul peaks (TF32 too on CUDA), in TFLOP/s."""
    result = {"bf16": matmul_peak(device, torch.bfloat16, size, repeats)}
    matmul = torch.backends.cuda.matmul
    precisions = ("tf32", "ieee") if device.type == "cuda" else ("ieee",)
    saved = matmul.fp32_precision
    try:
        for precision in precisions:
            matmul.fp32_precision = precision
            result["tf32" if precision == "tf32" else "fp32"] = matmul_peak(device, torch.float32, size, repeats)
    finally:
        matmul.fp32_precision = saved
    return result


def count_flops(cfg: Config, device: torch.device) -> dict[str, int]:
    """FLOPs of one training step's ``model`` forward, ``objective`` forward and ``backward``.

    One untimed step runs first, so that choices made at first use (the conv
    method on CUDA, timed) are made outside the count.
    """
    torch.manual_seed(cfg.train.seed)
    module = build_pretrainer(cfg).to(device).train()  # as training and audiossl bench build it
    model = module.model
    batch_size, window = cfg.train.batch_size, cfg.data.window_samples
    batch = {"wavs": 0.1 * torch.randn(batch_size, window, device=device),
             "lengths": torch.full((batch_size,), window, device=device),
             "speakers": torch.zeros(batch_size, dtype=torch.long, device=device)}
    module(batch)[0].backward()
    module.zero_grad(set_to_none=True)

    counter = FlopCounterMode(display=False)
    model_flops, starts = [0], {}

    def before(mod, args):
        starts[id(mod)] = counter.get_total_flops()

    def after(mod, args, out):
        model_flops[0] += counter.get_total_flops() - starts.pop(id(mod))

    hooks = [hook for part in (model.frontend, model.encoder, model.context)
             for hook in (part.register_forward_pre_hook(before), part.register_forward_hook(after))]
    try:
        with torch.backends.cudnn.flags(enabled=False):
            with counter:
                loss, _ = module(batch)
            forward = counter.get_total_flops()
            with FlopCounterMode(display=False) as backward:
                loss.backward()
    finally:
        for hook in hooks:
            hook.remove()
    return {"model": model_flops[0], "objective": forward - model_flops[0], "backward": backward.get_total_flops()}


def read_bench(path: str | Path) -> dict | None:
    """The last JSON line ``audiossl bench --json`` printed into ``path``, or None if there is none."""
    lines = [line for line in Path(path).read_text().splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def format_peaks(result: dict[str, float], size: int) -> str:
    rates = ", ".join(f"{name} {tflops:.4g}" for name, tflops in result.items())  # CPU rates are < 0.1
    return f"matmul peak ({size} x {size}): {rates} TFLOP/s"


def format_shares(flops: dict[str, int], seconds: dict[str, float], peak_tflops: float) -> str:
    """One row per part, then ``step``: GFLOPs, milliseconds, TFLOP/s achieved and % of ``peak_tflops``.

    ``seconds`` holds ``audiossl bench``'s medians (``model``, ``objective``,
    ``backward``, ``step``); a part it lacks (a compiled run has no
    model/objective split) is printed without a rate.
    """
    lines = [f"  {'part':<10} {'GFLOP':>10} {'ms':>9} {'TFLOP/s':>9} {'% of bf16 peak':>15}"]
    rows = [(part, flops[part], seconds.get(part)) for part in PARTS]
    rows.append(("step", sum(flops[p] for p in PARTS), seconds.get("step")))
    for part, count, secs in rows:
        if not secs:
            lines.append(f"  {part:<10} {count / 1e9:10.2f} {'-':>9} {'-':>9} {'-':>15}")
            continue
        tflops = count / secs / 1e12
        lines.append(f"  {part:<10} {count / 1e9:10.2f} {secs * 1e3:9.2f} {tflops:9.3f} "
                     f"{100 * tflops / peak_tflops:14.2f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config", default="recipes/conf/cpc_libri.yaml")
    parser.add_argument("--bench-json", action="append", default=[], help="a file holding `audiossl bench --json`")
    parser.add_argument("--size", type=int, help="matmul size for the peak (default 8192 on CUDA, 512 on the CPU)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, as the bench was run")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # the timing events record on the current device's stream
    size = args.size or (8192 if device.type == "cuda" else 512)
    peak = peaks(device, size, args.repeats)
    print(format_peaks(peak, size))
    overrides = parse_overrides(args.overrides)
    for path in args.bench_json:
        result = read_bench(path)
        if result is None:
            print(f"{path}: no `audiossl bench --json` result (the run failed or was stopped)")
            continue
        cfg = build_config(args.config, {**overrides, "batch_size": result["batch_size"],
                                         "window_samples": result["window_samples"]})
        flops = count_flops(cfg, device)
        print(f"{Path(args.config).stem}, batch {result['batch_size']} x {result['window_samples']} samples, "
              f"{result['device']}{' compiled' if result.get('compiled') else ''}: each part's FLOPs over "
              f"bench's median time, against the bf16 peak ({peak['bf16']:.4g} TFLOP/s)")
        print(format_shares(flops, result, peak["bf16"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
