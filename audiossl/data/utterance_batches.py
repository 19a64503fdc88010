"""Whole utterances for inference: decoded by index, batched by length, padded.

Extraction (:mod:`audiossl.extract`) reads every file once, longest first:
:func:`length_batches` cuts them into batches of at most ``batch_size``
files and ``batch_seconds`` of padded audio, so a long file goes alone
instead of padding its neighbours to its length. A file that no longer
decodes (deleted or truncated since the scan) is handed back apart, with its
error, instead of stopping the run. (Training's crops are
:mod:`audiossl.data.windows`'.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from audiossl.data.audio import AudioError, read_audio
from audiossl.data.corpus import Utterance

__all__ = ["AudioFiles", "collate_files", "length_batches"]


class AudioFiles(Dataset):
    """Decoded audio by index; a file that cannot be decoded gives its error message instead."""

    def __init__(self, utterances: list[Utterance], sample_rate: int):
        self.utterances, self.sample_rate = utterances, sample_rate

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | str]:
        try:
            return index, read_audio(self.utterances[index].path, self.sample_rate)
        except AudioError as e:  # deleted or truncated since the scan: skipped, not fatal
            return index, str(e)


def collate_files(items: list[tuple[int, torch.Tensor | str]]
                  ) -> tuple[list[int], torch.Tensor, torch.Tensor, list[tuple[int, str]]]:
    """Pad the decoded items into a batch; the failed ones are returned apart."""
    failed = [(index, item) for index, item in items if isinstance(item, str)]
    items = [(index, item) for index, item in items if not isinstance(item, str)]
    lengths = torch.tensor([wav.numel() for _, wav in items], dtype=torch.long)
    wavs = torch.zeros(len(items), int(lengths.max()) if items else 0)  # (B, T)
    for row, (_, wav) in enumerate(items):
        wavs[row, : wav.numel()] = wav
    return [index for index, _ in items], wavs, lengths, failed


def length_batches(seconds: Sequence[float], batch_size: int, batch_seconds: float) -> list[list[int]]:
    """Indices of ``seconds`` (sorted longest first) cut into batches of at most ``batch_size`` items
    and at most ``batch_seconds`` of padded audio (items x the longest); a longer item goes alone."""
    batches: list[list[int]] = []
    for index, length in enumerate(seconds):
        if batches and len(batches[-1]) < batch_size and \
                (len(batches[-1]) + 1) * seconds[batches[-1][0]] <= batch_seconds:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches
