"""The channels-last strided conv equals ``Conv1d``: values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from audiossl.models.encoders import ConvEncoder, strided_conv

# (in, out, kernel, stride, padding): the CPC spec's layers, the log-mel
# stride-1 convs, and kernels that are not a multiple of the stride.
LAYERS = [(1, 6, 10, 5, 3), (6, 6, 8, 4, 2), (6, 6, 4, 2, 1), (5, 7, 3, 1, 1), (3, 4, 7, 3, 2), (4, 4, 2, 2, 0),
          (4, 4, 5, 5, 0), (2, 3, 3, 4, 1)]


@pytest.mark.parametrize("method", ["im2col", "taps", "auto"])
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
