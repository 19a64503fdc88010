"""Autoregressive predictive coding (Chung, Hsu, Tang and Glass 2019, "An
Unsupervised Autoregressive Model for Speech Representation Learning").

A unidirectional context network reads log-mel frames; from ``c_t`` a linear
postnet predicts frame ``x_{t+n}``, and the loss is the L1 distance, averaged
over every predicted bin of every valid frame. A non-causal context would see
its own target, so it is refused.

Reference implementation (iamyuanchung/Autoregressive-Predictive-Coding,
``train_apc.py``) against our settings: ``--time_shift`` = ``apc_shift`` (3),
``--rnn_num_layers`` = ``context_layers`` (3), ``--rnn_hidden_size`` =
``context_dim`` (512), ``--rnn_residual`` = ``context_residual``,
``--rnn_dropout`` = ``context_dropout``; its postnet (a kernel-1 Conv1d) is
the linear ``postnet`` here; its ``--prenet_num_layers`` is closest to a conv
encoder with kernels of 1. The causal Transformer (``context: transformer``)
is the Transformer variant of the later APC papers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from audiossl.models.lengths import length_mask
from audiossl.objectives.reconstruction import LogMelTargets, masked_l1
from audiossl.settings import ConfigError

if TYPE_CHECKING:  # annotations only: the config module imports the objectives' registry
    from audiossl.config import Config


@dataclass
class APCSettings:
    apc_shift: int = 3  # APC predicts log-mel frame t + apc_shift from c_t (Chung et al.: 2-5 best)


class APCObjective(nn.Module):
    """L1 prediction of the log-mel frame ``apc_shift`` frames ahead.

    Args:
        frames: where inputs and targets come from.
        context_dim: size of ``c``.
        shift: n; ``c_t`` predicts ``x_{t+n}``, for ``t + n`` inside the sequence.
    """

    def __init__(self, frames: LogMelTargets, context_dim: int, shift: int = 3):
        super().__init__()
        if shift < 1:
            raise ValueError(f"apc_shift must be positive, got {shift}")
        self.frames = frames
        self.postnet = nn.Linear(context_dim, frames.out_dim)
        self.shift = shift

    Settings = APCSettings

    @staticmethod
    def check(cfg: Config) -> None:
        """Refuse impossible APC settings and a context that sees its target."""
        if cfg.objective.apc_shift < 1:
            raise ConfigError(f"config key 'apc_shift' must be positive, got {cfg.objective.apc_shift}")
        if cfg.model.bidirectional:
            raise ConfigError("objective apc needs a unidirectional context (gru, lstm, or transformer with "
                              "context_causal: true)")

    @staticmethod
    def check_window(cfg: Config, num_frames: int) -> None:
        if num_frames < cfg.objective.apc_shift + 1:
            raise ConfigError(f"window_samples {cfg.data.window_samples} gives {num_frames} frames; objective "
                              f"apc needs at least {cfg.objective.apc_shift + 1} (apc_shift + 1)")

    @classmethod
    def from_config(cls, cfg: Config, model: nn.Module) -> "APCObjective":
        frames = LogMelTargets(model, cfg.model.n_mels, cfg.model.cmvn)
        if cfg.objective.apc_shift < frames.separation:
            raise ConfigError(f"apc_shift {cfg.objective.apc_shift} is too short for this encoder: its frame t "
                              f"reads input of target frames up to t + {frames.separation - 1}")
        return cls(frames, model.context_dim, cfg.objective.apc_shift)

    def forward(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs, targets, lengths = self.frames.from_batch(model, batch)
        z, lengths = self.frames.encode(model, inputs, lengths)
        if z.shape[1] <= self.shift:
            raise ValueError(f"{z.shape[1]} frames per window, but apc_shift={self.shift}: use longer windows")
        layers, _ = model.contextualize(z, lengths)
        predictions = self.postnet(layers[-1][:, :-self.shift])  # (B, T - n, bins): c_t -> x_{t+n}
        valid = length_mask(lengths - self.shift, predictions.shape[1])
        loss = masked_l1(predictions, targets[:, self.shift:], valid)
        return loss, {"loss": loss.detach()}
