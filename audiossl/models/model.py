"""SSLModel = frontend -> encoder -> context, and the factory that builds it.

``z`` are the encoder's frames, ``c`` the context network's. Lengths travel
with every tensor, and the frame rate is the model's own property.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from audiossl.models.context import NoContext, RecurrentContext, TransformerContext
from audiossl.models.encoders import ConvEncoder
from audiossl.models.frontends import build_frontend
from audiossl.models.npc import NPCContext

if TYPE_CHECKING:  # annotations only
    from audiossl.config import ModelConfig


class SSLModel(nn.Module):
    """Composes a frontend, an encoder and a context network.

    Args:
        frontend: waveform passthrough or log-mel; ``(wavs, lengths)`` ->
            ``(feats (batch, frames, dim), lengths)``.
        encoder: maps frontend frames to ``z``; may downsample.
        context: maps ``z`` to a list of layer outputs; the last one is ``c``.
        sample_rate: of the input waveforms.
        input_norm: layer-normalize ``z`` before the context network (:meth:`normalize`).
    """

    def __init__(self, frontend: nn.Module, encoder: nn.Module, context: nn.Module, sample_rate: int = 16000,
                 input_norm: bool = False):
        super().__init__()
        self.frontend = frontend
        self.encoder = encoder
        self.context = context
        self.input_norm = nn.LayerNorm(encoder.out_dim) if input_norm else nn.Identity()
        self.sample_rate = sample_rate

    @property
    def hop(self) -> int:
        """Input samples per output frame."""
        return self.frontend.hop * self.encoder.hop

    @property
    def frame_rate(self) -> float:
        """Output frames per second."""
        return self.sample_rate / self.hop

    @property
    def receptive_field(self) -> int:
        """Input samples one encoder frame depends on."""
        return self.frontend.receptive_field + (self.encoder.receptive_field - 1) * self.frontend.hop

    @property
    def encoder_dim(self) -> int:
        return self.encoder.out_dim

    @property
    def context_dim(self) -> int:
        return self.context.out_dim

    @property
    def layer_names(self) -> list[str]:
        """Names ``extract_features`` accepts: encoder, context, context_1..L."""
        return ["encoder", "context"] + [f"context_{i + 1}" for i in range(self.context.num_layers)]

    def named_outputs(self) -> dict[str, int]:
        """Every layer ``extract_features`` gives and its width, in :attr:`layer_names`' order.

        Declared, not measured: extraction, the s3prl upstream and the
        probes read the model's outputs from here without running it.
        """
        return {name: self.encoder_dim if name == "encoder" else self.context_dim for name in self.layer_names}

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames produced for inputs of ``lengths`` samples."""
        feats = lengths // self.frontend.hop if self.frontend.hop > 1 else lengths
        return self.encoder.output_lengths(feats)

    def window_frames(self, samples: int) -> int:
        """Frames one window of ``samples`` samples gives (a training window's frame count)."""
        return int(self.output_lengths(torch.tensor([samples])))

    def encode(self, wavs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, samples) -> z (batch, frames, encoder_dim), frame lengths."""
        if wavs.dim() != 2:
            raise ValueError(f"expected waveforms of shape (batch, samples), got {tuple(wavs.shape)}")
        feats, lengths = self.frontend(wavs, lengths)
        return self.encoder(feats, lengths)

    def contextualize(self, z: torch.Tensor, lengths: torch.Tensor, state: list | None = None
                      ) -> tuple[list[torch.Tensor], list | None]:
        """z -> every context layer's output (the last is c) and the carried state."""
        return self.context(self.normalize(z), lengths, state)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` as the context network reads it: layer-normalized under ``context_input_norm`` (fairseq's
        ``layer_norm`` after the feature penalty, which would otherwise shrink ``z`` to nothing), else as is."""
        return self.input_norm(z)

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns z, c and their frame lengths."""
        z, frame_lengths = self.encode(wavs, lengths)
        layers, _ = self.contextualize(z, frame_lengths)
        return z, layers[-1], frame_lengths

    def extract_features(self, wavs: torch.Tensor, lengths: torch.Tensor, layers: tuple[str, ...] = ("context",),
                         state: list | None = None) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], list | None]:
        """Named layer outputs for a batch.

        Args:
            wavs: (batch, samples) at ``sample_rate``.
            lengths: (batch,) valid samples per row.
            layers: names from :attr:`layer_names`.
            state: hidden state carried from the previous chunk (recurrent
                context networks only).

        Returns:
            ``{name: (feats (batch, frames, dim), frame lengths)}`` and the
            state to pass with the next chunk.
        """
        unknown = [name for name in layers if name not in self.layer_names]
        if unknown:
            raise ValueError(f"unknown layer(s) {unknown}; this model has {self.layer_names}")
        z, frame_lengths = self.encode(wavs, lengths)
        out = {}
        if "encoder" in layers:
            out["encoder"] = (z, frame_lengths)
        if any(name != "encoder" for name in layers):
            outputs, state = self.contextualize(z, frame_lengths, state)
            named = {"context": outputs[-1], **{f"context_{i + 1}": y for i, y in enumerate(outputs)}}
            out.update({name: (named[name], frame_lengths) for name in layers if name != "encoder"})
        return out, state


def build_context(cfg: ModelConfig, in_dim: int) -> nn.Module:
    if cfg.context in ("gru", "lstm"):
        return RecurrentContext(in_dim, cfg.context_dim, cfg.context_layers, cfg.context,
                                cfg.context_residual, cfg.context_dropout)
    if cfg.context == "transformer":
        return TransformerContext(in_dim, cfg.context_dim, cfg.context_layers, cfg.context_heads,
                                  cfg.context_ff_dim, cfg.context_dropout, cfg.context_causal,
                                  cfg.context_max_frames, cfg.context_position,
                                  (cfg.context_conv_pos_kernel, cfg.context_conv_pos_groups))
    if cfg.context == "none":
        return NoContext(in_dim)
    if cfg.context == "npc":
        return NPCContext(in_dim, cfg.context_dim, cfg.context_layers, cfg.context_residual, cfg.context_dropout)
    raise ValueError(f"unknown context network {cfg.context!r}")


def build_model(cfg: ModelConfig, sample_rate: int = 16000) -> SSLModel:
    """The factory: a model from its config section."""
    frontend = build_frontend(cfg.frontend, sample_rate, cfg.n_mels, cfg.cmvn)
    spec = [(cfg.encoder_channels, k, s, p)
            for k, s, p in zip(cfg.encoder_kernels, cfg.encoder_strides, cfg.encoder_paddings)]
    encoder = ConvEncoder(frontend.out_dim, spec, cfg.encoder_norm, cfg.encoder_init, sample_rate, cfg.encoder_first,
                         cfg.encoder_envelope_pool, cfg.encoder_activation)
    return SSLModel(frontend, encoder, build_context(cfg, encoder.out_dim), sample_rate, cfg.context_input_norm)
