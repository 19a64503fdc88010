"""Contrastive scoring: negative sampling, candidate scores, InfoNCE / NCE.

The reference implementation (CPC_audio's ``CPCUnsupersivedCriterion``)
gathers every candidate encoding into a (steps x negatives x batch x frames x
dim) tensor and multiplies it element-wise with the predictions; on two CPU
cores that loss dominates the training step. Here the predictions are
multiplied against every encoded frame they may draw a candidate from, and
the sampled candidates' scores are gathered from that product by index.
Candidates are named by flat frame indices ``b * frames + t`` into the batch,
so any reference implementation given the same indices gives the same loss
(the tests check).

The product's size grows with the square of the batch: ``(steps,
batch*positions, batch*frames)``, 2.9 GB in fp32 for CPC at batch 64, and as
much again for the gather's gradient. Negatives from the prediction's own
sequence need only each sequence's frames, a product ``batch`` times smaller;
negatives from the whole batch are scored a few steps at a time, so that no
chunk's product exceeds :data:`SCORE_CHUNK_ELEMENTS` (neither matmul's nor
gather's backward keeps the product, so the backward's peak is one chunk's too).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from audiossl.models.lengths import length_mask


def sample_candidates(lengths: torch.Tensor, num_frames: int, num_steps: int, num_negatives: int,
                      policy: str = "batch") -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of the positive and the negatives for every prediction.

    Predictions are made from frames ``t < num_frames - num_steps`` for
    ``k = 1..num_steps``; the positive of (k, b, t) is frame ``t + k`` of
    sequence b.

    Args:
        lengths: (batch,) valid frames per sequence.
        num_frames: padded frames per sequence.
        policy: ``batch``: negatives drawn uniformly from every valid frame of
            the batch (with a ``same_speaker`` sampler that is a same-speaker
            draw); ``sequence``: from the valid frames of the positive's own
            sequence. Either way the positive itself is excluded and draws are
            with replacement. Under DDP, negatives come from this rank's batch
            only. CPC_audio draws from the batch like ``batch`` but does not
            exclude the positive.

    Returns:
        ``candidates`` (steps, batch * positions, 1 + negatives): column 0 the
        positive, then the negatives; ``valid`` (steps, batch * positions):
        False where ``t + k`` falls past the sequence's end.
    """
    device = lengths.device
    batch = lengths.shape[0]
    positions = num_frames - num_steps
    steps = torch.arange(1, num_steps + 1, device=device).view(-1, 1, 1)  # (K, 1, 1)
    t = torch.arange(positions, device=device).view(1, 1, -1)  # (1, 1, P)
    b = torch.arange(batch, device=device).view(1, -1, 1)  # (1, B, 1)
    target_t = t + steps  # (K, 1, P)
    positive = (b * num_frames + target_t).expand(num_steps, batch, positions)  # (K, B, P)
    valid = (target_t < lengths.view(1, -1, 1)).expand(num_steps, batch, positions)
    shape = (num_steps, batch, positions, num_negatives)
    if policy == "batch":
        frame_valid = length_mask(lengths, num_frames).flatten()  # (B*T,)
        valid_flat = frame_valid.nonzero().squeeze(1)  # (V,)
        rank = frame_valid.cumsum(0) - 1  # flat index -> position among valid frames
        draw = torch.randint(0, valid_flat.numel() - 1, shape, device=device)
        positive_rank = rank[positive].unsqueeze(-1)
        draw = draw + (draw >= positive_rank).long()  # skip the positive
        negatives = valid_flat[draw]
    elif policy == "sequence":
        span = (lengths - 1).clamp(min=1).view(1, -1, 1, 1).to(torch.float32)
        draw = (torch.rand(shape, device=device) * span).long()
        draw = draw + (draw >= target_t.unsqueeze(-1)).long()
        negatives = b.unsqueeze(-1) * num_frames + draw
    else:
        raise ValueError(f"unknown negative policy {policy!r}")
    candidates = torch.cat([positive.unsqueeze(-1), negatives], dim=-1)
    return candidates.reshape(num_steps, batch * positions, 1 + num_negatives), valid.reshape(num_steps, -1)


# Elements of one chunk's score product (256 MiB in fp32): CPC's CPU configs (batch 8, 12 x 928 x 1024)
# stay one chunk; at batch 64 on a GPU each step is its own chunk.
SCORE_CHUNK_ELEMENTS = 64 * 2**20


def score_candidates(predictions: torch.Tensor, z: torch.Tensor, candidates: torch.Tensor,
                     score: str = "bilinear", temperature: float = 1.0, per_sequence: bool = False,
                     max_elements: int = SCORE_CHUNK_ELEMENTS) -> torch.Tensor:
    """Scores of sampled candidates by matrix products and gathers.

    Args:
        predictions: (steps, batch * positions, dim), ``W_k c_t``.
        z: (batch, frames, dim) encoded frames.
        candidates: (steps, batch * positions, 1 + negatives) flat frame indices.
        score: ``bilinear``: ``z^T W_k c``; ``cosine``: cosine similarity of
            ``W_k c`` and ``z`` divided by ``temperature`` (NT-Xent, SimCLR).
        per_sequence: every candidate of a prediction is a frame of its own
            sequence (the ``sequence`` policy): each sequence's predictions
            are multiplied by its own frames only.
        max_elements: otherwise, the most scores one chunk of steps computes
            at once (at least one step per chunk).

    Returns:
        (steps, batch * positions, 1 + negatives) scores, the same either way.
    """
    if score == "cosine":
        predictions = F.normalize(predictions, dim=-1)
        z = F.normalize(z, dim=-1)
    elif score != "bilinear":
        raise ValueError(f"unknown score {score!r}")
    if per_sequence:
        scores = _sequence_scores(predictions, z, candidates)
    else:
        scores = _batch_scores(predictions, z.reshape(-1, z.shape[-1]), candidates, max_elements)
    return scores / temperature if score == "cosine" else scores


def _batch_scores(predictions: torch.Tensor, z_flat: torch.Tensor, candidates: torch.Tensor,
                  max_elements: int) -> torch.Tensor:
    """Candidates anywhere in the batch: ``(steps, B*P, B*T)`` products, a chunk of steps at a time."""
    num_steps, rows, _ = predictions.shape
    per_chunk = max(1, max_elements // max(1, rows * z_flat.shape[0]))
    chunks = []
    for k in range(0, num_steps, per_chunk):
        all_scores = torch.matmul(predictions[k:k + per_chunk], z_flat.t())  # (K', B*P, B*T)
        chunks.append(all_scores.gather(2, candidates[k:k + per_chunk]))
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


def _sequence_scores(predictions: torch.Tensor, z: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Candidates in the prediction's own sequence: one ``(K*P, T)`` product per sequence."""
    num_steps, rows, dim = predictions.shape
    batch, frames, _ = z.shape
    positions = rows // batch
    # Sequence-major, so that each sequence's predictions of every step are one matrix.
    preds = predictions.reshape(num_steps, batch, positions, dim).transpose(0, 1).reshape(batch, -1, dim)  # (B, K*P, D)
    offset = torch.arange(batch, device=candidates.device).view(1, batch, 1, 1) * frames
    local = (candidates.reshape(num_steps, batch, positions, -1) - offset).transpose(0, 1)  # (B, K, P, 1+N)
    local = local.reshape(batch, num_steps * positions, -1)
    all_scores = torch.bmm(preds, z.transpose(1, 2))  # (B, K*P, T)
    scores = all_scores.gather(2, local).view(batch, num_steps, positions, -1)
    return scores.transpose(0, 1).reshape(num_steps, rows, -1)


def contrastive_losses(scores: torch.Tensor, valid: torch.Tensor, loss: str = "infonce"
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step losses and accuracies from candidate scores (positive first).

    ``infonce``: cross-entropy of the positive against positive + negatives
    (CPC). ``nce``: binary logistic loss, positive labelled 1 and each negative
    0, summed over the candidates (wav2vec 1.0, Schneider et al. 2019).

    Returns:
        ``(loss_per_step (steps,), accuracy_per_step (steps,))``, averaged over
        the valid predictions; accuracy counts the positive ranked first.
    """
    scores = scores.float()
    if loss == "infonce":
        per_item = torch.logsumexp(scores, dim=-1) - scores[..., 0]
    elif loss == "nce":
        per_item = -F.logsigmoid(scores[..., 0]) - F.logsigmoid(-scores[..., 1:]).sum(-1)
    else:
        raise ValueError(f"unknown loss {loss!r}")
    weight = valid.float()
    count = weight.sum(-1).clamp(min=1)
    losses = (per_item * weight).sum(-1) / count
    correct = (scores.argmax(-1) == 0).float()
    accuracy = (correct * weight).sum(-1) / count
    return losses, accuracy


def mutual_information_bound(losses: torch.Tensor, num_negatives: int) -> torch.Tensor:
    """InfoNCE's lower bound on I(z_{t+k}; c_t): log(N + 1) - L_k, in nats."""
    return math.log(num_negatives + 1) - losses
