"""Model properties: computed lengths, padding invariance, causality, feature extraction."""

from __future__ import annotations

import pytest
import torch

from audiossl.config import ModelConfig, build_config
from audiossl.models.encoders import ConvEncoder
from audiossl.models.frontends import LogMelFrontend
from audiossl.models.model import build_model

TINY = {"encoder_channels": 8, "context_dim": 8, "context_heads": 2, "context_ff_dim": 16}


def tiny_model(**settings) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = build_config(overrides={**TINY, **settings})
    return build_model(cfg.model, cfg.data.sample_rate)


@pytest.mark.parametrize("num_samples", [465, 1000, 3200, 16001, 20480])
def test_default_encoder_lengths_match_computed(num_samples):
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_channels=4))
    lengths = torch.tensor([num_samples])
    z, frame_lengths = model.encode(torch.randn(1, num_samples), lengths)
    assert z.shape == (1, int(model.output_lengths(lengths)), 4)
    assert frame_lengths.tolist() == model.output_lengths(lengths).tolist() == [z.shape[1]]


def test_default_cpc_spec():
    model = build_model(ModelConfig())
    assert int(model.output_lengths(torch.tensor([20480]))) == 128
    assert model.hop == 160
    assert model.frame_rate == 100
    assert model.receptive_field == 465
    assert model.encoder_dim == 256 and model.context_dim == 256


@pytest.mark.parametrize("spec", [
    [(4, 3, 1, 0)],
    [(4, 3, 1, 1), (4, 4, 2, 0)],
    [(4, 7, 3, 2), (4, 5, 2, 2), (4, 2, 2, 0)],
])
@pytest.mark.parametrize("num_samples", [37, 64, 101])
def test_conv_encoder_lengths_match_computed(spec, num_samples):
    encoder = ConvEncoder(1, spec, norm="none")
    lengths = torch.tensor([num_samples])
    out, out_lengths = encoder(torch.randn(1, num_samples, 1), lengths)
    assert out.shape[1] == int(encoder.output_lengths(lengths)) == int(out_lengths)


@pytest.mark.parametrize("num_samples", [855, 1000, 16001, 20480])
def test_wide_first_kernel_keeps_the_cpc_frame_count(num_samples):
    """A 400-tap first conv padded by 198 gives CPC_audio's frame count for every length."""
    wide = tiny_model(encoder_init="filterbank", encoder_kernels=[400, 8, 4, 4, 4], encoder_paddings=[198, 2, 1, 1, 1])
    default = tiny_model()
    lengths = torch.tensor([num_samples])
    z, frame_lengths = wide.encode(torch.randn(1, num_samples), lengths)
    assert z.shape[1] == int(frame_lengths) == int(default.output_lengths(lengths))
    assert wide.hop == 160 and wide.receptive_field == 855


def test_filterbank_init_is_mel_spaced_band_pass():
    from audiossl.models.encoders import mel_gabor_filterbank
    filters = mel_gabor_filterbank(64, 400)[:, 0]
    response = torch.fft.rfft(filters, n=8192).abs()
    peaks = response.argmax(1).double() * 16000 / 8192
    cosines = peaks[0::2]
    assert cosines[0] < 150 and 7000 < cosines[-1] < 8000
    assert bool((cosines[1:] > cosines[:-1]).all())  # increasing centres
    assert bool((cosines[1:] - cosines[:-1]).diff().gt(-5).all())  # wider spacing up high (mel)
    torch.testing.assert_close(filters.norm(dim=1), torch.ones(64, dtype=filters.dtype))
    torch.testing.assert_close(peaks[0::2], peaks[1::2], atol=16000 / 8192 * 2, rtol=0)  # cosine/sine pairs
    model = tiny_model(encoder_init="filterbank", encoder_kernels=[400, 8, 4, 4, 4], encoder_paddings=[198, 2, 1, 1, 1])
    assert torch.equal(model.encoder.blocks[0].conv.weight[:, 0],
                       mel_gabor_filterbank(model.encoder_dim, 400)[:, 0])
    assert not model.encoder.blocks[0].conv.bias.any()


def test_log_envelope_first_block_is_the_log_power_of_each_filter_pair():
    from audiossl.config import ConfigError
    model = tiny_model(encoder_init="filterbank", encoder_first="log_envelope", encoder_kernels=[400, 8, 4, 4, 4],
                       encoder_paddings=[198, 2, 1, 1, 1])
    first = model.encoder.blocks[0]
    wav = torch.randn(2, 3200)
    out, lengths = first(wav.unsqueeze(-1), torch.tensor([3200, 3200]))
    filtered = torch.nn.functional.conv1d(wav.unsqueeze(1), first.conv.weight, first.conv.bias, 5, 198)
    power = filtered[:, 0::2] ** 2 + filtered[:, 1::2] ** 2  # (cos, sin) pairs are adjacent channels
    torch.testing.assert_close(out, torch.log(power + first.eps).transpose(1, 2), atol=1e-4, rtol=1e-4)
    assert out.shape[-1] == model.encoder_dim // 2 == model.encoder.blocks[1].conv.in_channels
    # A tone excites the pair whose centre is nearest and only that one (a log filterbank).
    tone = torch.sin(2 * torch.pi * 1000 * torch.arange(3200) / 16000)
    bands, _ = first(tone.view(1, -1, 1), torch.tensor([3200]))
    centres = torch.fft.rfft(first.conv.weight[0::2, 0], n=16000).abs().argmax(1)
    assert int(bands[0, 100:-100].mean(0).argmax()) == int((centres - 1000).abs().argmin())
    pooled = tiny_model(encoder_init="filterbank", encoder_first="log_envelope", encoder_envelope_pool=31,
                        encoder_kernels=[400, 8, 4, 4, 4], encoder_paddings=[198, 2, 1, 1, 1])
    assert pooled.receptive_field == model.receptive_field + 30 * 5  # 30 more first-conv frames of 5 samples
    with pytest.raises(ConfigError, match="log_envelope"):
        build_config(overrides={"frontend": "logmel", "encoder_first": "log_envelope"})


def test_waveform_normalization_standardizes_each_utterance():
    model = tiny_model(cmvn=True)
    wavs = torch.randn(2, 4000) * torch.tensor([[0.01], [3.0]]) + 0.5
    lengths = torch.tensor([4000, 2500])
    out, _ = model.frontend(wavs, lengths)
    first, second = out[0, :, 0], out[1, :2500, 0]
    for x in (first, second):
        assert abs(float(x.mean())) < 1e-4 and abs(float(x.std(unbiased=False)) - 1) < 1e-3
    assert not out[1, 2500:].any()


def test_identity_encoder():
    encoder = ConvEncoder(3, [])
    x = torch.randn(2, 10, 3)
    out, lengths = encoder(x, torch.tensor([10, 7]))
    assert torch.equal(out, x) and lengths.tolist() == [10, 7]
    assert encoder.hop == 1 and encoder.receptive_field == 1


@pytest.mark.parametrize("num_samples", [400, 1599, 1600, 3333])
def test_logmel_frames(num_samples):
    frontend = LogMelFrontend(16000, n_mels=80)
    feats, lengths = frontend(torch.randn(1, num_samples), torch.tensor([num_samples]))
    assert feats.shape == (1, num_samples // 160, 80)
    assert lengths.tolist() == [num_samples // 160]
    model = tiny_model(frontend="logmel", encoder_kernels=[], encoder_strides=[], encoder_paddings=[])
    assert model.hop == 160 and model.frame_rate == 100
    assert int(model.output_lengths(torch.tensor([num_samples]))) == num_samples // 160


PADDING_CASES = [
    {"context": "gru", "encoder_norm": "channel"},
    {"context": "gru", "encoder_norm": "none", "context_layers": 2, "context_residual": True},
    {"context": "lstm", "encoder_norm": "channel"},
    {"context": "lstm", "encoder_norm": "none"},
    {"context": "gru", "encoder_norm": "batch"},
    {"context": "transformer", "encoder_norm": "channel", "context_layers": 2},
    {"context": "transformer", "encoder_norm": "none", "context_causal": False},
    {"context": "none", "encoder_norm": "channel"},
    {"context": "gru", "cmvn": True, "encoder_init": "filterbank", "encoder_kernels": [400, 8, 4, 4, 4],
     "encoder_paddings": [198, 2, 1, 1, 1]},
    {"context": "gru", "cmvn": True, "encoder_init": "filterbank", "encoder_first": "log_envelope",
     "encoder_kernels": [400, 8, 4, 4, 4], "encoder_paddings": [198, 2, 1, 1, 1]},
    {"context": "gru", "cmvn": True, "encoder_init": "filterbank", "encoder_first": "log_envelope",
     "encoder_envelope_pool": 31, "encoder_kernels": [400, 8, 4, 4, 4], "encoder_paddings": [198, 2, 1, 1, 1]},
    {"context": "gru", "frontend": "logmel", "cmvn": True, "encoder_kernels": [3], "encoder_strides": [1],
     "encoder_paddings": [1]},
    {"context": "transformer", "frontend": "logmel", "encoder_kernels": [], "encoder_strides": [],
     "encoder_paddings": [], "context_causal": False},
]


@pytest.mark.parametrize("settings", PADDING_CASES, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_padded_batch_equals_per_utterance_runs(settings):
    model = tiny_model(**settings).eval()
    lengths = torch.tensor([4000, 2711, 1600])
    wavs = torch.randn(3, 4000)
    wavs[1, 2711:] = 5.0  # garbage past the end must not leak in
    wavs[2, 1600:] = -3.0
    with torch.no_grad():
        z, c, frame_lengths = model(wavs, lengths)
        assert frame_lengths.tolist() == model.output_lengths(lengths).tolist()
        for i, n in enumerate(lengths.tolist()):
            z_i, c_i, len_i = model(wavs[i:i + 1, :n], lengths[i:i + 1])
            frames = int(len_i)
            assert frames == int(frame_lengths[i]) == z_i.shape[1]
            torch.testing.assert_close(z[i, :frames], z_i[0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(c[i, :frames], c_i[0], atol=1e-5, rtol=1e-4)
            assert not z[i, frames:].any() and not c[i, frames:].any()  # zeroed past the end


CAUSAL_CASES = [
    ({"context": "gru", "context_layers": 2}, True),
    ({"context": "lstm"}, True),
    ({"context": "transformer", "context_layers": 2}, True),
    ({"context": "transformer", "context_layers": 2, "context_causal": False}, False),
]


@pytest.mark.parametrize("settings, causal", CAUSAL_CASES, ids=lambda s: str(s))
def test_context_causality(settings, causal):
    model = tiny_model(**settings).eval()
    frames, t = 12, 7
    z = torch.randn(2, frames, model.encoder_dim)
    lengths = torch.tensor([frames, frames])
    perturbed = z.clone()
    perturbed[:, t] += 10 * torch.randn(2, model.encoder_dim)
    with torch.no_grad():
        before, _ = model.contextualize(z, lengths)
        after, _ = model.contextualize(perturbed, lengths)
    assert model.context.causal == causal
    for layer_before, layer_after in zip(before, after):
        assert not torch.allclose(layer_before[:, t:], layer_after[:, t:])
        if causal:
            torch.testing.assert_close(layer_before[:, :t], layer_after[:, :t], atol=1e-6, rtol=0)
        else:
            assert (layer_before[:, :t] - layer_after[:, :t]).abs().amax() > 1e-3


def test_extract_features_returns_every_named_layer():
    model = tiny_model(context="gru", context_layers=2, context_dim=12).eval()
    assert model.layer_names == ["encoder", "context", "context_1", "context_2"]
    wavs, lengths = torch.randn(2, 3200), torch.tensor([3200, 2000])
    with torch.no_grad():
        feats, state = model.extract_features(wavs, lengths, layers=tuple(model.layer_names))
        z, c, frame_lengths = model(wavs, lengths)
    assert set(feats) == set(model.layer_names)
    assert feats["encoder"][0].shape == (2, 20, model.encoder_dim)
    for name in ("context", "context_1", "context_2"):
        assert feats[name][0].shape == (2, 20, 12)
    for _, name_lengths in feats.values():
        assert name_lengths.tolist() == frame_lengths.tolist() == [20, 12]
    torch.testing.assert_close(feats["context"][0], feats["context_2"][0])
    torch.testing.assert_close(feats["context"][0], c)
    torch.testing.assert_close(feats["encoder"][0], z)
    assert len(state) == 2


def test_recurrent_state_carries_across_chunks():
    model = tiny_model(context="lstm", context_layers=2).eval()
    z = torch.randn(1, 20, model.encoder_dim)
    with torch.no_grad():
        whole, _ = model.contextualize(z, torch.tensor([20]))
        first, state = model.contextualize(z[:, :8], torch.tensor([8]))
        second, _ = model.contextualize(z[:, 8:], torch.tensor([12]), state)
    torch.testing.assert_close(torch.cat([first[-1], second[-1]], 1), whole[-1], atol=1e-6, rtol=0)


def test_extract_features_encoder_only_skips_context():
    model = tiny_model().eval()
    feats, state = model.extract_features(torch.randn(1, 3200), torch.tensor([3200]), layers=("encoder",))
    assert list(feats) == ["encoder"] and state is None


def test_unknown_layer_name():
    model = tiny_model()
    with pytest.raises(ValueError, match="context_9"):
        model.extract_features(torch.randn(1, 3200), torch.tensor([3200]), layers=("context_9",))


def test_bad_input_shape():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"\(batch, samples\)"):
        model.encode(torch.randn(1, 1, 3200), torch.tensor([3200]))


def test_the_model_declares_its_outputs_and_window_frames():
    gru = build_model(build_config(overrides={"encoder_channels": 32, "context_dim": 24, "context_layers": 2}).model)
    assert gru.named_outputs() == {"encoder": 32, "context": 24, "context_1": 24, "context_2": 24}
    assert gru.window_frames(20480) == 128  # CPC_audio's training window
    with torch.no_grad():  # what the model says is what it gives
        out, _ = gru.extract_features(0.1 * torch.randn(1, 3200), torch.tensor([3200]), tuple(gru.layer_names))
    assert {name: feats.shape[-1] for name, (feats, _) in out.items()} == gru.named_outputs()
    assert all(feats.shape[1] == gru.window_frames(3200) for feats, _ in out.values())
