"""What a step changes, and the checkpoint that holds it.

A checkpoint is the run's :class:`TrainState` (weights, optimizer, schedule,
step and skip counters), the data position (epoch, batches of it each
process has read), every rank's RNG states and the config: the only source
of the architecture for resume, extract and probe. :func:`save_checkpoint`
writes it, :func:`resume` reads it back into a fresh state, and
:func:`initial_checkpoint` writes a step-0 one that resumes the same way.
What a resume may change and what it refuses is :mod:`audiossl.train.resume`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from audiossl.checkpoint import atomic_save, load_checkpoint, load_state, rng_state, set_rng_state, versions
from audiossl.config import Config
from audiossl.runtime import Distributed
from audiossl.train.resume import apply_optimizer_settings, resume_position

CHECKPOINT = "checkpoint.pt"


class Pretrainer(nn.Module):
    """The model and its objective as one module, so DDP syncs both."""

    def __init__(self, model: nn.Module, objective: nn.Module):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.objective(self.model, batch)


def lr_factor(step: int, warmup: int, total: int, decay: str) -> float:
    """Linear warm-up to 1, then cosine or linear decay to 0 (or constant)."""
    if step < warmup:
        return (step + 1) / warmup
    if decay == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup))
    if decay == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def lr_schedule(cfg: Config) -> Callable[[int], float]:
    """``cfg``'s schedule, step -> multiple of lr.

    A plain function, as ``LambdaLR`` wants it: the scheduler's state_dict
    would otherwise carry the callable's attributes into the checkpoint.
    """
    return lambda s: lr_factor(s, cfg.train.warmup_steps, cfg.train.max_steps, cfg.train.decay)


def build_optimizer(cfg: Config, module: nn.Module) -> tuple[torch.optim.Optimizer,
                                                               torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``module``'s parameters and the warm-up/decay schedule of ``cfg``."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(cfg))
    return optimizer, scheduler


@dataclass
class TrainState:
    """Everything a step changes but the data position (the stream's) and the RNGs."""

    module: Pretrainer  # the plain module: its halves are saved, never a DDP or compiled wrapper's names
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    step: int = 0  # optimizer steps taken
    skipped_steps: int = 0  # steps dropped for a non-finite loss or gradient
    skipped_windows: int = 0  # windows replaced within their batch because their file failed to read

    @classmethod
    def fresh(cls, cfg: Config, module: Pretrainer) -> TrainState:
        """Step 0: a new optimizer and schedule over ``module``."""
        return cls(module, *build_optimizer(cfg, module))

    def checkpoint(self, cfg: Config, epoch: int, position: int, rngs: list[dict]) -> dict:
        """The checkpoint at data position (``epoch``, ``position``), with each rank's RNG states."""
        return {"config": cfg.to_dict(), "versions": versions(), "step": self.step, "epoch": epoch,
                "position": position, "model": self.module.model.state_dict(),
                "objective": self.module.objective.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": rngs,
                "skipped_steps": self.skipped_steps, "skipped_windows": self.skipped_windows}


def initial_checkpoint(cfg: Config, model: nn.Module, objective: nn.Module) -> dict:
    """A step-0 checkpoint of these weights, fresh optimizer and schedule: ``train`` resumes from it as
    from one of its own (``audiossl convert`` writes converted models so)."""
    return TrainState.fresh(cfg, Pretrainer(model, objective)).checkpoint(cfg, 0, 0, [rng_state()])


def init_model(module: Pretrainer, path: str | Path) -> None:
    """Give a fresh run the model weights (encoder, frontend, context) of checkpoint ``path``.

    The objective keeps its new weights: the next HuBERT iteration predicts
    other units with other embeddings. A model of another architecture is
    refused in one line naming ``path`` and the first tensor that differs.
    """
    load_state(module.model, load_checkpoint(path)["model"], path, "model")


def save_checkpoint(path: Path, cfg: Config, state: TrainState, epoch: int, position: int,
                    dist_info: Distributed) -> None:
    """Rank 0 writes the checkpoint (atomically); every rank must call this, as it gathers their RNG states."""
    rngs = [rng_state()]
    if dist_info.enabled:
        rngs = [None] * dist_info.world_size
        dist.all_gather_object(rngs, rng_state())
    if dist_info.is_main:
        atomic_save(state.checkpoint(cfg, epoch, position, rngs), path)


def resume(state: TrainState, saved: dict, path: Path, cfg: Config, dist_info: Distributed) -> tuple[int, int]:
    """Load checkpoint ``saved`` (read from ``path``) into a fresh ``state`` and this rank's RNGs.

    This run's lr, weight decay and schedule are applied; another number of
    processes maps the data position and, the saved RNG states being one per
    rank, seeds each rank afresh. Rank 0 says what changed.

    Returns:
        The data position to read from: (epoch, position).
    """
    load_state(state.module.model, saved["model"], path, "model")
    load_state(state.module.objective, saved["objective"], path, "objective")
    load_state(state.optimizer, saved["optimizer"], path, "optimizer")
    state.scheduler.load_state_dict(saved["scheduler"])
    state.step, epoch = saved["step"], saved["epoch"]
    position, moved = resume_position(saved, dist_info.world_size)
    changes = apply_optimizer_settings(cfg, saved["config"], state.optimizer, state.scheduler, state.step,
                                       lr_schedule(cfg))
    state.skipped_steps, state.skipped_windows = saved.get("skipped_steps", 0), saved.get("skipped_windows", 0)
    rngs = saved["rng"]
    if len(rngs) == dist_info.world_size:
        set_rng_state(rngs[dist_info.rank])
    else:  # another number of processes: fresh, distinct seeds
        torch.manual_seed(cfg.train.seed + dist_info.rank + 7919 * state.step)
    if dist_info.is_main:
        print(f"resuming from {path} at step {state.step}")
        for note in changes + ([moved] if moved else []):
            print(f"note: {note}")
    return epoch, position
