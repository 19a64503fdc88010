"""Non-autoregressive predictive coding (Liu, Chung and Glass 2020, "Non-
Autoregressive Predictive Coding for Learning Speech Representations from
Local Dependencies").

The context network (``context: npc``, :class:`audiossl.models.npc.NPCContext`)
gives for every frame t a representation that never sees input frames
t - 2 .. t + 2; through an optional vector-quantization bottleneck and a
linear postnet it reconstructs the log-mel frame x_t, with the L1 distance
averaged over every bin of every valid frame. The quantizer (``npc_vq_groups``
groups of ``npc_vq_codes`` codes, Gumbel-softmax while training, argmax in
eval mode) and the postnet belong to this objective; features extracted from
the model are the representation before quantization, as in the reference.
With ``frontend: waveform`` the inputs are the CPC encoder's frames and the
targets the objective's own log-mel frames; the representation of t then
reads no sample of log-mel frame t's window (checked), though it may read a
few samples at the edges of its neighbours' windows.

Reference implementation (Alexander-H-Liu/NPC): see
:mod:`audiossl.models.npc` for the network's flags; ``vq.codebook_size`` =
``npc_vq_codes`` per group, ``npc_vq_groups`` groups (its ``vq.code_dim``
list is ``context_dim / npc_vq_groups`` each), ``vq.gumbel_temperature`` =
``npc_vq_temperature``. The reported ``code_perplexity`` is the perplexity of
each group's code usage over the batch, averaged over groups (the reference's
``report_ppx``, per batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from audiossl.models.lengths import length_mask
from audiossl.models.npc import GumbelQuantizer
from audiossl.objectives.reconstruction import LogMelTargets, masked_l1
from audiossl.settings import ConfigError

if TYPE_CHECKING:  # annotations only: the config module imports the objectives' registry
    from audiossl.config import Config


@dataclass
class NPCSettings:
    npc_vq_groups: int = 0  # vector-quantization groups before the postnet (0: no VQ; paper 4)
    npc_vq_codes: int = 64  # codes per VQ group
    npc_vq_temperature: float = 1.0  # Gumbel-softmax temperature of the VQ during training


class NPCObjective(nn.Module):
    """L1 reconstruction of x_t from NPC's masked representation of frame t.

    Args:
        frames: where inputs and targets come from.
        context_dim: size of the representation.
        vq_groups: quantizer groups; 0 for no quantizer.
        vq_codes: codes per group.
        vq_temperature: Gumbel-softmax temperature.
    """

    def __init__(self, frames: LogMelTargets, context_dim: int, vq_groups: int = 0, vq_codes: int = 64,
                 vq_temperature: float = 1.0):
        super().__init__()
        self.frames = frames
        self.quantizer = GumbelQuantizer(context_dim, vq_groups, vq_codes, vq_temperature) if vq_groups else None
        self.postnet = nn.Linear(context_dim, frames.out_dim)

    Settings = NPCSettings

    @staticmethod
    def check(cfg: Config) -> None:
        """Refuse impossible VQ settings and any context but NPC's masked convs."""
        m, o = cfg.model, cfg.objective
        if o.npc_vq_groups < 0:
            raise ConfigError(f"config key 'npc_vq_groups' must not be negative, got {o.npc_vq_groups}")
        if o.npc_vq_codes < 2 or o.npc_vq_temperature <= 0:  # refused even unused: a later vq_groups would find it
            raise ConfigError(f"NPC's VQ needs npc_vq_codes >= 2 and a positive npc_vq_temperature, got "
                              f"{o.npc_vq_codes} and {o.npc_vq_temperature}")
        if o.npc_vq_groups and m.context_dim % o.npc_vq_groups:
            raise ConfigError(f"NPC's VQ needs context_dim {m.context_dim} divisible by npc_vq_groups "
                              f"{o.npc_vq_groups}")
        if m.context != "npc":
            raise ConfigError(f"objective npc needs context: npc (its masked-conv network), got context: {m.context}")

    @staticmethod
    def check_window(cfg: Config, num_frames: int) -> None:
        """Any window is long enough: every frame is a prediction."""

    @classmethod
    def from_config(cls, cfg: Config, model: nn.Module) -> "NPCObjective":
        frames = LogMelTargets(model, cfg.model.n_mels, cfg.model.cmvn)
        hidden = model.context.input_mask // 2
        # Over log-mel frames the hidden neighbourhood must stay hidden, so the
        # encoder must be frame-wise; over the waveform, encoder frames t +- (hidden + 1)
        # must read no sample of log-mel frame t.
        limit = 1 if frames.target_frontend is None else hidden + 1
        if frames.separation > limit:
            raise ConfigError(f"NPC hides input frames t - {hidden} .. t + {hidden} from the representation of "
                              f"frame t, but this encoder's frames read input up to {frames.separation - 1} "
                              f"frame(s) away: use encoder_kernels: [] with frontend: logmel")
        o = cfg.objective
        return cls(frames, model.context_dim, o.npc_vq_groups, o.npc_vq_codes, o.npc_vq_temperature)

    def predict(self, representation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(batch, frames, context_dim) -> log-mel predictions (batch, frames, bins) and the VQ one-hots."""
        onehot = None
        if self.quantizer is not None:
            representation, onehot = self.quantizer(representation)
        return self.postnet(representation), onehot

    def forward(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs, targets, lengths = self.frames.from_batch(model, batch)
        z, lengths = self.frames.encode(model, inputs, lengths)
        layers, _ = model.contextualize(z, lengths)
        predictions, onehot = self.predict(layers[-1])
        valid = length_mask(lengths, predictions.shape[1])
        loss = masked_l1(predictions, targets, valid)
        metrics = {"loss": loss.detach()}
        if onehot is not None:
            weight = valid.float()[..., None, None]  # (B, T, 1, 1)
            usage = (onehot.float() * weight).sum((0, 1)) / weight.sum().clamp(min=1.0)  # (G, V)
            entropy = -(usage * torch.log(usage.clamp(min=1e-10))).sum(-1)
            metrics["code_perplexity"] = entropy.exp().mean().detach()
        return loss, metrics
