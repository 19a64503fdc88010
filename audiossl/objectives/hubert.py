"""HuBERT (Hsu, Bolte, Tsai, Lakhotia, Salakhutdinov and Mohamed 2021, "HuBERT: Self-Supervised Speech
Representation Learning by Masked Prediction of Hidden Units"), and BEST-RQ's targets (Chiu et al. 2022).

The encoder's frames are masked in spans (:mod:`audiossl.objectives.masking`:
p = 0.08, M = 10, a learned mask embedding) before the bidirectional
Transformer; each output frame, projected to ``hubert_final_dim``, scores
every unit by the cosine similarity to the unit's learned embedding / 0.1;
the loss is the cross-entropy of the frame's target unit, averaged over the
masked frames, + ``hubert_unmasked_weight`` x the same averaged over the
unmasked frames (0 in the paper's Base) + 10 x the mean squared encoder
output; the encoder's gradient is scaled by 0.1.

Targets (``hubert_targets``): a units folder of ``audiossl units assign``
(iteration 1: k-means with k = 100 on MFCC; iteration 2: k = 500 on a middle
layer of the iteration-1 model; ``recipes/librispeech/run.sh --objective
hubert`` runs both), or ``random_projection`` for BEST-RQ's frozen
random-projection quantizer of the clean log-mel frames (one stage, no
k-means): :mod:`audiossl.objectives.hubert_targets`.

Our settings against fairseq's ``hubert_base_librispeech.yaml``:
``hubert_mask_prob`` x ``hubert_mask_span`` = ``mask_prob`` (0.8),
``hubert_mask_span`` = ``mask_length`` (10), ``hubert_final_dim`` =
``final_dim`` (256), ``hubert_logit_temp`` = ``logit_temp`` (0.1),
``hubert_unmasked_weight`` = ``pred_nomask_weight`` (0; fairseq sums it over
the unmasked frames and divides by the masked count, here it is the unmasked
mean), ``hubert_feature_penalty`` = ``loss_weights`` (10),
``hubert_feature_grad_mult`` = ``feature_grad_mult`` (0.1),
``hubert_num_units`` = the dictionary's size (the k of the k-means, or
BEST-RQ's codebook: 8192 in the paper).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from audiossl.models.lengths import length_mask
from audiossl.objectives.hubert_targets import RandomProjectionTargets, UnitTargets
from audiossl.objectives.masking import MaskedEncoding, feature_penalty
from audiossl.objectives.w2v2 import check_masked_context
from audiossl.settings import ConfigError

if TYPE_CHECKING:  # annotations only: the config module imports the objectives' registry
    from audiossl.config import Config

__all__ = ["HubertObjective", "HubertSettings", "RANDOM_PROJECTION", "unit_logits"]

RANDOM_PROJECTION = "random_projection"


def unit_logits(predictions: torch.Tensor, embeddings: torch.Tensor, logit_temp: float) -> torch.Tensor:
    """(batch, frames, dim) predictions, (units, dim) embeddings -> (batch, frames, units) cosine / temp, float32."""
    x = F.normalize(predictions.float(), dim=-1, eps=1e-8)
    e = F.normalize(embeddings.float(), dim=-1, eps=1e-8)
    return x @ e.T / logit_temp


@dataclass
class HubertSettings:
    hubert_targets: str = "random_projection"  # BEST-RQ's | a units folder of `audiossl units assign` (or its file)
    hubert_num_units: int = 100  # units the targets take (k of the k-means; BEST-RQ's codebook size)
    hubert_mask_prob: float = 0.08  # probability that a frame starts a masked span (fairseq mask_prob = this x span)
    hubert_mask_span: int = 10  # frames per masked span (M)
    hubert_final_dim: int = 256  # size of the projected output and the unit embeddings
    hubert_logit_temp: float = 0.1  # cosine similarities are divided by it
    hubert_unmasked_weight: float = 0.0  # weight of the loss on unmasked frames (the masked frames' is 1)
    hubert_feature_penalty: float = 10.0  # weight of the mean squared encoder output
    hubert_feature_grad_mult: float = 0.1  # scale of the encoder's gradient
    hubert_rp_stack: int = 4  # random_projection: log-mel frames stacked per target
    hubert_rp_dim: int = 16  # random_projection: size of the projection (and codebook vectors)


class HubertObjective(nn.Module):
    """Masked prediction of frame-level unit targets (HuBERT; BEST-RQ with ``random_projection``).

    Args:
        encoder_dim, context_dim: sizes of z and c.
        settings: the ``hubert_*`` keys.
        targets: a :class:`UnitTargets` or a :class:`RandomProjectionTargets`.
        hop: input samples per model frame (a window's first unit is its start / hop).
    """

    Settings = HubertSettings

    def __init__(self, encoder_dim: int, context_dim: int, settings: HubertSettings,
                 targets: UnitTargets | RandomProjectionTargets, hop: int = 160):
        super().__init__()
        s = self.settings = settings
        self.masking = MaskedEncoding(encoder_dim, s.hubert_mask_prob, s.hubert_mask_span, s.hubert_feature_grad_mult)
        self.final_proj = nn.Linear(context_dim, s.hubert_final_dim)
        self.unit_embeddings = nn.Parameter(torch.empty(s.hubert_num_units, s.hubert_final_dim).uniform_())
        self.hop = hop
        if isinstance(targets, nn.Module):
            self.random_projection = targets  # saved with the objective's state
            self.units = None
        else:
            self.random_projection, self.units = None, targets

    @staticmethod
    def check(cfg: Config) -> None:
        """Refuse impossible HuBERT settings and a context network it cannot train (the targets file is
        read when the objective is built for training, not here: a checkpoint's config must load anywhere)."""
        o = cfg.objective
        check_masked_context(cfg, "hubert", o.hubert_mask_prob, o.hubert_mask_span, o.hubert_feature_grad_mult)
        if not o.hubert_targets:
            raise ConfigError("objective hubert needs hubert_targets: a units folder written by audiossl units "
                              f"assign, or {RANDOM_PROJECTION} (BEST-RQ)")
        if o.hubert_num_units < 2 or o.hubert_final_dim < 1 or o.hubert_rp_stack < 1 or o.hubert_rp_dim < 1:
            raise ConfigError("hubert needs hubert_num_units >= 2 and positive hubert_final_dim, hubert_rp_stack "
                              "and hubert_rp_dim")
        if o.hubert_logit_temp <= 0 or o.hubert_unmasked_weight < 0 or o.hubert_feature_penalty < 0:
            raise ConfigError("hubert needs a positive hubert_logit_temp and non-negative hubert_unmasked_weight "
                              "and hubert_feature_penalty")

    @staticmethod
    def check_window(cfg: Config, num_frames: int) -> None:
        if num_frames < cfg.objective.hubert_mask_span:
            raise ConfigError(f"window_samples {cfg.data.window_samples} gives {num_frames} frames; objective "
                              f"hubert needs at least hubert_mask_span={cfg.objective.hubert_mask_span}")

    @classmethod
    def from_config(cls, cfg: Config, model: nn.Module) -> "HubertObjective":
        o = cfg.objective
        settings = HubertSettings(**{k: getattr(o, k) for k in HubertSettings.__dataclass_fields__})
        tenth = cfg.data.sample_rate // 100
        if model.hop != tenth:
            raise ConfigError(f"objective hubert needs one model frame per 10 ms ({tenth} samples), as its "
                              f"targets have; this model's hop is {model.hop}")
        if o.hubert_targets == RANDOM_PROJECTION:
            targets = RandomProjectionTargets(cfg.data.sample_rate, cfg.model.n_mels, o.hubert_rp_stack,
                                              o.hubert_rp_dim, o.hubert_num_units, cfg.train.seed)
        else:
            targets = UnitTargets(o.hubert_targets, o.hubert_num_units)
        return cls(model.encoder_dim, model.context_dim, settings, targets, model.hop)

    def check_corpus(self, frame_counts: dict[str, int]) -> None:
        """Refuse a units file without one unit per frame for every training utterance (id -> frames)."""
        if self.units is not None:
            self.units.check(frame_counts)

    def targets(self, batch: dict, frames: int, device: torch.device) -> torch.Tensor:
        """(batch, frames) int64 targets of the batch's windows."""
        if self.random_projection is not None:
            return self.random_projection(batch["wavs"], batch["lengths"], frames)
        return self.units.windows(batch["ids"], batch["starts"], frames, self.hop).to(device, non_blocking=True)

    def forward(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.settings
        z, lengths = self.masking.encode(model, batch)
        layers, mask = self.masking.contextualize(model, z, lengths)
        targets = self.targets(batch, z.shape[1], z.device)
        logits = unit_logits(self.final_proj(layers[-1]), self.unit_embeddings, s.hubert_logit_temp)
        losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, T)
        frames = length_mask(lengths, z.shape[1])
        masked, unmasked = (mask & frames).float(), (~mask & frames).float()
        loss_m = (losses * masked).sum() / masked.sum().clamp(min=1.0)
        loss_u = (losses * unmasked).sum() / unmasked.sum().clamp(min=1.0)
        penalty = feature_penalty(z, lengths)
        loss = loss_m + s.hubert_unmasked_weight * loss_u + s.hubert_feature_penalty * penalty
        correct = (logits.argmax(-1) == targets).float()
        metrics = {
            "loss": loss.detach(), "masked_loss": loss_m.detach(), "unmasked_loss": loss_u.detach(),
            "accuracy": ((correct * masked).sum() / masked.sum().clamp(min=1.0)).detach(),
            "unmasked_accuracy": ((correct * unmasked).sum() / unmasked.sum().clamp(min=1.0)).detach(),
            "feature_penalty": penalty.detach(),
            "masked_fraction": (masked.sum() / frames.sum().clamp(min=1)).detach(),
        }
        return loss, metrics
