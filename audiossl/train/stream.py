"""The data side of training: the corpus as windows, and the batches in a resumable order.

Rank 0 scans the corpus (or reuses ``EXP_DIR/manifest.tsv``) and the other
ranks train on its list; files the scan finds unusable are skipped and listed
in ``scan_problems.tsv`` (``strict`` makes them an error before training).
Rank r reads batches r, r + world, ... of each epoch. A file that fails later
has its windows replaced within their batch; the failures are gathered from
every rank at each log window (:meth:`BatchStream.collect_read_errors`) and
logged in ``read_errors.tsv``; ``MAX_UNREADABLE_BATCHES`` batches in a row
without a readable window stop the run. With ``augment: past | both`` the
DataLoader's workers also augment every window (:mod:`audiossl.data.augment`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from audiossl.config import Config
from audiossl.data.augment import build_collate
from audiossl.data.corpus import CorpusError, Problem, drop_unreadable, load_corpus
from audiossl.data.windows import WindowDataset, epoch_batches
from audiossl.runtime import Distributed, TrainingError
from audiossl.utils.stopping import ignore_in_worker

MAX_UNREADABLE_BATCHES = 20  # batches in a row with no readable window before the run stops


def load_windows(cfg: Config, data: str | Path, exp_dir: Path, dist_info: Distributed, progress: bool,
                 strict: bool) -> WindowDataset:
    """The training windows of corpus ``data``: rank 0 scans it (or reuses the cached manifest), the others
    train on rank 0's list; rank 0 reports the unusable files (``strict``: refuses them)."""
    manifest = exp_dir / "manifest.tsv"
    if dist_info.is_main:
        utterances, problems = load_corpus(data, cache=manifest, speaker_level=cfg.data.speaker_level,
                                           progress=progress)
        utterances, missing = drop_unreadable(utterances, data)  # refuses a corpus none of which is there
        problems = problems + missing
    if dist_info.enabled:  # every rank trains on rank 0's list
        shared = [utterances if dist_info.is_main else None]
        dist.broadcast_object_list(shared, src=0)
        utterances = shared[0]
    try:
        dataset = WindowDataset(utterances, cfg.data.window_samples, cfg.data.sample_rate, seed=cfg.train.seed)
    except ValueError as e:
        raise CorpusError(f"{data}: {e}") from None
    if dist_info.is_main:
        rate, window = cfg.data.sample_rate, cfg.data.window_samples
        problems = problems + [
            Problem(u.path, f"shorter than the training window ({u.samples_at(rate)} < {window} samples at {rate} Hz)")
            for u in dataset.short]
        report_problems(problems, exp_dir)
        resampled = sum(u.sample_rate != rate for u in dataset.utterances)
        if resampled:
            print(f"note: {resampled} file(s) not at {rate} Hz are resampled as they are read")
        if strict and problems:
            raise CorpusError(f"{len(problems)} unusable file(s) and strict mode: fix or remove them "
                              f"(listed in {exp_dir / 'scan_problems.tsv'}), or train without --strict")
    return dataset


def report_problems(problems: list[Problem], exp_dir: Path) -> None:
    path = exp_dir / "scan_problems.tsv"
    if not problems:
        path.unlink(missing_ok=True)
        return
    path.write_text("".join(f"{p.path}\t{p.reason}\n" for p in problems))
    print(f"skipped {len(problems)} unusable file(s), listed in {path}:")
    for p in problems[:10]:
        print(f"  {p.path}: {p.reason}")
    if len(problems) > 10:
        print(f"  ... and {len(problems) - 10} more")


class BatchStream:
    """Batches in a deterministic order, resumable at (epoch, position).

    A window whose file fails is replaced within its batch (see
    ``collate_windows``), a batch with no readable window is passed over;
    the failures wait in ``read_errors`` until the loop collects them
    (:meth:`collect_read_errors`). ``MAX_UNREADABLE_BATCHES`` such batches
    in a row (the corpus moved or unmounted during the run) stop the run
    with a ``TrainingError`` naming the files, instead of passing over
    batches forever.
    """

    def __init__(self, dataset: WindowDataset, cfg: Config, dist_info: Distributed, epoch: int, position: int):
        self.dataset, self.cfg, self.dist = dataset, cfg, dist_info
        self.epoch, self.position = epoch, position
        self.read_errors: list[tuple[str, str]] = []
        self.unreadable: list[tuple[str, str]] = []  # failures of the current run of unreadable batches
        self.unreadable_batches = 0
        self._iterator = None

    def _open(self) -> None:
        batches = epoch_batches(self.dataset, self.epoch, self.cfg.train.batch_size, self.cfg.data.sampler,
                                self.dist.rank, self.dist.world_size)
        if not batches:
            raise TrainingError(
                f"the corpus gives no full batch of {self.cfg.train.batch_size} windows per process "
                f"({self.cfg.data.sampler} sampler); use a smaller batch_size or more data")
        workers = self.cfg.data.num_workers
        # A DataLoader iterator draws a seed from the global RNG unless given its
        # own generator; a resumed run opens one more iterator than an
        # uninterrupted run and would then sample other CPC negatives.
        generator = torch.Generator().manual_seed(self.cfg.train.seed)
        # collate_windows, or (augment: past | both) the augmentation after it, on the workers.
        collate = build_collate(self.cfg.augment, self.cfg.data.sample_rate)
        loader = DataLoader(self.dataset, batch_sampler=batches[self.position:], collate_fn=collate,
                            num_workers=workers, persistent_workers=False, pin_memory=torch.cuda.is_available(),
                            prefetch_factor=4 if workers else None, generator=generator,
                            worker_init_fn=ignore_in_worker if workers else None)
        self._iterator = iter(loader)

    def close(self) -> None:
        """Drop the epoch's DataLoader iterator, which stops its worker processes."""
        self._iterator = None

    def next(self) -> dict:
        while True:
            if self._iterator is None:
                self._open()
            try:
                batch = next(self._iterator)
            except StopIteration:
                self.epoch, self.position, self._iterator = self.epoch + 1, 0, None
                continue
            self.position += 1
            errors = batch.pop("read_errors")
            self.read_errors.extend(errors)
            if batch["wavs"] is not None:
                self.unreadable, self.unreadable_batches = [], 0
                return batch
            self.unreadable.extend(errors[: 10 - len(self.unreadable)])
            self.unreadable_batches += 1
            if self.unreadable_batches >= MAX_UNREADABLE_BATCHES:
                raise TrainingError(unreadable_message(self.unreadable_batches, self.unreadable))


    def collect_read_errors(self) -> list[tuple[str, str]]:
        """Every rank's read failures since the last call, (path, reason) each; under DDP a collective,
        so every rank calls it at the same step."""
        errors, self.read_errors = self.read_errors, []
        if self.dist.enabled:
            gathered = [None] * self.dist.world_size
            dist.all_gather_object(gathered, errors)
            errors = [e for rank_errors in gathered for e in rank_errors]
        return errors


def unreadable_message(batches: int, failures: list[tuple[str, str]]) -> str:
    """Why the run stops: the first files that failed and what most likely happened to them."""
    paths = list(dict.fromkeys(path for path, _ in failures))
    if not any(os.path.exists(p) for p in paths):
        cause = ("the files are gone: the corpus was moved, deleted or unmounted during the run, or the "
                 "manifest's paths do not resolve here (relative ones are read from the manifest's folder)")
    elif not any(os.access(p, os.R_OK) for p in paths if os.path.exists(p)):
        cause = "the files exist but cannot be read: permission denied"
    else:
        cause = "the files cannot be decoded: changed since the scan, or the storage is failing"
    shown = "; ".join(f"{path} ({reason})" for path, reason in dict(failures).items() if path in paths[:3])
    return f"{batches} batches in a row had no readable window, e.g. {shown}; {cause}"
