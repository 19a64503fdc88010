"""HuBERT's frame targets: k-means units from a file (HuBERT), or a frozen random-projection quantizer (BEST-RQ).

:class:`UnitTargets` reads the unit sequences ``audiossl units assign``
writes (``quantized_outputs.txt``: ``<utt_id> TAB 3,3,17,...``, one unit per
frame; the file or the folder holding it), checks them against the training
corpus before the first step (every utterance must have exactly the frames the
model gives for its audio, n // 160 for the 10 ms models; the first that does
not is refused in one line naming it) and cuts each training window's units
from its utterance's sequence: the window starting at sample ``o`` gets units
``s .. s + T - 1`` with ``s = round(o / hop)``, the frames whose 10 ms lie
nearest the window's frames (the window's frame t and unit frame ``s + t``
start at most half a hop apart), kept inside the sequence.

:class:`RandomProjectionTargets` is BEST-RQ's (Chiu, Qin, Zhang, Yu and Wu
2022, Sec. 2): log-mel frames of the clean window (80 bins, per-window mean
and variance normalization), ``stack`` consecutive frames concatenated
(frames t - (stack - 1) // 2 .. t + stack // 2, edges repeated, so the rate
stays one target per 10 ms frame; the paper stacks 4 frames to its 40 ms
rate), projected by a frozen Xavier-initialized matrix to ``dim`` (16) and
assigned to the nearest of ``num_units`` frozen standard-normal codebook
vectors, both sides l2-normalized. Both are buffers drawn from a generator
seeded by the training seed, saved with the objective's state (a resumed run
keeps them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from audiossl.errors import UserError
from audiossl.models.frontends import LogMelFrontend
from audiossl.models.lengths import length_mask

__all__ = ["RandomProjectionTargets", "TargetsError", "UnitTargets", "window_shift"]

UNITS_FILE = "quantized_outputs.txt"  # audiossl units assign's (ZeroSpeech 2021's) file
# Units per utterance may differ from the model's frames by this many: the last, partial 10 ms is one frame
# or none by convention (the MFCC floor gives n // 160 frames; a padded conv encoder can give one more).
FRAME_TOLERANCE = 1


class TargetsError(UserError, ValueError):
    """A targets file that is missing, malformed, or does not match the training corpus; the message names it."""


def window_shift(start: int, hop: int, frames: int, available: int) -> int:
    """The first unit frame of a window starting at sample ``start`` with ``frames`` frames, in a sequence of
    ``available`` units: the nearest frame, kept inside the sequence."""
    return max(0, min((start + hop // 2) // hop, available - frames))


class UnitTargets:
    """Frame-level units per utterance, read from ``audiossl units assign``'s output.

    Args:
        path: ``quantized_outputs.txt`` or the folder holding it.
        num_units: units are 0 .. num_units - 1; a larger one is refused.
    """

    def __init__(self, path: str | Path, num_units: int):
        path = Path(path)
        self.path = path / UNITS_FILE if path.is_dir() else path
        if not self.path.is_file():
            raise TargetsError(f"hubert_targets: {path} is neither {UNITS_FILE} nor a folder holding it (write it "
                               "with audiossl units assign), nor random_projection")
        self.units: dict[str, np.ndarray] = {}
        with open(self.path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                utt_id, tab, text = line.rstrip("\r\n").partition("\t")
                if not line.strip():
                    continue
                try:
                    units = np.array([int(u) for u in text.split(",")] if text else [], dtype=np.int64)
                except ValueError:
                    units = None
                if not tab or not utt_id or units is None or (units < 0).any():
                    raise TargetsError(f"{self.path}, line {number}: expected <utt_id> TAB units as non-negative "
                                       "integers separated by commas")
                if units.size and units.max() >= num_units:
                    raise TargetsError(f"{self.path}: utterance {utt_id} has unit {units.max()}, but "
                                       f"hubert_num_units is {num_units}")
                self.units[utt_id] = units.astype(np.int16 if num_units <= 2 ** 15 else np.int32)

    def check(self, frame_counts: dict[str, int]) -> None:
        """Refuse the first utterance of the corpus whose units are missing or not one per frame (give or take
        :data:`FRAME_TOLERANCE`).

        Args:
            frame_counts: utterance id -> frames the model gives for its audio.
        """
        missing = [utt for utt in frame_counts if utt not in self.units]
        if missing:
            raise TargetsError(f"{self.path} has no units for utterance {missing[0]} ({len(missing)} of the "
                               f"corpus's {len(frame_counts)} utterances have none)")
        for utt, frames in frame_counts.items():
            if abs(len(self.units[utt]) - frames) > FRAME_TOLERANCE:
                raise TargetsError(f"{self.path}: utterance {utt} has {len(self.units[utt])} units, but the model "
                                   f"gives {frames} frames for its audio (units of another corpus or frame rate?)")

    def windows(self, ids: list[str], starts: list[int], frames: int, hop: int) -> torch.Tensor:
        """(batch, frames) int64: each window's units (see :func:`window_shift`)."""
        out = np.empty((len(ids), frames), dtype=np.int64)
        for row, (utt, start) in enumerate(zip(ids, starts)):
            units = self.units[utt]
            if 0 < frames - len(units) <= FRAME_TOLERANCE:  # one unit short of a whole-utterance window
                units = np.pad(units, (0, frames - len(units)), mode="edge")
            shift = window_shift(int(start), hop, frames, len(units))
            if len(units) - shift < frames:
                raise TargetsError(f"{self.path}: utterance {utt} has {len(units)} units, fewer than a window's "
                                   f"{frames} frames")
            out[row] = units[shift:shift + frames]
        return torch.from_numpy(out)


class RandomProjectionTargets(nn.Module):
    """BEST-RQ's targets: a frozen random projection of stacked log-mel frames, quantized to the nearest entry
    of a frozen random codebook.

    Args:
        sample_rate: of the waveforms.
        n_mels: log-mel bins.
        stack: consecutive frames concatenated.
        dim: projection size.
        num_units: codebook entries.
        seed: seeds the projection and the codebook.
    """

    def __init__(self, sample_rate: int = 16000, n_mels: int = 80, stack: int = 4, dim: int = 16,
                 num_units: int = 8192, seed: int = 0):
        super().__init__()
        self.frontend = LogMelFrontend(sample_rate, n_mels, cmvn=True)
        self.hop = self.frontend.hop
        self.stack = stack
        generator = torch.Generator().manual_seed(seed)
        bound = (6.0 / (stack * n_mels + dim)) ** 0.5  # Xavier uniform
        projection = (torch.rand(stack * n_mels, dim, generator=generator) * 2 - 1) * bound
        codebook = F.normalize(torch.randn(num_units, dim, generator=generator), dim=-1)
        self.register_buffer("projection", projection)
        self.register_buffer("codebook", codebook)

    @torch.no_grad()
    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor, frames: int) -> torch.Tensor:
        """(batch, samples) clean windows -> (batch, frames) int64 targets, one per 10 ms frame."""
        feats, feat_lengths = self.frontend(wavs.float(), lengths)  # (B, T, n_mels)
        if feats.shape[1] < frames:
            raise ValueError(f"{feats.shape[1]} log-mel frames for {frames} model frames")
        feats = feats[:, :frames]
        index = torch.arange(frames, device=wavs.device)[:, None] + torch.arange(self.stack, device=wavs.device)
        index = index - (self.stack - 1) // 2  # (T, stack)
        last = (feat_lengths.clamp(min=1, max=frames) - 1)[:, None, None]  # (B, 1, 1)
        index = torch.minimum(index.clamp(min=0)[None], last)  # (B, T, stack): edges repeated
        stacked = feats.gather(1, index.flatten(1)[..., None].expand(-1, -1, feats.shape[-1]))
        stacked = stacked.reshape(feats.shape[0], frames, -1)  # (B, T, stack * n_mels)
        projected = F.normalize(stacked @ self.projection.float(), dim=-1)
        targets = (projected @ self.codebook.float().T).argmax(-1)  # nearest unit vector = largest cosine
        return targets.masked_fill(~length_mask(feat_lengths, frames), 0)
