"""wav2vec 2.0 (Baevski, Zhou, Mohamed and Auli 2020, "wav2vec 2.0: A Framework for Self-Supervised
Learning of Speech Representations").

The encoder's frames z are masked in spans (:mod:`audiossl.objectives.masking`:
p = 0.065, M = 10, a learned mask embedding) before the bidirectional
Transformer context network; the targets are the unmasked z quantized by a
product quantizer (:mod:`audiossl.objectives.quantizer`: G = 2 codebooks of
V = 320 entries, Gumbel softmax with its temperature annealed from 2 by a
factor 0.999995 per update down to 0.5). For each masked frame t the
contrastive loss is the cross-entropy of picking the projected target q_t
among q_t and K = 100 distractors: the targets of other masked frames of the
same utterance, drawn uniformly with replacement, never frame t itself
(distractors whose codes equal q_t's are left out of the softmax, as
fairseq's ``neg_is_pos``), scored by cosine similarity / kappa (0.1). The
loss is the contrastive loss (mean over masked frames) + alpha (0.1) x the
codebook diversity loss + 10 x the mean squared value of z (the feature
penalty); the encoder's gradient is scaled by 0.1 (fairseq's
``feature_grad_mult``). Negatives come from this rank's batch only, from the
same utterance.

Our settings against fairseq's ``wav2vec2_base_librispeech.yaml``:
``w2v2_mask_prob`` x ``w2v2_mask_span`` = ``mask_prob`` (0.65),
``w2v2_mask_span`` = ``mask_length`` (10); ``w2v2_codebook_groups`` /
``w2v2_codebook_entries`` = ``latent_groups`` / ``latent_vars`` (2 / 320);
``w2v2_final_dim`` = ``final_dim`` (256; the quantized vectors are as wide,
``latent_dim: 0``); ``w2v2_temp_start`` / ``w2v2_temp_end`` /
``w2v2_temp_decay`` = ``latent_temp`` (2, 0.5, 0.999995);
``w2v2_negatives`` = ``num_negatives`` (100); ``w2v2_logit_temp`` =
``logit_temp`` (0.1); ``w2v2_diversity_weight`` and
``w2v2_feature_penalty`` = ``loss_weights`` (0.1, 10);
``w2v2_feature_grad_mult`` = ``feature_grad_mult`` (0.1). fairseq's layer
norm of z after the feature penalty is the model's ``context_input_norm``
(the ``w2v2_paper`` preset sets it): the context network and the quantizer
read ``model.normalize(z)``, so the penalty shrinks z without starving either
(without the norm it drove z to zero), and extraction runs the same norm.
Differences: fairseq's dropout on z is not applied; the mask
embedding is added at the encoder's width (see ``MaskedEncoding``); the
temperature's update count is the objective's own count of training
micro-batches divided by ``accumulate`` (kept in its state, so a resumed run
continues the schedule; a step skipped for a non-finite loss still counts).
With ``augment: past`` the context reads the augmented audio and the targets
are the clean audio's (a second encoder pass), as for CPC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from audiossl.models.lengths import length_mask
from audiossl.objectives.masking import MaskedEncoding, feature_penalty, scale_gradient
from audiossl.objectives.quantizer import ProductQuantizer, perplexity
from audiossl.settings import ConfigError

if TYPE_CHECKING:  # annotations only: the config module imports the objectives' registry
    from audiossl.config import Config

__all__ = ["W2V2Objective", "W2V2Settings", "check_masked_context", "contrastive_loss", "gather_masked",
           "sample_negatives"]


def gather_masked(mask: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The masked frames of each row first, in time order: ``valid`` (batch, N) bool, then each tensor's
    (batch, frames, ...) gathered to (batch, N, ...), N the most masked frames of any row."""
    counts = mask.sum(1)
    num = max(int(counts.max()), 1)
    order = (~mask).to(torch.int8).argsort(dim=1, stable=True)[:, :num]  # masked positions first, in order
    valid = torch.arange(num, device=mask.device)[None, :] < counts[:, None]
    out = []
    for t in tensors:
        index = order.reshape(*order.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
        out.append(t.gather(1, index))
    return (valid, *out)


def sample_negatives(valid: torch.Tensor, num_negatives: int) -> torch.Tensor:
    """(batch, N, K) indices of K distractors per masked frame: uniform with replacement over the other masked
    frames of its row (fairseq's ``sample_negatives``: ``neg_idxs[neg_idxs >= tszs] += 1``)."""
    counts = valid.sum(1)  # (B,)
    num = valid.shape[1]
    draw = torch.rand(valid.shape[0], num, num_negatives, device=valid.device)
    index = (draw * (counts - 1).clamp(min=0)[:, None, None]).floor().long()
    index = index + (index >= torch.arange(num, device=valid.device)[None, :, None]).long()
    return torch.minimum(index, (counts - 1).clamp(min=0)[:, None, None])  # a lone masked frame: itself


def contrastive_loss(predictions: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, negatives: torch.Tensor,
                     target_ids: torch.Tensor, logit_temp: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """wav2vec 2.0's loss on the masked frames.

    Args:
        predictions, targets: (batch, N, dim) the masked frames' projected context and targets.
        valid: (batch, N) bool, real masked frames.
        negatives: (batch, N, K) the distractors' indices along N (:func:`sample_negatives`).
        target_ids: (batch, N) int64 naming each target (its codes): a distractor with the positive's id is
            left out.
        logit_temp: kappa.

    Returns:
        The mean cross-entropy over valid frames, float32, and the fraction whose positive scored
        strictly above every distractor; a frame whose distractors were all left out counts as wrong (it
        discriminated nothing: fairseq's rule, so that a collapsed codebook shows as accuracy 0, not 1).
    """
    x = F.normalize(predictions.float(), dim=-1, eps=1e-8)
    y = F.normalize(targets.float(), dim=-1, eps=1e-8)
    positive = (x * y).sum(-1, keepdim=True)  # (B, N, 1)
    scores = torch.bmm(x, y.transpose(1, 2)).gather(2, negatives)  # (B, N, K)
    same = target_ids.gather(1, negatives.flatten(1)).view_as(negatives) == target_ids[..., None]
    scores = scores.masked_fill(same, float("-inf"))
    logits = torch.cat([positive, scores], dim=-1) / logit_temp  # (B, N, 1 + K)
    losses = -logits.log_softmax(-1)[..., 0]
    weight = valid.float()
    count = weight.sum().clamp(min=1.0)
    best = scores.max(-1).values
    correct = ((positive[..., 0] > best) & (best > float("-inf"))).float()
    return (losses * weight).sum() / count, (correct * weight).sum() / count


def check_masked_context(cfg: Config, name: str, prob: float, span: int, grad_mult: float) -> None:
    """The checks wav2vec 2.0 and HuBERT share: the mask, the gradient scale and a bidirectional Transformer."""
    if not 0.0 < prob < 1.0:
        raise ConfigError(f"config key '{name}_mask_prob' must be in (0, 1), got {prob}")
    if span < 1:
        raise ConfigError(f"config key '{name}_mask_span' must be positive, got {span}")
    if not 0.0 <= grad_mult <= 1.0:
        raise ConfigError(f"config key '{name}_feature_grad_mult' must be in [0, 1], got {grad_mult}")
    if not cfg.model.bidirectional or cfg.model.context != "transformer":
        raise ConfigError(f"objective {name} needs a bidirectional Transformer (context: transformer, "
                          "context_causal: false)")


@dataclass
class W2V2Settings:
    w2v2_mask_prob: float = 0.065  # probability that a frame starts a masked span (fairseq mask_prob = this x span)
    w2v2_mask_span: int = 10  # frames per masked span (M)
    w2v2_codebook_groups: int = 2  # G codebooks of the product quantizer
    w2v2_codebook_entries: int = 320  # V entries per codebook
    w2v2_final_dim: int = 256  # size of the projected context and quantized targets compared
    w2v2_temp_start: float = 2.0  # Gumbel softmax temperature at step 0
    w2v2_temp_end: float = 0.5  # ... never below this
    w2v2_temp_decay: float = 0.999995  # ... multiplied by this every update
    w2v2_negatives: int = 100  # K distractors per masked frame, from the utterance's other masked frames
    w2v2_logit_temp: float = 0.1  # kappa: cosine similarities are divided by it
    w2v2_diversity_weight: float = 0.1  # alpha, weight of the codebook diversity loss
    w2v2_feature_penalty: float = 10.0  # weight of the mean squared encoder output
    w2v2_feature_grad_mult: float = 0.1  # scale of the encoder's gradient


class W2V2Objective(nn.Module):
    """Contrastive prediction of the quantized encoder output at masked frames (wav2vec 2.0).

    Args:
        encoder_dim, context_dim: sizes of z and c.
        settings: the ``w2v2_*`` keys.
        accumulate: micro-batches per update (the temperature's step counts updates).
    """

    Settings = W2V2Settings

    def __init__(self, encoder_dim: int, context_dim: int, settings: W2V2Settings, accumulate: int = 1):
        super().__init__()
        s = self.settings = settings
        self.accumulate = accumulate
        self.masking = MaskedEncoding(encoder_dim, s.w2v2_mask_prob, s.w2v2_mask_span, s.w2v2_feature_grad_mult)
        self.quantizer = ProductQuantizer(encoder_dim, s.w2v2_codebook_groups, s.w2v2_codebook_entries,
                                          s.w2v2_final_dim)
        self.project_q = nn.Linear(s.w2v2_final_dim, s.w2v2_final_dim)
        self.final_proj = nn.Linear(context_dim, s.w2v2_final_dim)
        self.register_buffer("micro_batches", torch.zeros((), dtype=torch.long))  # training forwards so far

    @staticmethod
    def check(cfg: Config) -> None:
        """Refuse impossible wav2vec 2.0 settings and a context network it cannot train."""
        o = cfg.objective
        check_masked_context(cfg, "w2v2", o.w2v2_mask_prob, o.w2v2_mask_span, o.w2v2_feature_grad_mult)
        if o.w2v2_codebook_groups < 1 or o.w2v2_codebook_entries < 2 or o.w2v2_negatives < 1:
            raise ConfigError("w2v2 needs w2v2_codebook_groups >= 1, w2v2_codebook_entries >= 2 and "
                              "w2v2_negatives >= 1")
        if o.w2v2_final_dim < 1 or o.w2v2_final_dim % o.w2v2_codebook_groups:
            raise ConfigError(f"w2v2_final_dim {o.w2v2_final_dim} must be positive and divisible by "
                              f"w2v2_codebook_groups {o.w2v2_codebook_groups}")
        if not 0 < o.w2v2_temp_end <= o.w2v2_temp_start or not 0 < o.w2v2_temp_decay <= 1:
            raise ConfigError("w2v2 needs 0 < w2v2_temp_end <= w2v2_temp_start and 0 < w2v2_temp_decay <= 1")
        if o.w2v2_logit_temp <= 0 or o.w2v2_diversity_weight < 0 or o.w2v2_feature_penalty < 0:
            raise ConfigError("w2v2 needs a positive w2v2_logit_temp and non-negative w2v2_diversity_weight "
                              "and w2v2_feature_penalty")

    @staticmethod
    def check_window(cfg: Config, num_frames: int) -> None:
        if num_frames <= cfg.objective.w2v2_mask_span:
            raise ConfigError(f"window_samples {cfg.data.window_samples} gives {num_frames} frames; objective w2v2 "
                              f"needs more than w2v2_mask_span={cfg.objective.w2v2_mask_span}")

    @classmethod
    def from_config(cls, cfg: Config, model: nn.Module) -> "W2V2Objective":
        settings = W2V2Settings(**{k: getattr(cfg.objective, k) for k in W2V2Settings.__dataclass_fields__})
        return cls(model.encoder_dim, model.context_dim, settings, cfg.train.accumulate)

    def temperature(self) -> torch.Tensor:
        """The Gumbel temperature of this update, a 0-dim tensor on the objective's device (no host sync)."""
        s = self.settings
        updates = torch.div(self.micro_batches, self.accumulate, rounding_mode="floor").double()
        return (s.w2v2_temp_start * s.w2v2_temp_decay ** updates).clamp(min=s.w2v2_temp_end).float()

    def forward(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.settings
        z, lengths = self.masking.encode(model, batch)
        clean = z
        if "augmented_wavs" in batch:  # augment: past: the targets are the clean audio's
            clean, _ = model.encode(batch["wavs"], batch["lengths"])
            clean = scale_gradient(clean, self.masking.grad_mult)
        layers, mask = self.masking.contextualize(model, z, lengths)
        temperature = self.temperature()
        if self.training:
            with torch.no_grad():
                self.micro_batches += 1
        q = self.quantizer(model.normalize(clean), temperature)
        targets = self.project_q(q.vectors)
        predictions = self.final_proj(layers[-1])
        codes = q.onehot.argmax(-1)  # (B, T, G)
        powers = self.quantizer.entries ** torch.arange(codes.shape[-1], device=codes.device)
        ids = (codes * powers).sum(-1)  # one id per combination of entries
        valid, predictions, targets, ids = gather_masked(mask, predictions, targets, ids)
        negatives = sample_negatives(valid, s.w2v2_negatives)
        loss_c, accuracy = contrastive_loss(predictions, targets, valid, negatives, ids, s.w2v2_logit_temp)

        frames = length_mask(lengths, z.shape[1])
        flat_weight = frames.flatten()
        probs = q.probs.flatten(0, 1)
        diversity = self.quantizer.diversity_loss(probs, flat_weight)
        penalty = feature_penalty(z, lengths)
        loss = loss_c + s.w2v2_diversity_weight * diversity + s.w2v2_feature_penalty * penalty
        metrics = {
            "loss": loss.detach(), "contrastive_loss": loss_c.detach(), "accuracy": accuracy.detach(),
            "prob_perplexity": perplexity(probs, flat_weight).sum().detach(),
            "code_perplexity": perplexity(q.onehot.flatten(0, 1), flat_weight).sum().detach(),
            "temperature": temperature.detach(), "feature_penalty": penalty.detach(),
            "masked_fraction": ((mask & frames).sum() / frames.sum().clamp(min=1)).float().detach(),
        }
        return loss, metrics
