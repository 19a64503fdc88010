"""Contrastive predictive coding (van den Oord et al. 2018).

From the context ``c_t`` the objective predicts the encoded frames
``z_{t+k}``, ``k = 1..K``, with one bilinear map ``W_k`` per step: the score
of a candidate ``z`` is ``z^T W_k c_t``. Each prediction is scored against
its positive and N negatives; per-step InfoNCE losses are summed.

Reference flags (CPC_audio): ``--nPredicts`` = ``cpc_steps`` (12),
``--negativeSamplingExt`` = ``cpc_negatives`` (128), ``--samplingType
samespeaker`` = data ``sampler: same_speaker`` with ``cpc_negative_policy:
batch``, ``--samplingType samesequence`` = ``cpc_negative_policy: sequence``.
Predictions are made for ``t < frames - K`` at every step, as CPC_audio does.
CPC_audio's prediction network is a linear layer with a bias; ``W_k`` here
has none, as in the paper. Negatives are drawn from this rank's batch only.
"""

from __future__ import annotations

import torch
from torch import nn

from audiossl.config import Config
from audiossl.objectives.infonce import (contrastive_losses, mutual_information_bound, sample_candidates,
                                         score_candidates)


class CPCObjective(nn.Module):
    """Multi-step InfoNCE with a bilinear ``W_k`` per prediction step.

    Args:
        context_dim: size of ``c``.
        encoder_dim: size of ``z``.
        num_steps: K.
        num_negatives: N per positive.
        negative_policy: ``batch`` | ``sequence`` (see ``sample_candidates``).
        score: ``bilinear`` (paper) | ``cosine`` (divided by ``temperature``).
        loss: ``infonce`` (paper) | ``nce`` (binary logistic, wav2vec 1.0).
    """

    def __init__(self, context_dim: int, encoder_dim: int, num_steps: int = 12, num_negatives: int = 128,
                 negative_policy: str = "batch", score: str = "bilinear", temperature: float = 0.1,
                 loss: str = "infonce"):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_steps, encoder_dim, context_dim))  # W_k: c -> z space
        nn.init.xavier_uniform_(self.weight.view(num_steps * encoder_dim, context_dim))
        self.num_steps, self.num_negatives = num_steps, num_negatives
        self.negative_policy, self.score, self.temperature, self.loss = negative_policy, score, temperature, loss

    @classmethod
    def from_config(cls, cfg: Config, model: nn.Module) -> "CPCObjective":
        o = cfg.objective
        return cls(model.context_dim, model.encoder_dim, o.cpc_steps, o.cpc_negatives, o.cpc_negative_policy,
                   o.cpc_score, o.cpc_temperature, o.cpc_loss)

    def predict(self, c: torch.Tensor) -> torch.Tensor:
        """(batch, frames, context_dim) -> (steps, batch * positions, encoder_dim)."""
        positions = c.shape[1] - self.num_steps
        preds = torch.einsum("btc,kdc->kbtd", c[:, :positions], self.weight)  # (K, B, P, D)
        return preds.reshape(self.num_steps, -1, preds.shape[-1])

    def forward(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z, lengths = model.encode(batch["wavs"], batch["lengths"])
        layers, _ = model.contextualize(z, lengths)
        frames = z.shape[1]
        if frames <= self.num_steps:
            raise ValueError(f"{frames} frames per window, but cpc_steps={self.num_steps}: use longer windows")
        candidates, valid = sample_candidates(lengths, frames, self.num_steps, self.num_negatives,
                                              self.negative_policy)
        scores = score_candidates(self.predict(layers[-1]), z, candidates, self.score, self.temperature)
        losses, accuracy = contrastive_losses(scores, valid, self.loss)
        metrics = {"loss": losses.sum().detach(), "accuracy": accuracy.mean().detach()}
        bound = mutual_information_bound(losses.detach(), self.num_negatives)
        for k in range(self.num_steps):
            metrics[f"loss_k{k + 1}"] = losses[k].detach()
            metrics[f"accuracy_k{k + 1}"] = accuracy[k].detach()
            if self.loss == "infonce":
                metrics[f"mi_bound_k{k + 1}"] = bound[k]
        return losses.sum(), metrics
