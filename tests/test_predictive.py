"""The predictive objectives APC, MPC and NPC: what each one's model may see,
what its loss covers, that it learns, and that it trains, saves and extracts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import audiossl
from audiossl.config import ConfigError, build_config, check_window
from audiossl.models.model import build_model
from audiossl.models.npc import GumbelQuantizer
from audiossl.objectives import build_objective
from audiossl.objectives.mpc import KEPT, RANDOM, ZEROED, SpanMasker
from audiossl.train import train

from conftest import build_tiny

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"
LOGMEL = {"frontend": "logmel", "n_mels": 16, "cmvn": True, "encoder_kernels": [], "encoder_strides": [],
          "encoder_paddings": [], "context_dim": 32}
TINY = {
    "apc": {**LOGMEL, "objective": "apc", "context": "gru", "context_layers": 2, "context_residual": True},
    "apc_transformer": {**LOGMEL, "objective": "apc", "context": "transformer", "context_layers": 2,
                        "context_heads": 2, "context_ff_dim": 64},
    "mpc": {**LOGMEL, "objective": "mpc", "context": "transformer", "context_causal": False, "context_layers": 2,
            "context_heads": 2, "context_ff_dim": 64},
    "npc": {**LOGMEL, "objective": "npc", "context": "npc", "context_layers": 4, "context_residual": True,
            "context_dropout": 0.0},
    "npc_vq": {**LOGMEL, "objective": "npc", "context": "npc", "context_layers": 4, "context_residual": True,
               "context_dropout": 0.0, "npc_vq_groups": 2, "npc_vq_codes": 8},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads cost more than they give


def build(name: str, **overrides):
    return build_tiny({**TINY[name], **overrides})


def chirps(batch: int, seconds: float, seed: int = 0) -> torch.Tensor:
    """Sinusoids whose frequency drifts slowly: a learnable toy signal, (batch, samples)."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(16000 * seconds)) / 16000
    base = 300 + 1500 * torch.rand(batch, 1, generator=gen)
    rate = 0.5 + torch.rand(batch, 1, generator=gen)
    freq = base * (1 + 0.5 * torch.sin(2 * math.pi * rate * t))
    phase = 2 * math.pi * torch.cumsum(freq, dim=1) / 16000
    return 0.5 * torch.sin(phase)


def frames_of(model, objective, wavs, lengths):
    """The objective's input frames, targets and lengths for a batch."""
    return objective.frames.inputs(model, wavs, lengths)


# --- APC ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["apc", "apc_transformer"])
def test_apc_context_never_sees_later_frames(name):
    _, model, objective = build(name)
    model.eval()
    x = torch.randn(2, 30, 16)
    lengths = torch.tensor([30, 30])
    t = 12
    perturbed = x.clone()
    perturbed[:, t + 1:] += torch.randn_like(perturbed[:, t + 1:])
    outputs = [model.contextualize(*objective.frames.encode(model, inp, lengths))[0][-1] for inp in (x, perturbed)]
    torch.testing.assert_close(outputs[0][:, :t + 1], outputs[1][:, :t + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(outputs[0][:, t + 1:], outputs[1][:, t + 1:])


@pytest.mark.parametrize("shift", [1, 3, 5])
def test_apc_loss_is_l1_to_frame_t_plus_shift(shift):
    _, model, objective = build("apc", apc_shift=shift)
    wavs = chirps(2, 0.5)
    lengths = torch.tensor([8000, 5600])
    loss, metrics = objective(model, {"wavs": wavs, "lengths": lengths})
    x, targets, frame_lengths = frames_of(model, objective, wavs, lengths)
    c = model.contextualize(x, frame_lengths)[0][-1]
    predictions = objective.postnet(c)
    terms = [(predictions[b, t] - targets[b, t + shift]).abs()
             for b in range(2) for t in range(int(frame_lengths[b]) - shift)]
    expected = torch.cat(terms).mean()
    torch.testing.assert_close(loss, expected)
    assert metrics["loss"] == loss.detach()


def test_apc_refuses_a_bidirectional_context():
    with pytest.raises(ConfigError, match="unidirectional"):
        build_config(overrides={**TINY["apc_transformer"], "context_causal": False})
    cfg = build_config(overrides=TINY["mpc"])  # a bidirectional model, then asked for APC
    model = build_model(cfg.model)
    cfg.objective.objective = "apc"
    with pytest.raises(ConfigError, match="unidirectional"):
        build_objective(cfg, model)


def test_apc_refuses_a_shift_the_waveform_encoder_would_leak():
    settings = {"objective": "apc", "encoder_channels": 8, "context_dim": 8}
    build_objective(build_config(overrides=settings), build_model(build_config(overrides=settings).model))
    cfg = build_config(overrides={**settings, "apc_shift": 2})
    with pytest.raises(ConfigError, match="apc_shift 2"):
        build_objective(cfg, build_model(cfg.model))


# --- MPC ---------------------------------------------------------------------

def test_mpc_loss_covers_exactly_the_selected_frames():
    _, model, objective = build("mpc")
    captured = {}

    def keep_predictions(module, args, output):
        output.retain_grad()
        captured["predictions"] = output

    objective.head.register_forward_hook(keep_predictions)
    objective.masker.register_forward_hook(lambda m, a, out: captured.update(masking=out[1]))
    wavs = chirps(3, 1.0)
    lengths = torch.tensor([16000, 12000, 9600])
    loss, _ = objective(model, {"wavs": wavs, "lengths": lengths})
    loss.backward()
    grad = captured["predictions"].grad  # (B, T, bins)
    selected = captured["masking"].selected
    assert selected.any()
    assert (grad.abs().sum(-1) > 0).equal(selected)


def test_mpc_frequency_band_is_masked_and_predicted():
    _, model, objective = build("mpc", mpc_freq_mask_bins=6)
    x = torch.randn(4, 50, 16)
    lengths = torch.tensor([50, 50, 40, 30])
    corrupted, masking = objective.masker(x, lengths)
    widths = masking.band.sum(-1)
    assert (widths <= 6).all()
    for b in range(4):
        band = masking.band[b].nonzero().squeeze(1)
        if band.numel():
            assert (band.diff() == 1).all()  # one contiguous band
            assert (corrupted[b][:, band] == 0).all()
    loss_mask = masking.loss_mask(lengths)
    for b in range(4):
        assert loss_mask[b, :lengths[b]][:, masking.band[b]].all()
        assert not loss_mask[b, lengths[b]:].any()


def test_mpc_masking_matches_the_configuration():
    torch.manual_seed(0)
    masker = SpanMasker(proportion=0.15, span=7, zero_prob=0.8, random_prob=0.1)
    lengths = torch.tensor([300, 257, 128, 64])
    frames = 300
    selected_frames, valid_frames = 0, 0
    kinds = torch.zeros(3)
    for _ in range(400):
        x = torch.randn(4, frames, 3) + 5.0  # no frame is zero before masking
        x = x * (torch.arange(frames)[None, :, None] < lengths[:, None, None])
        corrupted, masking = masker(x, lengths)
        kind = masking.kind
        # Spans of 7 inside each sequence, never overlapping.
        starts, valid = masking.starts, masking.span_valid
        for b in range(4):
            s = starts[b][valid[b]]
            assert (s.diff() >= 7).all() and (s + 7 <= lengths[b]).all()
            assert int(masking.selected[b].sum()) == 7 * s.numel()
        assert not masking.selected[torch.arange(frames)[None, :] >= lengths[:, None]].any()
        # Zeroed frames are zero, kept frames unchanged, replaced frames copy a frame of the same utterance.
        assert (corrupted[kind == ZEROED] == 0).all()
        assert corrupted[kind == KEPT].equal(x[kind == KEPT])
        assert corrupted[kind == -1].equal(x[kind == -1])
        for b, t in (kind == RANDOM).nonzero().tolist()[:20]:
            assert (corrupted[b, t] == x[b, :lengths[b]]).all(-1).any()
        selected_frames += int(masking.selected.sum())
        valid_frames += int(lengths.sum())
        span_kinds = kind.gather(1, starts)[valid]
        kinds += torch.bincount(span_kinds, minlength=3)[:3].float()
    assert selected_frames / valid_frames == pytest.approx(0.15, abs=0.005)
    shares = kinds / kinds.sum()
    assert shares[ZEROED] == pytest.approx(0.8, abs=0.03)
    assert shares[RANDOM] == pytest.approx(0.1, abs=0.02)
    assert shares[KEPT] == pytest.approx(0.1, abs=0.02)


@pytest.mark.parametrize("name, frames", [("apc", 3), ("mpc", 6)])
def test_window_too_short_for_the_objective(name, frames):
    cfg = build_config(overrides={**TINY[name], "window_samples": 160 * frames})
    with pytest.raises(ConfigError, match=f"objective {name} needs at least {frames + 1}"):
        check_window(cfg, frames, 400)
    cfg = build_config(overrides={**TINY[name], "window_samples": 160 * (frames + 1)})
    check_window(cfg, frames + 1, 400)


def test_mpc_refuses_a_causal_context():
    with pytest.raises(ConfigError, match="bidirectional"):
        build_config(overrides={**TINY["mpc"], "context_causal": True})


# --- NPC ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["npc", "npc_vq"])
def test_npc_prediction_of_x_t_never_sees_its_neighbourhood(name):
    _, model, objective = build(name)
    model.eval()
    objective.eval()
    torch.manual_seed(1)
    x = torch.randn(1, 60, 16)
    lengths = torch.tensor([60])
    t = 30

    def predict(frames):
        layers, _ = model.contextualize(frames, lengths)
        representation = layers[-1]
        return representation[0, t], objective.predict(layers[-1])[0][0, t]

    reference = predict(x)
    hidden = x.clone()
    hidden[:, t - 2:t + 3] += 3 * torch.randn(1, 5, 16)
    for got, want in zip(predict(hidden), reference):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    for offset in (-3, 3):
        seen = x.clone()
        seen[:, t + offset] += 3 * torch.randn(16)
        assert not torch.allclose(predict(seen)[0], reference[0])


def test_npc_padded_batch_equals_single_runs():
    _, model, _ = build("npc")
    model.eval()
    x = torch.randn(2, 40, 16)
    lengths = torch.tensor([40, 25])
    batched, _ = model.contextualize(x, lengths)
    single, _ = model.contextualize(x[1:, :25], lengths[1:])
    for layer_batched, layer_single in zip(batched, single):
        torch.testing.assert_close(layer_batched[1, :25], layer_single[0], rtol=1e-5, atol=1e-5)
        assert (layer_batched[1, 25:] == 0).all()


def test_npc_refuses_an_encoder_that_would_leak_the_mask():
    with pytest.raises(ConfigError, match="needs context: npc"):
        build_config(overrides={**TINY["npc"], "context": "gru"})
    cfg = build_config(overrides={**TINY["npc"], "encoder_kernels": [5], "encoder_strides": [1],
                                  "encoder_paddings": [2], "encoder_channels": 16})
    with pytest.raises(ConfigError, match="hides input frames t - 2 .. t \\+ 2"):
        build_objective(cfg, build_model(cfg.model))


def test_gumbel_quantizer_train_and_eval():
    torch.manual_seed(0)
    quantizer = GumbelQuantizer(dim=12, groups=3, codes=5)
    x = torch.randn(2, 7, 12)
    quantized, onehot = quantizer(x)
    assert onehot.shape == (2, 7, 3, 5)
    assert (onehot.sum(-1) == 1).all() and ((onehot == 0) | (onehot == 1)).all()
    codes = torch.einsum("btgv,gvd->btgd", onehot.detach(), quantizer.codebook).reshape(2, 7, 12)
    torch.testing.assert_close(quantized, codes)
    quantized.pow(2).sum().backward()
    assert quantizer.logit_weight.grad.abs().sum() > 0  # straight-through gradient to the logits
    assert quantizer.codebook.grad.abs().sum() > 0
    quantizer.eval()
    first, onehot = quantizer(x)
    second, _ = quantizer(x)
    assert first.equal(second)
    logits = torch.einsum("btgd,gdv->btgv", x.reshape(2, 7, 3, 4), quantizer.logit_weight) + quantizer.logit_bias
    assert onehot.argmax(-1).equal(logits.argmax(-1))


def test_npc_vq_objective_reports_code_usage():
    _, model, objective = build("npc_vq")
    batch = {"wavs": chirps(2, 0.5), "lengths": torch.tensor([8000, 8000])}
    loss, metrics = objective(model, batch)
    loss.backward()
    assert 1.0 <= float(metrics["code_perplexity"]) <= 8.0
    assert objective.quantizer.logit_weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.context.parameters())


# --- all three -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["apc", "mpc", "npc"])
def test_loss_drops_on_a_learnable_signal(name):
    cfg, model, objective = build(name)
    params = list(model.parameters()) + list(objective.parameters())
    optimizer = torch.optim.Adam(params, lr=3e-3)
    batch = {"wavs": chirps(4, 0.6), "lengths": torch.full((4,), 9600)}
    losses = []
    for _ in range(50):
        loss, _ = objective(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    first, last = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert last < 0.75 * first, losses


@pytest.mark.parametrize("name", ["apc", "mpc", "npc"])
def test_waveform_frontend_reads_encoder_frames_and_predicts_logmel(name):
    waveform = {"frontend": "waveform", "encoder_kernels": [10, 8, 4, 4, 4], "encoder_strides": [5, 4, 2, 2, 2],
                "encoder_paddings": [3, 2, 1, 1, 1], "encoder_channels": 16}
    cfg, model, objective = build(name, **waveform)
    wavs = chirps(2, 0.4)
    lengths = torch.tensor([6400, 4800])
    inputs, targets, frame_lengths = frames_of(model, objective, wavs, lengths)
    assert inputs.shape == (2, 40, 16) and targets.shape == (2, 40, 16)  # encoder channels, n_mels
    assert frame_lengths.tolist() == [40, 30]
    loss, _ = objective(model, {"wavs": wavs, "lengths": lengths})
    loss.backward()
    assert math.isfinite(float(loss.detach())) and model.encoder.blocks[0].conv.weight.grad.abs().sum() > 0
    if name == "mpc":
        with pytest.raises(ConfigError, match="mpc_freq_mask_bins needs frontend: logmel"):
            build_config(overrides={**TINY[name], **waveform, "mpc_freq_mask_bins": 4})


@pytest.mark.parametrize("objective_name", ["apc", "mpc", "npc"])
def test_train_save_load_extract(objective_name, tmp_path):
    small = Path(__file__).resolve().parents[1] / "recipes" / "conf" / f"{objective_name}_small.yaml"
    cfg = build_config(small, {"context_dim": 32, "context_heads": 2, "context_ff_dim": 64, "npc_vq_codes": 16,
                               "window_samples": 6400, "batch_size": 4, "max_steps": 3, "warmup_steps": 1,
                               "log_every": 1, "ckpt_every": 3, "num_workers": 0, "device": "cpu"})
    summary = train(cfg, DEMO, tmp_path / "exp", progress=False)
    assert summary["step"] == 3 and math.isfinite(summary["metrics"]["loss"])
    model = audiossl.load_model(summary["checkpoint"])
    assert model.config.objective.objective == objective_name
    wavs = chirps(2, 0.5)
    lengths = torch.tensor([8000, 6000])
    names = [n for n in model.layer_names if n != "encoder"]
    expected_layers = 5 if objective_name == "npc" else 4  # context + context_1..L
    assert len(names) == expected_layers
    with torch.no_grad():
        feats, _ = model.extract_features(wavs, lengths, layers=tuple(model.layer_names))
    for name, (values, frame_lengths) in feats.items():
        assert values.shape[:2] == (2, 50), name
        assert frame_lengths.tolist() == [50, 37]
        assert torch.isfinite(values).all()
        assert (values[1, 37:] == 0).all()
    assert feats["context"][0].shape[-1] == 32
