"""What a resumed run may change, and how each change is honoured.

A checkpoint fixes the architecture and the objective (they are its weights'
meaning) and the layout of the data: the saved position (epoch, batch) counts
batches of an epoch laid out by ``batch_size``, ``window_samples``,
``sampler``, ``seed`` and the speakers (``speaker_level``); under another
layout it points at other windows, so a change there is refused
(:func:`check_resumable`) rather than silently skipping or repeating data.

What may change is applied, never only recorded: ``lr`` and ``weight_decay``
are written into the optimizer's parameter groups and the scheduler's base
learning rates, and a changed schedule (``lr``, ``warmup_steps``,
``max_steps``, ``decay``) sets the current learning rate at once
(:func:`apply_optimizer_settings`); another number of processes maps the
position to the same place in the epoch (:func:`resume_position`). Each
change is announced in one line. The rest (``clip_grad``, ``accumulate``,
``log_every``, ``ckpt_every``, ``max_minutes``, ``max_nonfinite``,
``device``, ``num_workers``) is read afresh every run anyway; ``init_from``
only starts a fresh run, and a resume ignores it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from audiossl.config import Config
from audiossl.errors import UserError

# Keys that lay out an epoch's batches: (section, key).
DATA_LAYOUT = (("train", "batch_size"), ("data", "window_samples"), ("data", "sampler"), ("train", "seed"),
               ("data", "speaker_level"))
SCHEDULE = ("lr", "warmup_steps", "max_steps", "decay")


class ResumeError(UserError, ValueError):
    """A resume that would not mean what it says; the message names the checkpoint and the setting."""


def _saved(saved: dict, section: str, key: str):
    """The checkpoint's value, or a marker when the checkpoint predates the key."""
    return saved.get(section, {}).get(key, _saved)


def check_resumable(cfg: Config, ckpt: dict, path: Path) -> None:
    """Refuse a resume whose architecture, objective or data layout differ from the checkpoint's."""
    saved, current = ckpt["config"], cfg.to_dict()
    fixed = {"model": list(current["model"]), "objective": list(current["objective"]), "data": ["sample_rate"]}
    for section, keys in fixed.items():
        # Keys a checkpoint predates take their defaults: compare only what it saved.
        differ = [k for k in keys if k in saved.get(section, {}) and saved[section][k] != current[section][k]]
        if differ:
            raise ResumeError(
                f"{path} was trained with other {section} settings ({', '.join(differ)}); "
                "use a new --exp-dir, or the same settings to resume")
    differ = [(key, _saved(saved, section, key), current[section][key]) for section, key in DATA_LAYOUT
              if _saved(saved, section, key) is not _saved and _saved(saved, section, key) != current[section][key]]
    if differ:
        was = ", ".join(f"{key}={old!r}" for key, old, _ in differ)
        now = ", ".join(f"{key}={new!r}" for key, _, new in differ)
        raise ResumeError(
            f"{path} stopped at epoch {ckpt.get('epoch')}, batch {ckpt.get('position')} of batches laid out by "
            f"{was}; this run asks for {now}, under which that position names other windows; resume with "
            f"{was}, or start a new --exp-dir")


def apply_optimizer_settings(cfg: Config, saved: dict, optimizer: torch.optim.Optimizer,
                             scheduler: torch.optim.lr_scheduler.LambdaLR, step: int,
                             factor: Callable[[int], float]) -> list[str]:
    """Make a resumed optimizer and scheduler use this run's lr, weight decay and schedule.

    Args:
        saved: the checkpoint's config (nested).
        optimizer, scheduler: with the checkpoint's states loaded.
        step: the checkpoint's step (the scheduler's ``last_epoch``).
        factor: the schedule (step -> multiple of lr) this run uses.

    Returns:
        One line per change applied, for the log.
    """
    train = cfg.to_dict()["train"]
    changed = {k: (_saved(saved, "train", k), train[k]) for k in ("lr", "weight_decay", *SCHEDULE)
               if _saved(saved, "train", k) is not _saved and _saved(saved, "train", k) != train[k]}
    notes = []
    if "lr" in changed:
        scheduler.base_lrs = [cfg.train.lr for _ in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["initial_lr"] = cfg.train.lr
    if "weight_decay" in changed:
        for group in optimizer.param_groups:
            group["weight_decay"] = cfg.train.weight_decay
        old, new = changed["weight_decay"]
        notes.append(f"weight_decay changed on resume: {old:g} -> {new:g}, set in the optimizer")
    if any(k in changed for k in SCHEDULE):
        # The loaded groups hold the old schedule's lr for this step; the next step must use the new one.
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * factor(step)
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    if "lr" in changed:
        old, new = changed["lr"]
        notes.append(f"lr changed on resume: {old:g} -> {new:g}, set in the optimizer and the scheduler's base "
                     f"learning rate (step {step + 1} uses {optimizer.param_groups[0]['lr']:g})")
    return notes


def resume_position(ckpt: dict, world_size: int) -> tuple[int, str | None]:
    """The batch position in the epoch for ``world_size`` processes, and a note if it was converted.

    Rank r reads batches r, r + world, ... of one global order, so ``position``
    batches per rank are ``position x world`` global batches; another number
    of processes resumes after as many global batches (rounded down: at most
    ``world_size - 1`` batches are read twice, none skipped).
    """
    position, saved_world = ckpt["position"], len(ckpt.get("rng", [None]))
    if saved_world == world_size:
        return position, None
    converted = position * saved_world // world_size
    return converted, (f"the checkpoint was written by {saved_world} process(es), this run has {world_size}: "
                       f"epoch {ckpt['epoch']} resumes after global batch {converted * world_size} "
                       f"(batch {converted} of each process)")
