"""The objectives registry: name -> objective class.

Every objective is an ``nn.Module`` that owns its heads and implements
``forward(model, batch) -> (loss, metrics)``; the training loop never looks at
an objective's name. Each class also owns its settings and their checks:

- ``Settings``: a dataclass of its config keys (flat, prefixed with its name:
  ``cpc_steps``), which :func:`audiossl.config.objective_section` joins into
  the config's ``objective`` section;
- ``check(cfg)``: refuse impossible values of its settings and a model it
  cannot train, raising ``ConfigError``; it runs only when it is the chosen
  objective (another objective's settings are not read, so not checked);
- ``check_window(cfg, num_frames)``: refuse a training window too short for it;
- ``from_config(cfg, model)``: build it for a model;
- optionally ``check_corpus(frame_counts)``: refuse a training corpus it cannot train on (HuBERT: units
  files without one unit per frame), given each utterance's id and frame count before the first step.

Adding an objective is one module with such a class plus one line below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from audiossl.objectives.apc import APCObjective
from audiossl.objectives.cpc import CPCObjective
from audiossl.objectives.hubert import HubertObjective
from audiossl.objectives.mpc import MPCObjective
from audiossl.objectives.npc import NPCObjective
from audiossl.objectives.w2v2 import W2V2Objective
from audiossl.settings import ConfigError

if TYPE_CHECKING:  # annotations only: the config module imports the objectives' registry
    from audiossl.config import Config

OBJECTIVES: dict[str, type[nn.Module]] = {
    "cpc": CPCObjective,
    "apc": APCObjective,
    "mpc": MPCObjective,
    "npc": NPCObjective,
    "w2v2": W2V2Objective,
    "hubert": HubertObjective,
}


def build_objective(cfg: Config, model: nn.Module) -> nn.Module:
    """The objective ``cfg`` names, for ``model``; its checks run again (a config may have been edited since
    it was built)."""
    name = cfg.objective.objective
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")
    OBJECTIVES[name].check(cfg)
    return OBJECTIVES[name].from_config(cfg, model)
