"""What the reconstruction objectives (APC, MPC, NPC) share: where their inputs and log-mel targets come
from (:class:`LogMelTargets`) and their loss (:func:`masked_l1`)."""

from __future__ import annotations

import torch
from torch import nn

from audiossl.models.frontends import LogMelFrontend, WaveformFrontend
from audiossl.settings import ConfigError

__all__ = ["LogMelTargets", "encoder_reach", "masked_l1"]


def masked_l1(predictions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the entries where ``mask`` is True.

    Args:
        predictions, targets: (batch, frames, bins).
        mask: (batch, frames) or (batch, frames, bins) bool.
    """
    if mask.dim() == 2:
        mask = mask.unsqueeze(-1)
    weight = mask.expand_as(predictions).float()
    error = (predictions.float() - targets.float()).abs() * weight
    return error.sum() / weight.sum().clamp(min=1.0)


def encoder_reach(encoder: nn.Module) -> tuple[int, int]:
    """Input steps before and after ``hop * t`` that encoder frame t reads: (left, right)."""
    left, jump = 0, 1
    for block in encoder.blocks:
        left += block.left * jump
        jump *= block.stride
    return left, encoder.receptive_field - 1 - left


class LogMelTargets(nn.Module):
    """Where a reconstruction objective reads its inputs and log-mel targets.

    ``frontend: logmel``: the inputs are the model's log-mel frames (CMVN'd
    when ``cmvn: true``), which are also the targets; the encoder must keep
    the frame rate and length (``encoder_kernels: []``, or stride-1 convs
    padded to keep the length). Objectives that corrupt their input (MPC) do
    so on these frames, before the encoder.

    ``frontend: waveform``: the inputs are the conv encoder's frames and the
    targets are computed here by a :class:`LogMelFrontend` with the model
    section's ``n_mels`` and ``cmvn``; the encoder must produce one frame per
    10 ms (hop 160 at 16 kHz, as the CPC encoder does) and both are cut to
    the shorter.

    :attr:`separation` is the distance in frames from which an encoder frame
    reads none of the input a target frame was computed from (1 for a
    frame-wise encoder over log-mel frames; 3 for the CPC encoder, whose frame
    t reads samples 160 t - 153 .. 160 t + 311 while log-mel frame t covers
    160 t - 120 .. 160 t + 279). APC and NPC refuse settings that would let
    the context see its own target through this overlap.

    Args:
        model: the :class:`SSLModel` being trained.
        n_mels: target bins when the frontend is the waveform.
        cmvn: per-utterance normalization of those targets.
    """

    def __init__(self, model: nn.Module, n_mels: int = 80, cmvn: bool = False):
        super().__init__()
        left, right = encoder_reach(model.encoder)
        if isinstance(model.frontend, LogMelFrontend):
            probe = torch.tensor([100])
            if model.encoder.hop != 1 or int(model.encoder.output_lengths(probe)) != 100:
                raise ConfigError("with frontend: logmel the reconstruction objectives need an encoder that keeps "
                                  "every frame (encoder_kernels: [], or stride-1 convs that keep the length)")
            self.target_frontend = None
            self.out_dim = model.frontend.out_dim
            self.separation = max(left, right) + 1
        elif isinstance(model.frontend, WaveformFrontend):
            self.target_frontend = LogMelFrontend(model.sample_rate, n_mels, cmvn)
            hop = self.target_frontend.hop
            if model.hop != hop:
                raise ConfigError(f"with frontend: waveform the encoder must give one frame per 10 ms ({hop} "
                                  f"samples) to align with the log-mel targets; its hop is {model.hop}")
            target_left = (self.target_frontend.win - hop) // 2
            target_right = self.target_frontend.win - 1 - target_left
            self.out_dim = n_mels
            self.separation = max(right + target_left, left + target_right) // hop + 1
        else:
            raise ConfigError(f"the reconstruction objectives support frontend logmel or waveform, "
                              f"not {type(model.frontend).__name__}")

    def inputs(self, model: nn.Module, wavs: torch.Tensor, lengths: torch.Tensor,
               target_wavs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(batch, samples) -> frames to corrupt or encode, log-mel targets, frame lengths.

        Args:
            target_wavs: where the targets come from when they are not ``wavs``' own: the clean windows
                when ``wavs`` are augmented (``augment: past``), of the same shape.

        Returns:
            ``inputs`` (batch, frames, dim): log-mel frames, or encoder frames
            when the frontend is the waveform; ``targets`` (batch, frames,
            out_dim), without gradient; ``lengths`` (batch,).
        """
        if wavs.dim() != 2:
            raise ValueError(f"expected waveforms of shape (batch, samples), got {tuple(wavs.shape)}")
        if target_wavs is not None and target_wavs.shape != wavs.shape:
            raise ValueError(f"target waveforms of shape {tuple(target_wavs.shape)} for inputs of shape "
                             f"{tuple(wavs.shape)}")
        if self.target_frontend is None:
            feats, frame_lengths = model.frontend(wavs, lengths)
            targets = feats if target_wavs is None else model.frontend(target_wavs, lengths)[0]
            return feats, targets.detach(), frame_lengths
        z, frame_lengths = model.encode(wavs, lengths)
        targets, target_lengths = self.target_frontend(wavs if target_wavs is None else target_wavs, lengths)
        frames = min(z.shape[1], targets.shape[1])
        return z[:, :frames], targets[:, :frames].detach(), torch.minimum(frame_lengths, target_lengths)

    def from_batch(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`inputs` of a training batch: with ``augmented_wavs`` (``augment: past``) the inputs are
        the augmented windows and the targets the clean ones' (``wavs``)."""
        augmented = batch.get("augmented_wavs")
        if augmented is None:
            return self.inputs(model, batch["wavs"], batch["lengths"])
        return self.inputs(model, augmented, batch["lengths"], target_wavs=batch["wavs"])

    def encode(self, model: nn.Module, inputs: torch.Tensor, lengths: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The frames from :meth:`inputs` (possibly corrupted) -> z for the context network."""
        if self.target_frontend is None:
            return model.encoder(inputs, lengths)
        return inputs, lengths
