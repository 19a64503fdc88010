"""The objectives registry: name -> class with ``from_config(cfg, model)``.

Every objective is an ``nn.Module`` that owns its heads and implements
``forward(model, batch) -> (loss, metrics)``; the training loop never looks at
an objective's name.
"""

from __future__ import annotations

from torch import nn

from audiossl.config import Config
from audiossl.objectives.apc import APCObjective
from audiossl.objectives.cpc import CPCObjective
from audiossl.objectives.mpc import MPCObjective
from audiossl.objectives.npc import NPCObjective

OBJECTIVES: dict[str, type[nn.Module]] = {
    "cpc": CPCObjective,
    "apc": APCObjective,
    "mpc": MPCObjective,
    "npc": NPCObjective,
}


def build_objective(cfg: Config, model: nn.Module) -> nn.Module:
    name = cfg.objective.objective
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name].from_config(cfg, model)
