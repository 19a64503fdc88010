"""The channels-last strided conv equals ``Conv1d``: values and gradients; ``auto``'s choice of method."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from audiossl.models import autotune
from audiossl.models.encoders import CONV_METHODS, ConvEncoder, conv_method, strided_conv

# (in, out, kernel, stride, padding): the CPC spec's layers, the log-mel
# stride-1 convs, and kernels that are not a multiple of the stride.
LAYERS = [(1, 6, 10, 5, 3), (6, 6, 8, 4, 2), (6, 6, 4, 2, 1), (5, 7, 3, 1, 1), (3, 4, 7, 3, 2), (4, 4, 2, 2, 0),
          (4, 4, 5, 5, 0), (2, 3, 3, 4, 1)]


@pytest.mark.parametrize("method", ["im2col", "taps", "conv1d", "auto"])
@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: "in{}-out{}-k{}-s{}-p{}".format(*layer))
@pytest.mark.parametrize("frames", [23, 64, 101])
def test_strided_conv_equals_conv1d(method, layer, frames):
    in_ch, out_ch, kernel, stride, padding = layer
    torch.manual_seed(0)
    x = torch.randn(3, frames, in_ch, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(out_ch, in_ch, kernel, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(out_ch, dtype=torch.float64, requires_grad=True)
    ref = F.conv1d(x.transpose(1, 2), weight, bias, stride, padding).transpose(1, 2)
    out = strided_conv(x, weight, bias, stride, padding, method)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (x, weight, bias), grad)
    grads = torch.autograd.grad(out, (x, weight, bias), grad)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)



def test_fastest_picks_the_faster_candidate():
    calls = {"fast": 0, "slow": 0}

    def fast():
        calls["fast"] += 1

    def slow():
        calls["slow"] += 1
        time.sleep(0.02)

    assert autotune.fastest({"slow": slow, "fast": fast}, repeats=2, warmup=1) == "fast"
    assert calls == {"fast": 3, "slow": 3}  # warm-up and timed calls each
    with pytest.raises(ValueError, match="no candidates"):
        autotune.fastest({})


def conv_inputs(device: str):
    """A downsampling layer's input and parameters: 40 frames of 6 channels, 8 outputs of kernel 4."""
    return tuple(torch.randn(*shape, device=device, requires_grad=True) for shape in [(2, 40, 6), (8, 6, 4), (8,)])


def test_auto_on_the_cpu_follows_the_rule_and_times_nothing(monkeypatch):
    monkeypatch.setattr(autotune, "CHOICES", {})
    monkeypatch.setattr(autotune, "fastest", lambda *a, **k: pytest.fail("the CPU path must not time anything"))
    x, weight, bias = conv_inputs("cpu")
    used = []
    real = F.linear
    monkeypatch.setattr(F, "linear", lambda *args: used.append(args[0].shape) or real(*args))
    strided_conv(x, weight, bias, 2, 1)
    assert conv_method(6, 8, 4, 2) == "taps" and used == [(2, 21, 12)]  # the taps product over the strided view
    assert autotune.CHOICES == {}


def test_auto_elsewhere_measures_once_per_key_and_reuses_the_choice(monkeypatch):
    """On a device other than the CPU (here ``meta``, which runs anywhere) the first call times every method."""
    monkeypatch.setattr(autotune, "CHOICES", {})
    timed = []
    real = autotune.fastest
    monkeypatch.setattr(autotune, "fastest", lambda candidates, **k: timed.append(sorted(candidates)) or
                        real(candidates, **k))
    x, weight, bias = conv_inputs("meta")
    out = strided_conv(x, weight, bias, 2, 1)
    assert out.shape == (2, 20, 8)
    assert timed == [sorted(CONV_METHODS)]
    [(key, choice)] = autotune.CHOICES.items()
    assert choice in CONV_METHODS and key[1:5] == ("meta", torch.float32, (2, 40, 6), (8, 6, 4))
    strided_conv(x, weight, bias, 2, 1)
    assert len(timed) == 1  # the same key: the cached choice
    used = []
    real_linear = F.linear
    monkeypatch.setattr(F, "linear", lambda *args: used.append(tuple(args[0].shape)) or real_linear(*args))
    for forced, rows in [("im2col", (2, 20, 24)), ("taps", (2, 21, 12))]:  # the cache is consulted
        autotune.CHOICES[key] = forced
        strided_conv(x, weight, bias, 2, 1)
        assert used.pop() == rows  # im2col's (out frames, in * kernel) columns; the taps' strided view
    with torch.no_grad():
        strided_conv(x, weight, bias, 2, 1)
    assert len(timed) == 2  # inference (no backward) is its own key


def test_auto_under_compile_tracing_takes_conv1d_without_timing(monkeypatch):
    monkeypatch.setattr(autotune, "CHOICES", {})
    monkeypatch.setattr(autotune, "fastest", lambda *a, **k: pytest.fail("nothing is timed while tracing"))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    called = []
    real = F.conv1d
    monkeypatch.setattr(F, "conv1d", lambda *a, **k: called.append(1) or real(*a, **k))
    x, weight, bias = conv_inputs("meta")
    strided_conv(x, weight, bias, 2, 1)
    assert called == [1] and autotune.CHOICES == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_auto_on_cuda_equals_conv1d(monkeypatch, dtype):
    monkeypatch.setattr(autotune, "CHOICES", {})
    torch.manual_seed(0)
    x, weight, bias = conv_inputs("cuda")
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        out = strided_conv(x, weight, bias, 2, 1)
        ref = F.conv1d(x.transpose(1, 2), weight, bias, 2, 1).transpose(1, 2)
    tolerance = 5e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(out.float(), ref.float(), rtol=tolerance, atol=tolerance)
    [key] = autotune.CHOICES
    assert key[1:3] == ("cuda", dtype)


def reference_encoder(encoder: ConvEncoder, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The same blocks with ``F.conv1d`` on (batch, channels, frames) tensors."""
    for block in encoder.blocks:
        y = F.conv1d(x.transpose(1, 2), block.conv.weight, block.conv.bias, block.stride, block.padding)
        x = torch.relu(block.norm(y.transpose(1, 2)))
        lengths = block.output_lengths(lengths)
        x = x * (torch.arange(x.shape[1])[None, :] < lengths[:, None]).unsqueeze(-1)
    return x


@pytest.mark.parametrize("norm", ["channel", "batch", "none"])
def test_cpc_encoder_equals_conv1d_padded_and_unpadded(norm):
    torch.manual_seed(0)
    spec = [(8, k, s, p) for k, s, p in zip([10, 8, 4, 4, 4], [5, 4, 2, 2, 2], [3, 2, 1, 1, 1])]
    encoder = ConvEncoder(1, spec, norm=norm).double()
    lengths = torch.tensor([3200, 2241, 1600])
    wavs = torch.randn(3, 3200, 1, dtype=torch.float64)
    wavs = wavs * (torch.arange(3200)[None, :] < lengths[:, None]).unsqueeze(-1)
    for lens in (torch.full((3,), 3200), lengths):  # unpadded, padded
        out, out_lengths = encoder(wavs, lens)
        ref = reference_encoder(encoder, wavs, lens)
        torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
        params = list(encoder.parameters())
        grad = torch.randn_like(out)
        for got, want in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, params, grad)):
            torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8)
        assert out_lengths.tolist() == encoder.output_lengths(lens).tolist()


def test_loads_conv2d_shaped_weights_of_older_checkpoints():
    encoder = ConvEncoder(1, [(4, 10, 5, 3), (4, 8, 4, 2)])
    old = {k: (v.unsqueeze(2) if k.endswith("conv.weight") else v) for k, v in encoder.state_dict().items()}
    fresh = ConvEncoder(1, [(4, 10, 5, 3), (4, 8, 4, 2)])
    fresh.load_state_dict(old)
    for key, value in encoder.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)
