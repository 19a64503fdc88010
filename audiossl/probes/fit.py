"""What the trained probes share in their training loops: the learning-rate schedule and early stopping.

The linear probes (:mod:`audiossl.probes.linear`) and the CTC heads
(:mod:`audiossl.probes.ctc.head`) both decay AdamW's learning rate to 0 along
a half cosine over every step of ``epochs`` epochs, and both choose their
epoch on held-out utterances: the weights of the best held-out epoch are kept,
and training stops once ``patience`` epochs in a row brought no better one.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = ["EarlyStopping", "cosine_schedule"]


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The optimizer's learning rate times ``0.5 (1 + cos(pi step / total_steps))``: full at step 0, 0 at the end.

    Call its ``step()`` after every optimizer step.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total_steps)))


class EarlyStopping:
    """The best epoch so far by a held-out score, a copy of its weights, and when to stop.

    A score is anything ordered, higher is better: the linear probe's
    ``(accuracy, -loss)`` (ties in accuracy go to the lower loss), the CTC
    head's ``-loss``. An epoch is the best when its score is strictly above
    the best so far, which starts at ``worst``.

    Args:
        patience: stop after this many epochs without a better score; 0: never.
        worst: the score to beat at the first epoch.
    """

    def __init__(self, patience: int, worst: Any = -math.inf):
        self.patience = patience
        self.best = worst  # the best score so far
        self.best_epoch = 0  # its epoch, from 1; 0 before any
        self._state: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, score: Any, model: nn.Module) -> bool:
        """Record an epoch's held-out score; when it is the best so far, copy the model's weights. True if so."""
        if not score > self.best:
            return False
        self.best, self.best_epoch = score, epoch
        self._state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return True

    def keep_last(self, epoch: int) -> None:
        """Without held-out data there is nothing to choose with: the last epoch is the one kept."""
        self.best_epoch = epoch

    def should_stop(self, epoch: int) -> bool:
        """Whether ``patience`` epochs have passed since the best one."""
        return bool(self.patience) and epoch - self.best_epoch >= self.patience

    def restore(self, model: nn.Module) -> None:
        """Load the best epoch's weights into ``model`` (unchanged when no epoch was scored)."""
        if self._state is not None:
            model.load_state_dict(self._state)
