"""CPC: the fast InfoNCE equals the naive reference, negative sampling, learning."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from audiossl.config import ConfigError, build_config
from audiossl.models.model import build_model
from audiossl.objectives import build_objective
from audiossl.objectives import cpc as cpc_module
from audiossl.objectives.cpc import CPCObjective
from audiossl.objectives.infonce import SCORE_CHUNK_ELEMENTS, contrastive_losses, sample_candidates, score_candidates

from reference_infonce import reference_losses, reference_scores


@pytest.mark.parametrize("policy", ["batch", "sequence"])
@pytest.mark.parametrize("score", ["bilinear", "cosine"])
@pytest.mark.parametrize("loss", ["infonce", "nce"])
def test_fast_scores_equal_naive_reference(policy, score, loss):
    torch.manual_seed(0)
    batch, frames, steps, negatives, dim = 3, 15, 4, 6, 5
    lengths = torch.tensor([15, 11, 9])
    z = torch.randn(batch, frames, dim, dtype=torch.float64, requires_grad=True)
    preds = torch.randn(steps, batch * (frames - steps), dim, dtype=torch.float64, requires_grad=True)
    candidates, valid = sample_candidates(lengths, frames, steps, negatives, policy)
    assert candidates.shape == (steps, batch * (frames - steps), 1 + negatives)
    assert valid.any() and not valid.all()

    fast_scores = score_candidates(preds, z, candidates, score, temperature=0.1, per_sequence=policy == "sequence")
    slow_scores = reference_scores(preds, z, candidates, score, temperature=0.1)
    torch.testing.assert_close(fast_scores, slow_scores.transpose(1, 2))

    fast_loss, fast_acc = contrastive_losses(fast_scores, valid, loss)
    slow_loss, slow_acc = reference_losses(preds, z, candidates, valid, score, 0.1, loss)
    torch.testing.assert_close(fast_loss, slow_loss.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast_acc, slow_acc)

    weights = torch.arange(1, steps + 1, dtype=torch.float64)  # distinct weight per step
    fast_grads = torch.autograd.grad((fast_loss.double() * weights).sum(), (preds, z))
    slow_grads = torch.autograd.grad((slow_loss * weights).sum(), (preds, z))
    for fast, slow in zip(fast_grads, slow_grads):
        assert slow.abs().sum() > 0
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-6)  # fp32 loss


def scores_and_grads(preds: torch.Tensor, z: torch.Tensor, candidates: torch.Tensor, score: str, **options):
    """Scores of ``score_candidates`` and the gradients of a fixed weighting of them w.r.t. preds and z."""
    scores = score_candidates(preds, z, candidates, score, temperature=0.1, **options)
    weights = torch.randn(scores.shape, dtype=scores.dtype, generator=torch.Generator().manual_seed(2))
    return scores, torch.autograd.grad((scores * weights).sum(), (preds, z))


def assert_same_scores(got, want):
    for a, b in zip((got[0], *got[1]), (want[0], *want[1])):
        assert a.shape == b.shape
        assert torch.allclose(a, b, rtol=0, atol=1e-12), (a - b).abs().max()


def scoring_inputs(policy: str, steps: int = 5):
    torch.manual_seed(0)
    batch, frames, negatives, dim = 3, 14, 6, 5
    lengths = torch.tensor([14, 10, 8])
    z = torch.randn(batch, frames, dim, dtype=torch.float64, requires_grad=True)
    preds = torch.randn(steps, batch * (frames - steps), dim, dtype=torch.float64, requires_grad=True)
    candidates, _ = sample_candidates(lengths, frames, steps, negatives, policy)
    return preds, z, candidates


@pytest.mark.parametrize("score", ["bilinear", "cosine"])
@pytest.mark.parametrize("max_elements", [1, 2 * 27 * 42, 4 * 27 * 42 + 5])  # 1, 2 and 4 of the 5 steps per chunk
def test_chunked_scores_equal_one_product(score, max_elements):
    preds, z, candidates = scoring_inputs("batch")
    whole = scores_and_grads(preds, z, candidates, score)
    chunked = scores_and_grads(preds, z, candidates, score, max_elements=max_elements)
    assert_same_scores(chunked, whole)


def test_default_chunk_holds_the_cpu_configs_products():
    """CPC at batch 8 (12 steps, 116 positions, 128 frames) is one chunk: no slower than one product."""
    batch, frames, steps = 8, 128, 12
    assert steps * batch * (frames - steps) * batch * frames <= SCORE_CHUNK_ELEMENTS


@pytest.mark.parametrize("score", ["bilinear", "cosine"])
def test_per_sequence_scores_equal_the_batch_product(score):
    preds, z, candidates = scoring_inputs("sequence")
    whole = scores_and_grads(preds, z, candidates, score)
    per_sequence = scores_and_grads(preds, z, candidates, score, per_sequence=True)
    assert_same_scores(per_sequence, whole)


@pytest.mark.parametrize("score", ["bilinear", "cosine"])
def test_cpc_loss_with_the_sequence_policy_is_unchanged(monkeypatch, score):
    """The objective's per-sequence scoring gives the loss and gradients of scoring against the whole batch."""
    cfg = tiny_cfg(cpc_negative_policy="sequence", cpc_score=score)
    torch.manual_seed(0)
    model = build_model(cfg.model).double()
    objective = CPCObjective.from_config(cfg, model).double()
    batch = toy_batch(torch.Generator().manual_seed(1), 3, 3200)
    batch["wavs"] = batch["wavs"].double()
    params = list(model.parameters()) + list(objective.parameters())

    def run():
        torch.manual_seed(5)  # the same negatives both times
        loss, _ = objective(model, batch)
        return loss, torch.autograd.grad(loss, params)

    fast = run()
    full = cpc_module.score_candidates
    monkeypatch.setattr(cpc_module, "score_candidates",
                        lambda *args, per_sequence, **kwargs: full(*args, **kwargs))
    slow = run()
    # contrastive_losses works in fp32 whatever the scores' precision: equal to its rounding.
    torch.testing.assert_close(fast[0], slow[0], rtol=1e-6, atol=1e-7)
    for got, want in zip(fast[1], slow[1]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def decode(candidates: torch.Tensor, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.div(candidates, frames, rounding_mode="floor"), candidates % frames


@pytest.mark.parametrize("policy", ["batch", "sequence"])
def test_negatives_exclude_the_positive_and_stay_valid(policy):
    torch.manual_seed(0)
    frames, steps, negatives = 10, 3, 50
    lengths = torch.tensor([10, 7, 4])
    batch, positions = len(lengths), frames - steps
    candidates, valid = sample_candidates(lengths, frames, steps, negatives, policy)
    seq, t = decode(candidates, frames)

    # Column 0 is frame t + k of the prediction's own sequence.
    k = torch.arange(1, steps + 1).view(-1, 1, 1)
    pos_t = (torch.arange(positions).view(1, 1, -1) + k).expand(steps, batch, positions).reshape(steps, -1)
    own = torch.arange(batch).view(1, -1, 1).expand(steps, batch, positions).reshape(steps, -1)
    assert torch.equal(seq[..., 0], own) and torch.equal(t[..., 0], pos_t)
    assert torch.equal(valid, pos_t < lengths[own])

    neg = candidates[..., 1:][valid]  # (valid predictions, negatives)
    neg_seq, neg_t = seq[..., 1:][valid], t[..., 1:][valid]
    assert (neg != candidates[..., :1][valid]).all()
    assert (neg_t < lengths[neg_seq]).all()  # never a padded frame
    if policy == "sequence":
        assert (neg_seq == own[valid].unsqueeze(-1)).all()
    else:
        assert len(set(neg_seq.flatten().tolist())) == batch
    # Every valid frame can be drawn.
    drawn = set(neg.flatten().tolist())
    assert drawn == {b * frames + f for b, n in enumerate(lengths.tolist()) for f in range(n)}


@pytest.mark.parametrize("policy", ["batch", "sequence"])
def test_negatives_are_uniform_over_the_other_frames(policy):
    torch.manual_seed(0)
    lengths = torch.tensor([9, 6])
    candidates, valid = sample_candidates(lengths, 9, 2, 6000, policy)
    row = candidates[1, 2]  # step 2, sequence 0, t = 2: the positive is frame 4
    assert valid[1, 2] and int(row[0]) == 4
    counts = Counter(row[1:].tolist())
    options = 8 if policy == "sequence" else 9 + 6 - 1
    assert len(counts) == options and 4 not in counts
    expected = 6000 / options
    assert all(abs(c - expected) < 0.25 * expected for c in counts.values())


def tiny_cfg(**settings):
    return build_config(overrides={
        "window_samples": 3200, "encoder_channels": 32, "context_dim": 32, "cpc_steps": 3,
        "cpc_negatives": 8, "batch_size": 8, **settings})


def toy_batch(generator: torch.Generator, batch: int, samples: int) -> dict:
    """Each window two sinusoids whose frequencies drift slowly, a random gain, a little noise.

    Frequencies are log-uniform in 100 Hz - 3 kHz and drift by up to 20 % over
    the window; what a window sounds like is predictable from its past and
    differs from window to window, which is what CPC learns to use.
    """
    t = torch.arange(samples) / 16000.0
    start = torch.exp(math.log(100) + math.log(30) * torch.rand(batch, 2, 1, generator=generator))
    freq = start * (1 + 0.2 * (2 * torch.rand(batch, 2, 1, generator=generator) - 1) * t / t[-1])
    phase = 2 * torch.pi * torch.cumsum(freq, dim=-1) / 16000.0
    gain = 0.1 + 1.9 * torch.rand(batch, 1, generator=generator)
    wavs = gain * torch.sin(phase).sum(1) / 2 + 0.02 * torch.randn(batch, samples, generator=generator)
    return {"wavs": wavs, "lengths": torch.full((batch,), samples)}


def test_cpc_learns_a_toy_signal(one_thread):
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = build_model(cfg.model)
    objective = build_objective(cfg, model)
    params = list(model.parameters()) + list(objective.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    losses, accuracies = [], []
    for _ in range(40):
        loss, metrics = objective(model, toy_batch(generator, 8, 3200))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(float(metrics["loss"]))
        accuracies.append(float(metrics["accuracy"]))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first == pytest.approx(cfg.objective.cpc_steps * math.log(cfg.objective.cpc_negatives + 1), abs=0.5)
    assert last < first - 1.0, losses
    assert sum(accuracies[-5:]) / 5 > sum(accuracies[:5]) / 5 + 0.1, accuracies


@pytest.mark.parametrize("loss_name", ["infonce", "nce"])
def test_per_step_metrics(loss_name):
    torch.manual_seed(0)
    cfg = tiny_cfg(cpc_loss=loss_name)
    model = build_model(cfg.model)
    objective = CPCObjective.from_config(cfg, model)
    loss, metrics = objective(model, toy_batch(torch.Generator().manual_seed(1), 4, 3200))
    assert loss.requires_grad and loss.dim() == 0
    assert all(not v.requires_grad and v.dim() == 0 for v in metrics.values())
    steps = range(1, cfg.objective.cpc_steps + 1)
    torch.testing.assert_close(metrics["loss"], sum(metrics[f"loss_k{k}"] for k in steps))
    torch.testing.assert_close(metrics["loss"], loss.detach())
    # Full windows: every step scores batch x (frames - K) predictions, so each accuracy is a whole count of
    # them (a mean over the wrong items, or over padding, would not be), and the accuracy is their mean.
    predictions = 4 * (int(model.output_lengths(torch.tensor([3200]))) - cfg.objective.cpc_steps)
    torch.testing.assert_close(metrics["accuracy"], torch.stack([metrics[f"accuracy_k{k}"] for k in steps]).mean())
    for k in steps:
        correct = float(metrics[f"accuracy_k{k}"]) * predictions
        assert abs(correct - round(correct)) < 1e-3, (k, correct)
        if loss_name == "infonce":
            expected = math.log(cfg.objective.cpc_negatives + 1) - float(metrics[f"loss_k{k}"])
            assert float(metrics[f"mi_bound_k{k}"]) == pytest.approx(expected, abs=1e-5)
        else:
            assert f"mi_bound_k{k}" not in metrics
    assert f"loss_k{cfg.objective.cpc_steps + 1}" not in metrics


def test_too_few_frames_for_the_steps():
    cfg = tiny_cfg(cpc_steps=3)
    model = build_model(cfg.model)
    objective = CPCObjective.from_config(cfg, model)
    with pytest.raises(ValueError, match="cpc_steps"):
        objective(model, {"wavs": torch.randn(2, 480), "lengths": torch.tensor([480, 480])})  # 3 frames


def test_transformer_predictor_is_causal():
    """Perturbing c after frame t leaves every step's prediction made at t unchanged (CPC_audio masks too)."""
    torch.manual_seed(0)
    cfg = tiny_cfg(cpc_predictor="transformer")
    model = build_model(cfg.model)
    objective = build_objective(cfg, model).eval()
    frames = int(model.output_lengths(torch.tensor([cfg.data.window_samples])))
    c = torch.randn(2, frames, cfg.model.context_dim)
    t = 6
    perturbed = c.clone()
    perturbed[:, t + 1:] += 5 * torch.randn_like(perturbed[:, t + 1:])
    with torch.no_grad():
        before = objective.predict(c).view(cfg.objective.cpc_steps, 2, -1, model.encoder_dim)
        after = objective.predict(perturbed).view_as(before)
    torch.testing.assert_close(before[:, :, :t + 1], after[:, :, :t + 1], atol=1e-5, rtol=0)
    assert (before[:, :, t + 1:] - after[:, :, t + 1:]).abs().amax() > 1e-2


def test_transformer_predictor_trains_and_refuses_other_sizes(one_thread):
    torch.manual_seed(0)
    cfg = tiny_cfg(cpc_predictor="transformer")
    model = build_model(cfg.model)
    objective = build_objective(cfg, model)
    params = list(model.parameters()) + list(objective.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        loss, _ = objective(model, toy_batch(generator, 8, cfg.data.window_samples))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    with pytest.raises(ValueError, match="positions"):
        objective.predict(torch.randn(1, 30, cfg.model.context_dim))
    with pytest.raises(ConfigError, match="context_dim == encoder_channels"):
        tiny_cfg(cpc_predictor="transformer", context_dim=16)
