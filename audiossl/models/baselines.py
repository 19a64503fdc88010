"""Hand-made features, the floor every probe report shows: MFCC, log-mel and Kaldi's MFCC.

The CPC paper (van den Oord et al. 2018, Table 1) puts its LibriSpeech 100 h
linear-probe figures beside the same probe on MFCC features (39.7 % phones,
17.6 % speakers). Here the baselines are built as :class:`SSLModel` instances
whose frontend is the hand-made feature, whose encoder is the identity and
which have no context network, so :mod:`audiossl.extract` writes them exactly
as it writes a trained model's layers (same frames, same folder layout, same
chunking) and the probes cannot tell them apart.

Both baselines use the 10 ms frames of :class:`LogMelFrontend` (25 ms Hann
window, ``n // 160`` frames for ``n`` samples at 16 kHz, one per CPC phone
label):

- ``logmel``: 80 log-mel bins.
- ``mfcc``: 13 cepstra (orthonormal DCT-II of 40 log-mel bins, as torchaudio's
  ``MFCC(log_mels=True)``) with deltas and delta-deltas (HTK regression over
  +-2 frames, edges repeated as in Kaldi's ``add-deltas``): 39 dims.

Neither is normalized per utterance: per-utterance CMVN would remove speaker
information from the speaker probe's floor. The probes standardize every
feature dimension with the training set's statistics instead.

- ``kaldi-mfcc``: the floor the field reports, s3prl's ``mfcc`` upstream
  (``upstream/baseline/mfcc.yaml``): Kaldi's MFCC through
  ``torchaudio.compliance.kaldi.mfcc`` (13 cepstra from 23 mel bins, 25 ms
  Povey windows every 10 ms, no dither, no energy), deltas and delta-deltas
  (``torchaudio``'s ``compute_deltas``, 5-frame windows) and per-utterance
  CMVN (mean and unbiased standard deviation + 1e-10, as s3prl), 39 dims. The
  same frames as the other floors: ``snip_edges=False`` centres frame ``t``
  on sample ``160 t + 80`` (where :class:`LogMelFrontend` centres it) and the
  first ``n // 160`` frames are kept. Its CMVN needs whole utterances, so it
  refuses chunked extraction, and it removes part of the speaker information.
"""

from __future__ import annotations

import torch
import torchaudio.compliance.kaldi as kaldi
import torchaudio.functional as AF
from torch import nn

from audiossl.models.context import NoContext
from audiossl.models.encoders import ConvEncoder
from audiossl.models.frontends import LogMelFrontend
from audiossl.models.lengths import length_mask
from audiossl.models.model import SSLModel

__all__ = ["BASELINES", "KaldiMFCCFrontend", "MFCCFrontend", "add_deltas", "build_baseline"]


def add_deltas(feats: torch.Tensor, lengths: torch.Tensor, window: int = 2) -> torch.Tensor:
    """HTK/Kaldi regression deltas, each sequence's edge frames repeated.

    ``d_t = sum_{n=1..N} n (x_{t+n} - x_{t-n}) / (2 sum_{n=1..N} n^2)``, with
    ``x`` clamped to each sequence's own valid frames, so a padded batch gives
    the deltas of per-utterance runs.

    Args:
        feats: (batch, frames, dim).
        lengths: (batch,) valid frames per row.
        window: N, frames on each side.

    Returns:
        (batch, frames, dim) deltas; values past a row's length are not
        meaningful (callers mask them).
    """
    frames = feats.shape[1]
    offsets = torch.arange(-window, window + 1, device=feats.device)
    positions = torch.arange(frames, device=feats.device)[:, None] + offsets  # (T, 2N+1)
    last = (lengths - 1).clamp(min=0)[:, None, None]
    positions = torch.minimum(positions.clamp(min=0)[None], last)  # (B, T, 2N+1)
    rows = torch.arange(feats.shape[0], device=feats.device)[:, None, None]
    neighbours = feats[rows, positions]  # (B, T, 2N+1, D)
    weights = offsets.to(feats.dtype) / (2 * sum(n * n for n in range(1, window + 1)))
    return torch.einsum("btnd,n->btd", neighbours, weights)


class MFCCFrontend(nn.Module):
    """MFCC with deltas on the 10 ms frames of :class:`LogMelFrontend`.

    Args:
        sample_rate: of the input waveforms.
        n_mfcc: cepstra kept (c0 included, as torchaudio's ``MFCC``).
        n_mels: log-mel bins the cepstra come from.
        num_deltas: 0 (cepstra only), 1 (+ deltas) or 2 (+ delta-deltas).
        delta_window: frames on each side of the delta regression.
    """

    def __init__(self, sample_rate: int = 16000, n_mfcc: int = 13, n_mels: int = 40,
                 num_deltas: int = 2, delta_window: int = 2):
        super().__init__()
        if n_mfcc > n_mels:
            raise ValueError(f"n_mfcc={n_mfcc} cepstra need at least as many mel bins, got n_mels={n_mels}")
        self.logmel = LogMelFrontend(sample_rate, n_mels)
        self.register_buffer("dct", AF.create_dct(n_mfcc, n_mels, norm="ortho"), persistent=False)
        self.num_deltas = num_deltas
        self.delta_window = delta_window
        self.hop = self.logmel.hop
        # Every delta pass reaches delta_window frames further on each side.
        self.receptive_field = self.logmel.receptive_field + 2 * num_deltas * delta_window * self.hop
        self.out_dim = n_mfcc * (num_deltas + 1)

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logmel, lengths = self.logmel(wavs, lengths)
        feats = [logmel @ self.dct]  # (B, T, n_mfcc)
        for _ in range(self.num_deltas):
            feats.append(add_deltas(feats[-1], lengths, self.delta_window))
        out = torch.cat(feats, dim=-1)  # (B, T, out_dim)
        return out * length_mask(lengths, out.shape[1]).unsqueeze(-1), lengths


class KaldiMFCCFrontend(nn.Module):
    """Kaldi's MFCC with deltas and per-utterance CMVN, as s3prl's ``mfcc`` upstream, on 10 ms frames.

    Args:
        sample_rate: of the input waveforms.
        num_ceps: cepstra kept (Kaldi's ``--num-ceps``; c0 included).
        num_deltas: 0, 1 or 2 (s3prl's ``delta.order``).
        delta_window: frames of each delta regression (s3prl's ``delta.win_length``).
        cmvn: per-utterance mean and variance normalization (s3prl's ``cmvn.use_cmvn``).
    """

    def __init__(self, sample_rate: int = 16000, num_ceps: int = 13, num_deltas: int = 2, delta_window: int = 5,
                 cmvn: bool = True):
        super().__init__()
        self.sample_rate = sample_rate
        self.num_ceps, self.num_deltas, self.delta_window = num_ceps, num_deltas, delta_window
        self.cmvn = cmvn  # extract refuses to chunk a frontend with cmvn
        self.hop = sample_rate // 100
        self.win = sample_rate // 40
        self.receptive_field = self.win + 2 * num_deltas * (delta_window // 2) * self.hop
        self.out_dim = num_ceps * (num_deltas + 1)

    def utterance(self, wav: torch.Tensor) -> torch.Tensor:
        """(samples,) -> (samples // hop, out_dim) features of one utterance."""
        num_frames = wav.numel() // self.hop
        if num_frames == 0:
            return wav.new_zeros(0, self.out_dim)
        ceps = kaldi.mfcc(wav.float()[None], sample_frequency=self.sample_rate, num_ceps=self.num_ceps,
                          frame_length=1000 * self.win / self.sample_rate,
                          frame_shift=1000 * self.hop / self.sample_rate, snip_edges=False)[:num_frames]  # (T, C)
        feats = [ceps.T]  # (C, T)
        for _ in range(self.num_deltas):
            feats.append(AF.compute_deltas(feats[-1], win_length=self.delta_window))
        out = torch.cat(feats).T  # (T, out_dim)
        if self.cmvn:
            std = out.std(dim=0, keepdim=True) if num_frames > 1 else torch.zeros_like(out[:1])
            out = (out - out.mean(dim=0, keepdim=True)) / (1e-10 + std)
        return out

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out_lengths = lengths // self.hop
        out = wavs.new_zeros(wavs.shape[0], wavs.shape[1] // self.hop, self.out_dim, dtype=torch.float32)
        for row, length in enumerate(lengths.tolist()):  # Kaldi's features are per utterance
            feats = self.utterance(wavs[row, :length])
            out[row, : len(feats)] = feats
        return out, out_lengths


def _logmel(sample_rate: int) -> nn.Module:
    return LogMelFrontend(sample_rate, n_mels=80)


BASELINES = {"mfcc": MFCCFrontend, "logmel": _logmel, "kaldi-mfcc": KaldiMFCCFrontend}


def build_baseline(name: str, sample_rate: int = 16000) -> SSLModel:
    """A hand-made feature as a model whose ``encoder`` layer is the feature.

    Args:
        name: a key of :data:`BASELINES` (``mfcc``, ``logmel`` or ``kaldi-mfcc``).
        sample_rate: of the input waveforms.

    Returns:
        An :class:`SSLModel` in eval mode: the feature frontend, an identity
        encoder and no context network.
    """
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    frontend = BASELINES[name](sample_rate)
    model = SSLModel(frontend, ConvEncoder(frontend.out_dim, []), NoContext(frontend.out_dim), sample_rate)
    return model.eval()
