"""Input frontends: the raw waveform, or an 80-bin log-mel filterbank.

Each frontend maps ``(wavs (batch, samples), lengths)`` to
``(feats (batch, frames, dim), lengths)`` and states its hop (input samples per
output frame), receptive field and output size, so the model computes its
frame rate instead of assuming one.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

from audiossl.models.lengths import length_mask


class WaveformFrontend(nn.Module):
    """Passes samples through as a one-channel sequence (CPC, wav2vec).

    Args:
        cmvn: standardize each waveform to zero mean and unit variance
            over its valid samples, as wav2vec 2.0 does (``normalize: true``
            in fairseq); a training window is standardized on its own, an
            extracted utterance as a whole.
    """

    hop = 1
    receptive_field = 1
    out_dim = 1

    def __init__(self, cmvn: bool = False):
        super().__init__()
        self.cmvn = cmvn

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = length_mask(lengths, wavs.shape[1])
        wavs = wavs * mask
        if self.cmvn:
            count = lengths.clamp(min=1).unsqueeze(1).to(wavs.dtype)
            mean = wavs.sum(1, keepdim=True) / count
            var = (((wavs - mean) * mask) ** 2).sum(1, keepdim=True) / count
            wavs = (wavs - mean) / torch.sqrt(var + 1e-7) * mask
        return wavs.unsqueeze(-1), lengths  # (B, T, 1)


class LogMelFrontend(nn.Module):
    """Log-mel filterbank: 25 ms Hann window, 10 ms hop (at 16 kHz), 80 bins.

    Frame t covers samples [160 t - 120, 160 t + 280): centred on the 10 ms
    frame [160 t, 160 t + 160), so an utterance of n samples gives n // 160
    frames, the count of CPC's 10 ms alignment labels. Samples outside the
    utterance read as zeros, so a padded batch equals per-utterance runs.

    Args:
        cmvn: normalize each utterance's bins to zero mean and unit variance
            over its valid frames (Mockingjay/TERA use per-utterance CMVN).
    """

    def __init__(self, sample_rate: int = 16000, n_mels: int = 80, cmvn: bool = False):
        super().__init__()
        self.hop = sample_rate // 100
        self.win = sample_rate // 40
        self.receptive_field = self.win
        self.out_dim = n_mels
        self.cmvn = cmvn
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=self.win, win_length=self.win, hop_length=self.hop,
            n_mels=n_mels, center=False, power=2.0)

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        wavs = wavs * length_mask(lengths, wavs.shape[1])
        left = (self.win - self.hop) // 2
        num_frames = wavs.shape[1] // self.hop
        # Pad so that exactly num_frames windows fit, whatever the padding of the batch.
        right = (num_frames - 1) * self.hop + self.win - left - wavs.shape[1]
        padded = nn.functional.pad(wavs, (left, max(0, right)))
        with torch.autocast(device_type=wavs.device.type, enabled=False):
            mel = self.mel(padded.float())[..., :num_frames]  # (B, n_mels, T)
        feats = torch.log(mel + 1e-6).transpose(1, 2)  # (B, T, n_mels)
        out_lengths = lengths // self.hop
        mask = length_mask(out_lengths, num_frames).unsqueeze(-1)
        if self.cmvn:
            count = out_lengths.clamp(min=1)[:, None, None]
            mean = (feats * mask).sum(1, keepdim=True) / count
            var = (((feats - mean) * mask) ** 2).sum(1, keepdim=True) / count
            feats = (feats - mean) / torch.sqrt(var + 1e-5)
        return feats * mask, out_lengths


def build_frontend(name: str, sample_rate: int, n_mels: int, cmvn: bool) -> nn.Module:
    if name == "waveform":
        return WaveformFrontend(cmvn)
    if name == "logmel":
        return LogMelFrontend(sample_rate, n_mels, cmvn)
    raise ValueError(f"unknown frontend {name!r}")
