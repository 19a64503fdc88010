"""What the wav2vec 2.0 family's models share as feature sources, whichever library runs them.

wav2vec 2.0 (Baevski et al. 2020), HuBERT (Hsu et al. 2021), WavLM (Chen
et al. 2022) and data2vec-audio (Baevski et al. 2022) have one shape: a
strided conv feature encoder over the raw waveform (fairseq's
``ConvFeatureExtractionModel``, transformers' ``*FeatureEncoder``; in every
released Base and Large model kernels 10,3,3,3,3,2,2 and strides
5,2,2,2,2,2,2, so a 320-sample hop (20 ms frames at 16 kHz) and a 400-sample
receptive field), then a bidirectional Transformer. :class:`Wav2Vec2Family`
is the read-only feature model over any of them that extraction and the
probes read, as they read an :class:`~audiossl.models.model.SSLModel`:

- **Layers**: ``encoder``, the conv encoder's output (before the feature
  projection's layer norm); ``layer_0`` .. ``layer_N``, the Transformer's
  input and each of its N layers' outputs, numbered as transformers'
  ``output_hidden_states`` numbers them; ``context``, audiossl's name for a
  model's output, is its ``last_hidden_state``: ``layer_N``, with the
  encoder's final layer norm applied for a pre-norm model
  (``do_stable_layer_norm``, fairseq's ``layer_norm_first``: the Large ones),
  whose ``layer_N`` (transformers 5, which the ``hf`` extra installs)
  leaves it out.
- **Frames**: the hop, the frame rate, the receptive field and the frame
  count of ``n`` samples (``floor((n - kernel) / stride) + 1`` per conv) are
  computed from the conv stack, never assumed.
- **Padding**: a model whose conv encoder normalizes with a group norm
  (wav2vec 2.0 Base, HuBERT Base: ``feat_extract_norm: group``, fairseq's
  ``extractor_mode: default``) normalizes each channel over the whole
  sequence, padding included, and its library runs it without an attention
  mask; its padded batches differ from single utterances. Such a model says
  ``pads_exactly = False`` and :meth:`~Wav2Vec2Family.forward_chunked` runs
  a batch's utterances of each length apart (one at a time, in practice), so
  a batch gives each utterance's own features. Layer-norm models take an
  attention mask; their padded batches are exact as they are.
- **Chunks** (``extract --chunk-seconds``): each chunk of output frames is
  computed from its audio plus a margin of the receptive field and
  ``CHUNK_CONTEXT_SECONDS`` on each side, after the whole file was
  normalized. A bidirectional Transformer's frames depend on the whole file,
  and a group norm's on the whole chunk, so chunked features differ from
  whole-file ones (``chunks_exactly = False``; how much is measured in
  docs/interop.md); a layer-norm model's ``encoder`` frames are the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["CHUNK_CONTEXT_SECONDS", "Wav2Vec2Family"]

CHUNK_CONTEXT_SECONDS = 1.0  # audio seen on each side of a chunk beyond the receptive field


class Wav2Vec2Family(nn.Module):
    """A read-only feature model: conv encoder, then a bidirectional Transformer, run by another library.

    Subclasses hold the network and implement :meth:`normalize` (the input
    normalization the library applies) and :meth:`network_outputs`.

    Args:
        conv: ``(kernel, stride)`` of each conv of the feature encoder.
        encoder_dim: channels of the conv encoder's output.
        hidden_dim: width of the Transformer.
        num_layers: Transformer layers (N).
        sample_rate: of the input waveforms.
        pads_exactly: whether a padded batch gives each utterance's own features.
        description: one line naming the model, printed when a command starts.
    """

    chunks_exactly = False

    def __init__(self, conv: Sequence[tuple[int, int]], encoder_dim: int, hidden_dim: int, num_layers: int,
                 sample_rate: int, pads_exactly: bool, description: str):
        super().__init__()
        self.conv = [(int(kernel), int(stride)) for kernel, stride in conv]
        self.encoder_dim, self.hidden_dim, self.num_layers = encoder_dim, hidden_dim, num_layers
        self.sample_rate, self.pads_exactly, self.description = sample_rate, pads_exactly, description

    @property
    def hop(self) -> int:
        """Input samples per output frame: the product of the strides."""
        return math.prod(stride for _, stride in self.conv)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop

    @property
    def receptive_field(self) -> int:
        """Input samples one frame depends on."""
        field = 1
        for kernel, stride in reversed(self.conv):
            field = (field - 1) * stride + kernel
        return field

    @property
    def layer_names(self) -> list[str]:
        """``encoder``, ``context`` (the model's output) and ``layer_0`` .. ``layer_N``."""
        return ["encoder", "context"] + [f"layer_{i}" for i in range(self.num_layers + 1)]

    def named_outputs(self) -> dict[str, int]:
        """Every layer and its width, in :attr:`layer_names`' order."""
        return {name: self.encoder_dim if name == "encoder" else self.hidden_dim for name in self.layer_names}

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames produced for inputs of ``lengths`` samples."""
        for kernel, stride in self.conv:
            lengths = (torch.div(lengths - kernel, stride, rounding_mode="floor") + 1).clamp(min=0)
        return lengths

    def window_frames(self, samples: int) -> int:
        return int(self.output_lengths(torch.tensor([samples])))

    def normalize(self, wavs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The library's input normalization of each utterance over its own samples; padding stays zero."""
        return wavs

    def network_outputs(self, wavs: torch.Tensor, lengths: torch.Tensor
                        ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Of normalized input: the conv encoder's output (batch, frames, encoder_dim), the N + 1 hidden states
        and the model's output (batch, frames, hidden_dim)."""
        raise NotImplementedError

    def layer_outputs(self, wavs: torch.Tensor, lengths: torch.Tensor, layers: Sequence[str]
                      ) -> dict[str, torch.Tensor]:
        """``{layer: (batch, frames, dim)}`` of normalized input."""
        unknown = [name for name in layers if name not in self.layer_names]
        if unknown:
            raise ValueError(f"unknown layer(s) {unknown}; this model has {', '.join(self.layer_names)}")
        encoder, hidden, output = self.network_outputs(wavs, lengths)
        named = {"encoder": encoder, "context": output, **{f"layer_{i}": h for i, h in enumerate(hidden)}}
        return {name: named[name] for name in layers}

    @torch.inference_mode()
    def extract_features(self, wavs: torch.Tensor, lengths: torch.Tensor, layers: Sequence[str] = ("context",),
                         state: None = None) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], None]:
        """Named layer outputs of a batch, as :meth:`SSLModel.extract_features` gives them (each utterance's own).

        Args:
            wavs: (batch, samples) at ``sample_rate``, zero past each length.
            lengths: (batch,) valid samples per row.
            layers: names from :attr:`layer_names`.
            state: unused (nothing is carried between chunks).

        Returns:
            ``{name: (feats (batch, frames, dim), frame lengths)}`` and None.
        """
        feats, frame_lengths = self.forward_chunked(wavs, lengths, layers)
        return {name: (x, frame_lengths) for name, x in feats.items()}, None

    @property
    def chunk_margin(self) -> int:
        """Samples added on each side of a chunk: the receptive field and ``CHUNK_CONTEXT_SECONDS``, in hops."""
        context = round(CHUNK_CONTEXT_SECONDS * self.sample_rate / self.hop)
        return (math.ceil(self.receptive_field / self.hop) + 1 + context) * self.hop

    @torch.inference_mode()
    def forward_chunked(self, wavs: torch.Tensor, lengths: torch.Tensor, layers: Sequence[str],
                        chunk_frames: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Named layer outputs of a batch, ``chunk_frames`` output frames at a time (0: at once).

        Each chunk ``[f0, f1)`` runs on the samples ``[f0 hop - margin, f1 hop
        + margin)`` of the normalized batch (clipped to it; the margin is a
        multiple of the hop, so frames stay on the one-pass grid) and keeps
        its own frames. Not equal to one pass: see the module docstring. A
        model that does not pad exactly runs each length's utterances apart.

        Returns:
            ``{layer: (batch, frames, dim)}`` (frames past a row's length are
            padding) and the (batch,) frame lengths.
        """
        frame_lengths = self.output_lengths(lengths)
        total = int(frame_lengths.max()) if len(frame_lengths) else 0
        dims = self.named_outputs()
        if total == 0:  # every file is shorter than the receptive field
            return {name: wavs.new_zeros(len(wavs), 0, dims[name]) for name in layers}, frame_lengths
        if not self.pads_exactly and len(set(lengths.tolist())) > 1:
            out = {name: wavs.new_zeros(len(wavs), total, dims[name]) for name in layers}
            for length in set(lengths.tolist()):
                rows = (lengths == length).nonzero().flatten()
                feats, _ = self.forward_chunked(wavs[rows, :length], lengths[rows], layers, chunk_frames)
                for name in layers:
                    out[name][rows, : feats[name].shape[1]] = feats[name]
            return out, frame_lengths
        wavs = self.normalize(wavs, lengths)
        if chunk_frames <= 0 or chunk_frames >= total:
            feats = self.layer_outputs(wavs, lengths, layers)
            return {name: x[:, :total] for name, x in feats.items()}, frame_lengths
        hop, margin = self.hop, self.chunk_margin
        pieces: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
        for f0 in range(0, total, chunk_frames):
            f1 = min(f0 + chunk_frames, total)
            s0 = max(0, f0 * hop - margin)
            s1 = wavs.shape[1] if f1 == total else min(wavs.shape[1], f1 * hop + margin)
            feats = self.layer_outputs(wavs[:, s0:s1], (lengths - s0).clamp(0, s1 - s0), layers)
            first = f0 - s0 // hop
            for name in layers:
                pieces[name].append(feats[name][:, first: first + f1 - f0])  # (B, f1 - f0, D)
        return {name: torch.cat(chunks, dim=1) for name, chunks in pieces.items()}, frame_lengths
