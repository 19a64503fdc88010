#!/usr/bin/env python3
"""Per-layer time against FLOPs for one CPC training step (forward + backward).

    python tools/bench_layers.py [--config recipes/conf/cpc_libri.yaml] [--repeats 7] [--threads 2]

For each part of the step at the config's sizes (batch x window, encoder
spec, context, K steps, N negatives) it times forward + backward, alternating
the formulations being compared within each repeat, and prints the median,
the part's multiply-add FLOPs (2 per multiply-add; backward counted as twice
the forward, once for a layer whose input needs no gradient) and the rate:

- each encoder block (conv -> norm -> ReLU) with the conv as
  ``strided_conv`` (``taps`` and ``im2col``), as ``F.conv1d`` and as the
  (1, k) channels-last ``Conv2d`` that audiossl used before;
- the context network: ``nn.GRU`` (on the CPU its backward runs through
  autograd frame by frame) and ``nn.LSTM`` (oneDNN's fused kernels) for
  comparison;
- the objective's two products: the bilinear predictions ``W_k c_t`` and the
  scores against every encoded frame of the batch, with the gather and the
  loss.

The inputs are random; the figures are speeds, not results.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from audiossl.config import build_config
from audiossl.models.encoders import conv_method, make_norm, strided_conv
from audiossl.objectives.infonce import contrastive_losses, sample_candidates, score_candidates


def conv2d_channels_last(x, weight, bias, stride, padding):
    """The formulation before: a (1, k) Conv2d on channels-last (B, C, 1, T) tensors."""
    x = x.transpose(1, 2).unsqueeze(2).contiguous(memory_format=torch.channels_last)
    y = F.conv2d(x, weight.unsqueeze(2), bias, (1, stride), (0, padding))
    return y.permute(0, 2, 3, 1)[:, 0]


def conv1d(x, weight, bias, stride, padding):
    """Plain Conv1d on (B, C, T), transposed back for the norm (a copy)."""
    return F.conv1d(x.transpose(1, 2), weight, bias, stride, padding).transpose(1, 2).contiguous()


def compare(title: str, gflop: float, variants: dict, repeats: int) -> list[tuple[str, str, float, float, float]]:
    """Times each variant (alternating), returns table rows."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(repeats + 1):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            if i:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        rows.append((title, name, gflop, median, gflop / median))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="recipes/conf/cpc_libri.yaml")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = build_config(args.config)
    m, o = cfg.model, cfg.objective
    batch, frames = cfg.train.batch_size, cfg.data.window_samples
    rows = []

    # --- encoder blocks -------------------------------------------------------
    channels = 1
    for i, (kernel, stride, padding) in enumerate(zip(m.encoder_kernels, m.encoder_strides, m.encoder_paddings)):
        out_frames = (frames + 2 * padding - kernel) // stride + 1
        x = torch.randn(batch, frames, channels).requires_grad_(i > 0)
        weight = (0.05 * torch.randn(m.encoder_channels, channels, kernel)).requires_grad_()
        bias = torch.zeros(m.encoder_channels, requires_grad=True)
        norm = make_norm(m.encoder_norm, m.encoder_channels)
        gflop = 2 * batch * out_frames * m.encoder_channels * channels * kernel * (3 if i else 2) / 1e9

        def block(conv, x=x, weight=weight, bias=bias, stride=stride, padding=padding, norm=norm):
            def run():
                y = torch.relu(norm(conv(x, weight, bias, stride, padding)))
                y.backward(torch.ones_like(y))
            return run

        variants = {
            "strided_conv taps": block(lambda *a: strided_conv(*a, method="taps")),
            "strided_conv im2col": block(lambda *a: strided_conv(*a, method="im2col")),
            "F.conv1d": block(conv1d),
            "(1,k) Conv2d channels-last (before)": block(conv2d_channels_last),
        }
        chosen = conv_method(channels, m.encoder_channels, kernel, stride)
        title = f"conv{i + 1} {channels}->{m.encoder_channels} k{kernel} s{stride} ({out_frames} frames; auto={chosen})"
        rows += compare(title, gflop, variants, args.repeats)
        channels, frames = m.encoder_channels, out_frames

    # --- context ----------------------------------------------------------------
    z = torch.randn(batch, frames, channels, requires_grad=True)
    hidden = m.context_dim
    gru, lstm = nn.GRU(channels, hidden, batch_first=True), nn.LSTM(channels, hidden, batch_first=True)

    def recurrent(layer):
        def run():
            y, _ = layer(z)
            y.backward(torch.ones_like(y))
        return run

    gflop_gru = 3 * 2 * batch * frames * 3 * hidden * (channels + hidden) / 1e9
    rows += compare(f"context GRU {hidden} ({frames} frames)", gflop_gru,
                    {"nn.GRU": recurrent(gru)}, args.repeats)
    rows += compare(f"context LSTM {hidden}", gflop_gru * 4 / 3, {"nn.LSTM": recurrent(lstm)}, args.repeats)

    # --- objective --------------------------------------------------------------
    steps, negatives = o.cpc_steps, o.cpc_negatives
    positions = frames - steps
    c = torch.randn(batch, frames, hidden, requires_grad=True)
    z = torch.randn(batch, frames, channels, requires_grad=True)
    w = torch.randn(steps, channels, hidden, requires_grad=True)
    lengths = torch.full((batch,), frames)
    candidates, valid = sample_candidates(lengths, frames, steps, negatives, o.cpc_negative_policy)

    def predictions():
        p = torch.einsum("btc,kdc->kbtd", c[:, :positions], w)
        p.backward(torch.ones_like(p))

    preds = torch.randn(steps, batch * positions, channels, requires_grad=True)

    def scores():
        losses, _ = contrastive_losses(score_candidates(preds, z, candidates), valid)
        losses.sum().backward()

    rows += compare(f"objective: predictions W_k c ({steps} steps)",
                    3 * 2 * steps * batch * positions * channels * hidden / 1e9, {"einsum": predictions}, args.repeats)
    rows += compare(f"objective: scores against all {batch * frames} frames, gather, loss",
                    3 * 2 * steps * batch * positions * batch * frames * channels / 1e9, {"matmul + gather": scores},
                    args.repeats)

    print(f"threads {args.threads}, batch {batch} x {cfg.data.window_samples} samples, median of {args.repeats}, "
          "forward + backward")
    print("| part | formulation | GFLOP | time | GFLOP/s |")
    print("|---|---|---|---|---|")
    for title, name, gflop, median, rate in rows:
        print(f"| {title} | {name} | {gflop:.2f} | {1e3 * median:.0f} ms | {rate:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
