"""Masked predictive coding: BERT-style masked reconstruction of log-mel frames.

Mockingjay (Liu, Yang, Chi, Hsu and Lee 2020, "Mockingjay: Unsupervised
Speech Representation Learning with Deep Bidirectional Transformer
Encoders") and TERA (Liu, Li and Lee 2021). Spans of frames are selected
(15 % of the frames in expectation, spans of 7); of the selected spans 80 %
are zeroed, 10 % replaced by another span of the same utterance and 10 % left
unchanged; optionally a random band of log-mel bins is zeroed in every frame.
A bidirectional Transformer reads the corrupted frames and a prediction head
reconstructs the original log-mel frames; the loss is the L1 distance over the
selected frames (all bins) and the masked band (all frames) only.

The corruption is applied to the frontend's log-mel frames, before the
encoder (with ``frontend: waveform``, to the encoder's frames, and the
targets are log-mel frames computed by the objective: see ``LogMelTargets``).

Reference implementation (s3prl's ``pretrain/mockingjay``, task config)
against our settings: ``mask_proportion`` = ``mpc_mask_proportion`` (0.15),
``mask_consecutive_min`` = ``mask_consecutive_max`` = ``mpc_span`` (7),
``mask_frequency`` = ``mpc_freq_mask_bins`` (0; TERA masks up to 20 % of the
bins, 16 of 80), the fixed 80/10/10 split = ``mpc_zero_prob`` /
``mpc_random_prob`` / the rest; its ``TransformerSpecPredictionHead`` is
``mpc_head: mlp``; the upstream's ``hidden_size``, ``num_hidden_layers``,
``num_attention_heads``, ``intermediate_size`` are ``context_dim``,
``context_layers``, ``context_heads``, ``context_ff_dim``. Differences, by
choice: the zero/random/keep decision is drawn per span (s3prl draws one per
utterance), spans never overlap (``mask_allow_overlap: False``), and the
number of spans is rounded stochastically so that the expected fraction of
selected frames is exactly ``mpc_mask_proportion``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from audiossl.models.lengths import length_mask
from audiossl.objectives.masking import choose_distinct
from audiossl.objectives.reconstruction import LogMelTargets, masked_l1
from audiossl.settings import ConfigError, check_choices

if TYPE_CHECKING:  # annotations only: the config module imports the objectives' registry
    from audiossl.config import Config

ZEROED, RANDOM, KEPT = 0, 1, 2  # what happened to a selected frame; -1: not selected


@dataclass
class Masking:
    """The corruption applied to a batch.

    Attributes:
        kind: (batch, frames) int64: -1 not selected, else ``ZEROED``,
            ``RANDOM`` or ``KEPT``.
        starts: (batch, spans) first frame of each selected span.
        span_valid: (batch, spans) False for padding columns of ``starts``.
        band: (batch, bins) bool, the zeroed frequency band of each utterance.
    """

    kind: torch.Tensor
    starts: torch.Tensor
    span_valid: torch.Tensor
    band: torch.Tensor

    @property
    def selected(self) -> torch.Tensor:
        """(batch, frames) bool."""
        return self.kind >= 0

    def loss_mask(self, lengths: torch.Tensor) -> torch.Tensor:
        """(batch, frames, bins) bool: selected frames and the masked band, inside each sequence."""
        valid = length_mask(lengths, self.kind.shape[1]).unsqueeze(-1)
        return (self.selected.unsqueeze(-1) | self.band.unsqueeze(1)) & valid


def sample_spans(lengths: torch.Tensor, proportion: float, span: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping spans covering ``proportion`` of each sequence in expectation.

    Each sequence of length L gets ``L * proportion / span`` spans, rounded
    down or up at random with the probabilities that keep the expectation
    (at most ``L // span``), placed uniformly among all non-overlapping
    placements: choose ``m`` distinct slots out of ``L - m (span - 1)`` and
    shift the i-th smallest by ``i (span - 1)``.

    Returns:
        ``starts`` (batch, max spans), ``valid`` (batch, max spans) bool.
    """
    device = lengths.device
    expected = lengths.float() * proportion / span
    count = expected.floor() + (torch.rand(expected.shape, device=device) < expected - expected.floor()).float()
    count = torch.minimum(count.long(), lengths // span)
    num_spans = int(count.max()) if count.numel() else 0
    batch = lengths.shape[0]
    if num_spans == 0:
        empty = torch.zeros(batch, 0, dtype=torch.long, device=device)
        return empty, empty.bool()
    slots = lengths - count * (span - 1)  # >= count
    chosen = choose_distinct(count, slots, num_spans)
    valid = torch.arange(num_spans, device=device)[None, :] < count[:, None]
    starts = chosen + torch.arange(num_spans, device=device)[None, :] * (span - 1)
    return starts.masked_fill(~valid, 0), valid


class SpanMasker(nn.Module):
    """Selects spans of frames and corrupts them (and a frequency band), BERT-style.

    Args:
        proportion: expected fraction of selected frames.
        span: frames per span.
        zero_prob: probability that a span is zeroed.
        random_prob: probability that it is replaced by another span of the
            same utterance (drawn uniformly, the original frames); otherwise
            it is kept unchanged (but still predicted).
        freq_mask_bins: a band of 0 .. freq_mask_bins bins (uniform width and
            position) is zeroed in every frame of each utterance; 0: none.
    """

    def __init__(self, proportion: float = 0.15, span: int = 7, zero_prob: float = 0.8, random_prob: float = 0.1,
                 freq_mask_bins: int = 0):
        super().__init__()
        self.proportion, self.span = proportion, span
        self.zero_prob, self.random_prob = zero_prob, random_prob
        self.freq_mask_bins = freq_mask_bins

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, Masking]:
        """x (batch, frames, bins) -> corrupted x, the :class:`Masking` applied."""
        batch, frames, bins = x.shape
        device = x.device
        starts, valid = sample_spans(lengths, self.proportion, self.span)
        draw = torch.rand(starts.shape, device=device)
        kinds = torch.full(starts.shape, KEPT, dtype=torch.long, device=device)
        kinds = kinds.masked_fill(draw < self.zero_prob + self.random_prob, RANDOM).masked_fill(
            draw < self.zero_prob, ZEROED)
        room = (lengths - self.span + 1).clamp(min=1)[:, None].float()
        sources = (torch.rand(starts.shape, device=device) * room).long()  # start of each replacement span

        # Scatter span-level choices onto frames; padding spans write to a spare column.
        offsets = torch.arange(self.span, device=device)
        positions = torch.where(valid[..., None], starts[..., None] + offsets, frames).flatten(1)  # (B, M*S)
        kind = torch.full((batch, frames + 1), -1, dtype=torch.long, device=device)
        kind.scatter_(1, positions, kinds[..., None].expand(-1, -1, self.span).flatten(1))
        source = torch.arange(frames + 1, device=device).repeat(batch, 1)
        source.scatter_(1, positions, (sources[..., None] + offsets).flatten(1))
        kind, source = kind[:, :frames], source[:, :frames]

        replaced = x.gather(1, source.unsqueeze(-1).expand(-1, -1, bins))
        out = torch.where((kind == RANDOM).unsqueeze(-1), replaced, x)
        out = out.masked_fill((kind == ZEROED).unsqueeze(-1), 0.0)
        band = torch.zeros(batch, bins, dtype=torch.bool, device=device)
        if self.freq_mask_bins:
            width = torch.randint(0, self.freq_mask_bins + 1, (batch, 1), device=device)
            low = (torch.rand(batch, 1, device=device) * (bins - width + 1)).long()
            bin_index = torch.arange(bins, device=device)[None, :]
            band = (bin_index >= low) & (bin_index < low + width)
            out = out.masked_fill(band.unsqueeze(1), 0.0)
        return out, Masking(kind, starts, valid, band)


class PredictionHead(nn.Module):
    """Mockingjay's spectrogram prediction head: dense -> GELU -> LayerNorm -> linear."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(nn.functional.gelu(self.dense(x))))


@dataclass
class MPCSettings:
    mpc_mask_proportion: float = 0.15  # expected fraction of frames selected, in spans
    mpc_span: int = 7  # frames per selected span (Mockingjay's mask_consecutive)
    mpc_zero_prob: float = 0.8  # a selected span is zeroed with this probability
    mpc_random_prob: float = 0.1  # ... replaced by another span of the utterance (else kept)
    mpc_freq_mask_bins: int = 0  # zero a random band of up to this many log-mel bins (0: off; TERA)
    mpc_head: Literal["mlp", "linear"] = "mlp"  # prediction head; mlp: Mockingjay's dense-GELU-LayerNorm-linear


class MPCObjective(nn.Module):
    """L1 reconstruction of the selected (corrupted) log-mel frames.

    Args:
        frames: where inputs and targets come from.
        context_dim: size of ``c``.
        masker: the corruption.
        head: ``mlp`` (Mockingjay) | ``linear``.
    """

    def __init__(self, frames: LogMelTargets, context_dim: int, masker: SpanMasker, head: str = "mlp"):
        super().__init__()
        self.frames = frames
        self.masker = masker
        if head == "mlp":
            self.head = PredictionHead(context_dim, frames.out_dim)
        elif head == "linear":
            self.head = nn.Linear(context_dim, frames.out_dim)
        else:
            raise ValueError(f"unknown MPC head {head!r}")

    Settings = MPCSettings

    @staticmethod
    def check(cfg: Config) -> None:
        """Refuse impossible MPC settings and a context or frontend MPC cannot train."""
        m, o = cfg.model, cfg.objective
        check_choices(o, MPCSettings)
        if o.mpc_span < 1 or o.mpc_freq_mask_bins < 0:
            raise ConfigError("mpc_span must be positive and mpc_freq_mask_bins not negative")
        if not 0.0 < o.mpc_mask_proportion < 1.0:
            raise ConfigError(f"config key 'mpc_mask_proportion' must be in (0, 1), got {o.mpc_mask_proportion}")
        if min(o.mpc_zero_prob, o.mpc_random_prob) < 0 or o.mpc_zero_prob + o.mpc_random_prob > 1:
            raise ConfigError("mpc_zero_prob and mpc_random_prob must be non-negative and sum to at most 1")
        if o.mpc_freq_mask_bins > m.n_mels:
            raise ConfigError(f"mpc_freq_mask_bins {o.mpc_freq_mask_bins} exceeds n_mels {m.n_mels}")
        if not (m.context == "transformer" and not m.context_causal):
            raise ConfigError("objective mpc needs a bidirectional Transformer (context: transformer, "
                              "context_causal: false)")
        if o.mpc_freq_mask_bins and m.frontend != "logmel":
            raise ConfigError("mpc_freq_mask_bins needs frontend: logmel (the band is masked in the log-mel input)")

    @staticmethod
    def check_window(cfg: Config, num_frames: int) -> None:
        if num_frames < cfg.objective.mpc_span:
            raise ConfigError(f"window_samples {cfg.data.window_samples} gives {num_frames} frames; objective "
                              f"mpc needs at least {cfg.objective.mpc_span} (mpc_span)")

    @classmethod
    def from_config(cls, cfg: Config, model: nn.Module) -> "MPCObjective":
        o = cfg.objective
        frames = LogMelTargets(model, cfg.model.n_mels, cfg.model.cmvn)
        masker = SpanMasker(o.mpc_mask_proportion, o.mpc_span, o.mpc_zero_prob, o.mpc_random_prob,
                            o.mpc_freq_mask_bins)
        return cls(frames, model.context_dim, masker, o.mpc_head)

    def forward(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs, targets, lengths = self.frames.from_batch(model, batch)
        if inputs.shape[1] < self.masker.span:
            raise ValueError(f"{inputs.shape[1]} frames per window, fewer than mpc_span={self.masker.span}")
        corrupted, masking = self.masker(inputs, lengths)
        z, lengths = self.frames.encode(model, corrupted, lengths)
        layers, _ = model.contextualize(z, lengths)
        predictions = self.head(layers[-1])  # (B, T, bins)
        loss = masked_l1(predictions, targets, masking.loss_mask(lengths))
        valid = length_mask(lengths, masking.kind.shape[1])
        selected = (masking.selected & valid).float().sum() / valid.float().sum().clamp(min=1.0)
        return loss, {"loss": loss.detach(), "selected_fraction": selected.detach()}
