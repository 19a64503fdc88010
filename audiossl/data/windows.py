"""Random-crop training windows and the batch samplers.

Every epoch each utterance yields ``num_samples // window`` windows (at least
one) at fresh random offsets. Offsets, the order of windows and the batches
are pure functions of ``(seed, epoch)``, so a resumed run that knows its epoch
and the position inside it reads exactly the windows an uninterrupted run
would have read, whatever the number of DataLoader workers.

Samplers:
    ``uniform``: windows shuffled over the whole corpus.
    ``same_speaker``: every window of a batch comes from one speaker, so CPC's
    ``batch`` negatives become same-speaker negatives (CPC paper, Sec. 3.1;
    CPC_audio's ``--samplingType samespeaker``).
Under DDP, rank r takes batches r, r + world, r + 2 world, ...: each rank
reads different windows.

A file that cannot be read any more (deleted or truncated after the scan) does
not stop a run: its window comes back marked with the error, and
:func:`collate_windows` fills its place in the batch with another window of the
same batch, so batch shapes and the step count stay as they were; the batch
lists the failures under ``read_errors`` for the training loop to count.

Each item carries its window's ``key`` (seed, epoch, place in the epoch's
list), which seeds the window's augmentation (``augment: past | both``,
:mod:`audiossl.data.augment`, whose collate runs after :func:`collate_windows`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from audiossl.data.audio import AudioError, read_audio
from audiossl.data.corpus import Utterance


@dataclass(frozen=True)
class Window:
    utt_index: int
    start: int  # first sample, at the target rate
    epoch: int = 0  # the epoch whose list holds it
    index: int = 0  # its place in that list; with the epoch it names the window (its augmentation's seed)


class WindowDataset(Dataset):
    """Fixed-length crops of utterances; items are :class:`Window` keys."""

    def __init__(self, utterances: list[Utterance], window_samples: int, sample_rate: int = 16000, seed: int = 0):
        self.window_samples = window_samples
        self.sample_rate = sample_rate
        self.seed = seed
        lengths = [u.samples_at(sample_rate) for u in utterances]
        keep = [i for i, n in enumerate(lengths) if n >= window_samples]
        kept = set(keep)
        self.short = [u for i, u in enumerate(utterances) if i not in kept]  # dropped: shorter than a window
        self.too_short = len(self.short)
        if not keep:
            raise ValueError(f"no utterance is at least window_samples={window_samples} samples long")
        self.utterances = [utterances[i] for i in keep]
        self.lengths = [lengths[i] for i in keep]
        speakers = sorted({u.speaker for u in self.utterances})
        self.speaker_index = {s: i for i, s in enumerate(speakers)}

    def windows(self, epoch: int) -> list[Window]:
        """This epoch's windows, in utterance order, at seeded random offsets."""
        rng = np.random.default_rng([self.seed, epoch, 1])
        out = []
        for i, n in enumerate(self.lengths):
            count = max(1, n // self.window_samples)
            starts = rng.integers(0, n - self.window_samples + 1, size=count)
            first = len(out)
            out.extend(Window(i, int(s), epoch, first + j) for j, s in enumerate(starts))
        return out

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, window: Window) -> dict:
        """The window's samples, or ``wav=None`` and ``error=(path, reason)`` if the file fails; ``key``
        (seed, epoch, index) names the window wherever it is read (its augmentation is seeded by it)."""
        utt = self.utterances[window.utt_index]
        item = {"wav": None, "speaker": self.speaker_index[utt.speaker], "id": utt.id, "start": window.start,
                "key": (self.seed, window.epoch, window.index)}
        try:
            item["wav"] = read_audio(utt.path, self.sample_rate, window.start, self.window_samples)
        except AudioError as e:
            item["error"] = (utt.path, str(e).removeprefix(f"{utt.path}: "))
        return item


def collate_windows(items: list[dict]) -> dict:
    """Stack windows into a batch; failed windows are replaced by readable ones.

    Returns:
        ``wavs`` (batch, samples), ``lengths`` (batch,), ``speakers``
        (batch,), ``ids``, ``starts`` (each window's first sample in its
        utterance) and ``read_errors`` (the (path, reason) of each window
        that failed). When no window of the batch could be read,
        ``wavs`` is None.
    """
    items, errors = fill_failed(items)
    if items is None:
        return {"wavs": None, "read_errors": errors}
    wavs = torch.stack([it["wav"] for it in items])  # (B, T)
    return {
        "wavs": wavs,
        "lengths": torch.full((len(items),), wavs.shape[1], dtype=torch.long),
        "speakers": torch.tensor([it["speaker"] for it in items], dtype=torch.long),
        "ids": [it["id"] for it in items],
        "starts": [it["start"] for it in items],  # a list: it stays on the host
        "read_errors": errors,
    }


def fill_failed(items: list[dict]) -> tuple[list[dict] | None, list[tuple[str, str]]]:
    """The batch's items with each failed slot filled by a readable window of the same batch (same speaker
    under ``same_speaker``), or None when none could be read; and the failures' (path, reason)."""
    good = [it for it in items if it["wav"] is not None]
    errors = [it["error"] for it in items if it["wav"] is None]
    if not good:
        return None, errors
    return [it if it["wav"] is not None else good[i % len(good)] for i, it in enumerate(items)], errors


def epoch_batches(dataset: WindowDataset, epoch: int, batch_size: int, sampler: str,
                  rank: int = 0, world_size: int = 1) -> list[list[Window]]:
    """The batches this rank reads in ``epoch`` (incomplete batches dropped)."""
    windows = dataset.windows(epoch)
    rng = np.random.default_rng([dataset.seed, epoch, 2])
    if sampler == "uniform":
        order = rng.permutation(len(windows))
        batches = [[windows[j] for j in order[i:i + batch_size]]
                   for i in range(0, len(order) - batch_size + 1, batch_size)]
    elif sampler == "same_speaker":
        by_speaker: dict[str, list[Window]] = {}
        for w in windows:
            by_speaker.setdefault(dataset.utterances[w.utt_index].speaker, []).append(w)
        batches = []
        for speaker in sorted(by_speaker):
            group = by_speaker[speaker]
            order = rng.permutation(len(group))
            batches.extend([group[j] for j in order[i:i + batch_size]]
                           for i in range(0, len(order) - batch_size + 1, batch_size))
        batches = [batches[j] for j in rng.permutation(len(batches))]
    else:
        raise ValueError(f"unknown sampler {sampler!r}")
    usable = len(batches) - len(batches) % world_size
    return batches[rank:usable:world_size]
