"""The naive contrastive loss, written the way CPC_audio's criterion computes it.

CPC_audio (``cpc/criterion/criterion.py``, ``CPCUnsupersivedCriterion`` and
``PredictionNetwork``) gathers every candidate encoding into a tensor of shape
(candidates, batch, positions, dim) per step and multiplies it element-wise
with the broadcast predictions. This module does the same for all steps at
once, (steps, candidates, batch * positions, dim), and computes the loss with
``F.cross_entropy`` one step at a time. It is slow and memory-hungry on
purpose: it shares no code with ``audiossl.objectives.infonce``, so the tests
can prove that the matrix-product-and-gather implementation gives the same
numbers for the same sampled indices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reference_scores(predictions: torch.Tensor, z: torch.Tensor, candidates: torch.Tensor,
                     score: str = "bilinear", temperature: float = 1.0) -> torch.Tensor:
    """Scores by gathering candidate vectors and multiplying element-wise.

    Args:
        predictions: (steps, batch * positions, dim).
        z: (batch, frames, dim).
        candidates: (steps, batch * positions, 1 + negatives) flat frame indices.

    Returns:
        (steps, 1 + negatives, batch * positions) scores.
    """
    z_flat = z.reshape(-1, z.shape[-1])
    gathered = z_flat[candidates.transpose(1, 2)]  # (K, 1+N, B*P, D)
    preds = predictions.unsqueeze(1)  # (K, 1, B*P, D)
    if score == "cosine":
        gathered = gathered / gathered.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        preds = preds / preds.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        return (preds * gathered).sum(-1) / temperature
    if score == "bilinear":
        return (preds * gathered).sum(-1)
    raise ValueError(f"unknown score {score!r}")


def reference_losses(predictions: torch.Tensor, z: torch.Tensor, candidates: torch.Tensor, valid: torch.Tensor,
                     score: str = "bilinear", temperature: float = 1.0, loss: str = "infonce"
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step losses and accuracies over the valid predictions.

    Returns:
        ``(losses (steps,), accuracies (steps,))``.
    """
    scores = reference_scores(predictions, z, candidates, score, temperature)
    losses, accuracies = [], []
    for k in range(scores.shape[0]):
        step_scores = scores[k].t()[valid[k]]  # (valid predictions, 1+N)
        if loss == "infonce":
            labels = torch.zeros(step_scores.shape[0], dtype=torch.long)
            losses.append(F.cross_entropy(step_scores, labels))
        elif loss == "nce":
            targets = torch.zeros_like(step_scores)
            targets[:, 0] = 1.0
            per_item = F.binary_cross_entropy_with_logits(step_scores, targets, reduction="none").sum(-1)
            losses.append(per_item.mean())
        else:
            raise ValueError(f"unknown loss {loss!r}")
        accuracies.append((step_scores.argmax(-1) == 0).float().mean())
    return torch.stack(losses), torch.stack(accuracies)
