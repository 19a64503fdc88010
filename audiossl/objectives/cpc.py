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
Negatives are drawn from this rank's batch only.

With ``augment: past`` (Kharitonov et al. 2020, WavAugment's ``--augment_past``)
the batch also holds the augmented windows (``augmented_wavs``): the encoder
runs on both, in two calls (a batch-norm encoder normalizes each by its own
statistics), the context network reads the augmented audio's encoding and the
positives and negatives are the clean audio's ``z``.

Predictors (``cpc_predictor``): ``bilinear``, one ``W_k`` per step without
bias, as in the paper and CPC_audio's ``--rnnMode linear`` (CPC_audio scores
with the mean over dimensions instead of the sum: a fixed scale); or
``transformer``, CPC_audio's default ``--rnnMode transformer``: per step a
one-layer causal Transformer over ``c`` (8 heads, feed-forward 2048, dropout
0.1, post-norm, bias-free attention projections and a learned relative
position term on the keys) whose output is the prediction of ``z_{t+k}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from audiossl.objectives.infonce import (
    contrastive_losses,
    mutual_information_bound,
    sample_candidates,
    score_candidates,
)
from audiossl.settings import ConfigError, check_choices, positive

if TYPE_CHECKING:  # annotations only: the config module imports the objectives' registry
    from audiossl.config import Config


class CausalPredictorLayer(nn.Module):
    """One post-norm Transformer layer whose frame t attends to frames <= t only.

    The layout of CPC_audio's ``TransformerLayer`` with relative positions
    (its default, ``abspos`` off): attention logits are ``q_i . k_j +
    q_i . r_{i-j}`` over ``sqrt(d_head)``, with one learned ``r`` per offset
    ``0 .. positions - 1``, so the layer is built for a fixed number of
    positions (the training window's ``frames - K``) and refuses others.
    """

    def __init__(self, dim: int, positions: int, heads: int = 8, ff_dim: int = 2048, dropout: float = 0.1):
        super().__init__()
        if dim % heads:
            raise ValueError(f"predictor size {dim} is not divisible by {heads} heads")
        self.heads, self.positions = heads, positions
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.relative = nn.Parameter(torch.empty(dim // heads, positions))  # column d: offset i - j = d
        nn.init.uniform_(self.relative, -1 / math.sqrt(dim // heads), 1 / math.sqrt(dim // heads))
        self.norm_attention = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff_dim, dim))
        self.norm_ff = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, P, dim)
        batch, positions, dim = x.shape
        if positions != self.positions:
            raise ValueError(f"this predictor was built for {self.positions} positions, got {positions}")

        def split(y: torch.Tensor) -> torch.Tensor:  # (B, P, dim) -> (B, heads, P, d)
            return y.view(batch, positions, self.heads, -1).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        offsets = torch.arange(positions, device=x.device)
        offset = (offsets[:, None] - offsets[None, :]).clamp(min=0)  # (P, P): i - j, 0 where masked
        relative = (q @ self.relative)  # (B, heads, P, offsets)
        logits = q @ k.transpose(-1, -2) + relative.gather(-1, offset.expand(batch, self.heads, -1, -1))
        logits = logits / math.sqrt(q.shape[-1])
        logits = logits.masked_fill(offsets[None, :] > offsets[:, None], float("-inf"))
        attended = self.dropout(logits.softmax(-1)) @ v  # (B, heads, P, d)
        y = self.norm_attention(x + self.out(attended.transpose(1, 2).reshape(batch, positions, dim)))
        return self.norm_ff(y + self.ff(y))


@dataclass
class CPCSettings:
    cpc_steps: int = 12  # prediction steps k = 1..K, one W_k each
    cpc_negatives: int = 128  # negatives per positive
    # where negatives come from: the whole batch, or the positive's own window (same speaker: data
    # sampler=same_speaker)
    cpc_negative_policy: Literal["batch", "sequence"] = "batch"
    # bilinear: a W_k per step (paper); transformer: CPC_audio's default --rnnMode
    cpc_predictor: Literal["bilinear", "transformer"] = "bilinear"
    cpc_score: Literal["bilinear", "cosine"] = "bilinear"  # z^T W_k c, or cos(W_k c, z) / temperature
    cpc_temperature: float = 0.1  # divides cosine scores
    # infonce: softmax over the candidates; nce: binary logistic (wav2vec)
    cpc_loss: Literal["infonce", "nce"] = "infonce"


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
        predictor: ``bilinear`` (``W_k``) | ``transformer`` (one
            :class:`CausalPredictorLayer` per step; needs ``context_dim ==
            encoder_dim``, as CPC_audio's does).
        positions: predictions per window (frames - K); the Transformer
            predictor is built for it.
    """

    def __init__(self, context_dim: int, encoder_dim: int, num_steps: int = 12, num_negatives: int = 128,
                 negative_policy: str = "batch", score: str = "bilinear", temperature: float = 0.1,
                 loss: str = "infonce", predictor: str = "bilinear", positions: int = 116):
        super().__init__()
        self.predictor = predictor
        if predictor == "bilinear":
            self.weight = nn.Parameter(torch.empty(num_steps, encoder_dim, context_dim))  # W_k: c -> z space
            nn.init.xavier_uniform_(self.weight.view(num_steps * encoder_dim, context_dim))
        elif predictor == "transformer":
            if context_dim != encoder_dim:
                raise ValueError(f"cpc_predictor: transformer needs context_dim == encoder_channels, "
                                 f"got {context_dim} and {encoder_dim}")
            self.predictors = nn.ModuleList(CausalPredictorLayer(encoder_dim, positions) for _ in range(num_steps))
        else:
            raise ValueError(f"unknown CPC predictor {predictor!r}")
        self.num_steps, self.num_negatives = num_steps, num_negatives
        self.negative_policy, self.score, self.temperature, self.loss = negative_policy, score, temperature, loss

    Settings = CPCSettings

    @staticmethod
    def check(cfg: Config) -> None:
        """Refuse impossible CPC settings and a Transformer predictor of the wrong size."""
        m, o = cfg.model, cfg.objective
        check_choices(o, CPCSettings)
        positive({"cpc_steps": o.cpc_steps, "cpc_negatives": o.cpc_negatives, "cpc_temperature": o.cpc_temperature})
        if o.cpc_predictor == "transformer" and m.context_dim != m.encoder_channels:
            raise ConfigError(f"cpc_predictor: transformer needs context_dim == encoder_channels (CPC_audio's "
                              f"layout), got {m.context_dim} and {m.encoder_channels}")

    @staticmethod
    def check_window(cfg: Config, num_frames: int) -> None:
        """Refuse a window with no frame left to predict from, or fewer candidates than negatives."""
        o = cfg.objective
        if num_frames <= o.cpc_steps:
            raise ConfigError(f"window_samples {cfg.data.window_samples} gives {num_frames} frames, not more than "
                              f"cpc_steps={o.cpc_steps}; use a longer window or fewer steps")
        candidates = num_frames if o.cpc_negative_policy == "sequence" else num_frames * cfg.train.batch_size
        if o.cpc_negatives >= candidates:
            raise ConfigError(f"cpc_negatives={o.cpc_negatives} but only {candidates - 1} frames can be negatives "
                              f"({o.cpc_negative_policy} policy, {num_frames} frames per window)")

    @classmethod
    def from_config(cls, cfg: Config, model: nn.Module) -> "CPCObjective":
        o = cfg.objective
        frames = model.window_frames(cfg.data.window_samples)
        return cls(model.context_dim, model.encoder_dim, o.cpc_steps, o.cpc_negatives, o.cpc_negative_policy,
                   o.cpc_score, o.cpc_temperature, o.cpc_loss, o.cpc_predictor, frames - o.cpc_steps)

    def predict(self, c: torch.Tensor) -> torch.Tensor:
        """(batch, frames, context_dim) -> (steps, batch * positions, encoder_dim)."""
        positions = c.shape[1] - self.num_steps
        c = c[:, :positions]
        if self.predictor == "bilinear":
            preds = torch.einsum("btc,kdc->kbtd", c, self.weight)  # (K, B, P, D)
        else:
            preds = torch.stack([layer(c) for layer in self.predictors])
        return preds.reshape(self.num_steps, -1, preds.shape[-1])

    def forward(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z, lengths = model.encode(batch["wavs"], batch["lengths"])
        past = z
        if "augmented_wavs" in batch:  # augment: past: the context reads the augmented audio, the targets stay z
            past, _ = model.encode(batch["augmented_wavs"], batch["lengths"])
        layers, _ = model.contextualize(past, lengths)
        frames = z.shape[1]
        if frames <= self.num_steps:
            raise ValueError(f"{frames} frames per window, but cpc_steps={self.num_steps}: use longer windows")
        candidates, valid = sample_candidates(lengths, frames, self.num_steps, self.num_negatives,
                                              self.negative_policy)
        scores = score_candidates(self.predict(layers[-1]), z, candidates, self.score, self.temperature,
                                  per_sequence=self.negative_policy == "sequence")
        losses, accuracy = contrastive_losses(scores, valid, self.loss)
        metrics = {"loss": losses.sum().detach(), "accuracy": accuracy.mean().detach()}
        bound = mutual_information_bound(losses.detach(), self.num_negatives)
        for k in range(self.num_steps):
            metrics[f"loss_k{k + 1}"] = losses[k].detach()
            metrics[f"accuracy_k{k + 1}"] = accuracy[k].detach()
            if self.loss == "infonce":
                metrics[f"mi_bound_k{k + 1}"] = bound[k]
        return losses.sum(), metrics
