"""CPC's scoring and loss variants against their textbook formulas, on
examples small enough to check by hand, and the negative-sampling policies'
promise that a positive is never its own negative."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from audiossl.objectives import cpc as cpc_module
from audiossl.objectives.cpc import CPCObjective
from audiossl.objectives.infonce import (
    contrastive_losses,
    mutual_information_bound,
    sample_candidates,
    score_candidates,
)

# One prediction step, three frames of two dimensions: predictions come from
# t = 0 and t = 1 (positives z_1 and z_2); one negative each (z_2 and z_0).
W = torch.tensor([[[1.0, 2.0], [0.0, -1.0]]])  # (steps, encoder_dim, context_dim)
C = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])  # (batch, frames, context_dim); c_2 predicts nothing
Z = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [0.0, 3.0]]])  # (batch, frames, encoder_dim)
CANDIDATES = torch.tensor([[[1, 2], [2, 0]]])  # (steps, predictions, 1 + negatives), flat frame indices
BILINEAR = [[2.0, 0.0], [-3.0, 1.0]]  # z^T W c: z_1.(1,0), z_2.(1,0); z_2.(2,-1), z_0.(2,-1)
TAU = 0.5
COSINE = [[1.0 / TAU, 0.0], [-1 / math.sqrt(5) / TAU, 1 / math.sqrt(10) / TAU]]  # cos(W c, z) / tau


def objective(score: str = "bilinear", loss: str = "infonce") -> CPCObjective:
    obj = CPCObjective(context_dim=2, encoder_dim=2, num_steps=1, num_negatives=1, score=score,
                       temperature=TAU, loss=loss)
    with torch.no_grad():
        obj.weight.copy_(W)
    return obj


@pytest.mark.parametrize("score, expected", [("bilinear", BILINEAR), ("cosine", COSINE)])
def test_scores_equal_the_formula(score, expected):
    predictions = objective(score).predict(C)  # (1, 2, 2): W c_0, W c_1
    torch.testing.assert_close(predictions, torch.tensor([[[1.0, 0.0], [2.0, -1.0]]]))
    scores = score_candidates(predictions, Z, CANDIDATES, score, TAU)
    torch.testing.assert_close(scores, torch.tensor([expected]))


def infonce_by_hand(rows):
    """-log softmax of the positive (column 0), averaged over rows."""
    return sum(-math.log(math.exp(r[0]) / sum(math.exp(s) for s in r)) for r in rows) / len(rows)


def nce_by_hand(rows):
    """-log sigma(s+) - sum log sigma(-s-), averaged over rows."""
    sigma = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    return sum(-math.log(sigma(r[0])) - sum(math.log(sigma(-s)) for s in r[1:]) for r in rows) / len(rows)


@pytest.mark.parametrize("loss, by_hand", [("infonce", infonce_by_hand), ("nce", nce_by_hand)])
@pytest.mark.parametrize("rows", [BILINEAR, COSINE, [[0.5, 0.5, -1.0, 2.0], [3.0, 0.0, 0.0, -2.0]]])
def test_losses_equal_the_formula(loss, by_hand, rows):
    scores = torch.tensor([rows])
    valid = torch.ones(1, len(rows), dtype=torch.bool)
    losses, accuracy = contrastive_losses(scores, valid, loss)
    assert float(losses[0]) == pytest.approx(by_hand(rows), rel=1e-6)
    assert float(accuracy[0]) == pytest.approx(sum(r[0] > max(r[1:]) for r in rows) / len(rows))
    # Invalid predictions (past the sequence's end) are left out of both.
    valid[0, 1] = False
    losses, accuracy = contrastive_losses(scores, valid, loss)
    assert float(losses[0]) == pytest.approx(by_hand(rows[:1]), rel=1e-6)


def test_hand_values():
    # The same numbers written out, so a reader can check the helpers above.
    assert infonce_by_hand(BILINEAR) == pytest.approx((math.log(1 + math.exp(-2)) + math.log(1 + math.exp(4))) / 2)
    assert nce_by_hand(BILINEAR) == pytest.approx(
        (math.log(1 + math.exp(-2)) + math.log(2) + math.log(1 + math.exp(3)) + math.log(1 + math.exp(1))) / 2)
    assert float(mutual_information_bound(torch.tensor(1.5), 127)) == pytest.approx(math.log(128) - 1.5)


class FixedFrames(nn.Module):
    """A model whose z and c are the hand-made tensors above."""

    def encode(self, wavs, lengths):
        return Z, torch.tensor([3])

    def contextualize(self, z, lengths, state=None):
        return [C], None


@pytest.mark.parametrize("score, scores", [("bilinear", BILINEAR), ("cosine", COSINE)])
@pytest.mark.parametrize("loss, by_hand", [("infonce", infonce_by_hand), ("nce", nce_by_hand)])
def test_cpc_objective_composes_the_variants(monkeypatch, score, scores, loss, by_hand):
    fixed = (CANDIDATES, torch.ones(1, 2, dtype=torch.bool))
    monkeypatch.setattr(cpc_module, "sample_candidates", lambda *args, **kwargs: fixed)
    batch = {"wavs": torch.zeros(1, 480), "lengths": torch.tensor([480])}
    total, metrics = objective(score, loss)(FixedFrames(), batch)
    assert float(total.detach()) == pytest.approx(by_hand(scores), rel=1e-6)
    assert float(metrics["accuracy"]) == pytest.approx(0.5)


@pytest.mark.parametrize("policy", ["batch", "sequence"])
def test_positive_is_never_its_own_negative(policy):
    torch.manual_seed(0)
    num_frames, steps, negatives = 12, 3, 16
    lengths = torch.tensor([12, 9, 5, 7])
    frame_of = torch.arange(4 * num_frames)
    sequence_of, t_of = frame_of // num_frames, frame_of % num_frames
    seen = torch.zeros(4 * num_frames, dtype=torch.bool)  # negatives ever drawn for one prediction
    for _ in range(300):
        candidates, valid = sample_candidates(lengths, num_frames, steps, negatives, policy)
        positive, drawn = candidates[..., :1], candidates[..., 1:]
        assert not (drawn == positive)[valid].any()
        # Every negative of a valid prediction is a real (unpadded) frame.
        assert (t_of[drawn] < lengths[sequence_of[drawn]])[valid].all()
        if policy == "sequence":
            assert (sequence_of[drawn] == sequence_of[positive])[valid].all()
        seen[drawn[0, 1]] = True  # step 1, prediction from frame 1 of sequence 0: positive frame 2
    expected = t_of < lengths[sequence_of]
    if policy == "sequence":
        expected &= sequence_of == 0
    expected[2] = False
    assert seen.equal(expected)  # every other allowed frame does get drawn
