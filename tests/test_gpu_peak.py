"""tools/gpu_peak.py: the FLOP count of a step's parts, the peak, and the table of shares."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from audiossl.config import build_config

TOOL = Path(__file__).resolve().parents[1] / "tools" / "gpu_peak.py"


@pytest.fixture(scope="module")
def gpu_peak():
    spec = importlib.util.spec_from_file_location("gpu_peak", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flop_count_of_a_tiny_cpc_step(gpu_peak, one_thread):
    cfg = build_config(overrides={"window_samples": 3200, "encoder_channels": 16, "context_dim": 16,
                                  "cpc_steps": 3, "cpc_negatives": 4, "batch_size": 2})
    flops = gpu_peak.count_flops(cfg, torch.device("cpu"))
    assert set(flops) == {"model", "objective", "backward"}
    assert all(count > 0 for count in flops.values()), flops
    forward = flops["model"] + flops["objective"]
    assert flops["model"] > flops["objective"]  # the encoder's convs outweigh the predictions and scores
    assert forward < flops["backward"] < 3 * forward, flops  # about twice: the gradients of inputs and weights


def test_shares_table(gpu_peak):
    flops = {"model": 2e12, "objective": 1e12, "backward": 6e12}
    seconds = {"model": 0.01, "objective": 0.02, "backward": 0.03, "step": 0.1, "optimizer": 0.04}
    lines = gpu_peak.format_shares(flops, seconds, peak_tflops=1000.0).splitlines()
    assert lines[0].split() == ["part", "GFLOP", "ms", "TFLOP/s", "%", "of", "bf16", "peak"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows == {"model": ["2000.00", "10.00", "200.000", "20.00%"],
                    "objective": ["1000.00", "20.00", "50.000", "5.00%"],
                    "backward": ["6000.00", "30.00", "200.000", "20.00%"],
                    "step": ["9000.00", "100.00", "90.000", "9.00%"]}
    compiled = gpu_peak.format_shares(flops, {"forward": 0.03, "backward": 0.03, "step": 0.1}, 1000.0)
    assert compiled.splitlines()[1].split() == ["model", "2000.00", "-", "-", "-"]


def test_reads_the_last_json_line_of_the_bench_output(gpu_peak, tmp_path):
    out = tmp_path / "bench.txt"
    out.write_text('objective cpc ...\n  step 0.1 s\n{"step": 0.1, "batch_size": 8}\n')
    assert gpu_peak.read_bench(out) == {"step": 0.1, "batch_size": 8}
    out.write_text("  (stopped after 240 s: RUN_LIMIT)\n")
    assert gpu_peak.read_bench(out) is None


def test_cpu_matmul_peak_and_its_line(gpu_peak):
    peak = gpu_peak.peaks(torch.device("cpu"), size=64, repeats=1)
    assert set(peak) == {"bf16", "fp32"} and all(rate > 0 for rate in peak.values())
    assert gpu_peak.format_peaks({"bf16": 989.5, "fp32": 0.05123}, 8192) == \
        "matmul peak (8192 x 8192): bf16 989.5, fp32 0.05123 TFLOP/s"
