"""The objectives registry: name -> class with ``from_config(cfg, model)``.

Every objective is an ``nn.Module`` that owns its heads and implements
``forward(model, batch) -> (loss, metrics)``; the training loop never looks at
an objective's name.
"""

from __future__ import annotations

from torch import nn

from audiossl.config import Config
from audiossl.objectives.cpc import CPCObjective

OBJECTIVES: dict[str, type[nn.Module]] = {
    "cpc": CPCObjective,
}


def build_objective(cfg: Config, model: nn.Module) -> nn.Module:
    name = cfg.objective.objective
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name].from_config(cfg, model)
