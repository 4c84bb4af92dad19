"""Training objectives: one module each, one line each in OBJECTIVES (selected by `train.objective`).

An objective with settings of its own declares them as a dataclass (`Objective.settings`, its config section
`Objective.section`, checked by `Objective.check_settings`); the registry registers that section with the
schema, so a config reads, writes and validates it like any other section.
"""

from __future__ import annotations

from ilct.objectives.base import LossTerms, Objective
from ilct.schema import register_section
from ilct.objectives.consistency.objective import ConsistencyTraining
from ilct.objectives.edm import EDMDiffusion
from ilct.objectives.meanflow.objective import MeanFlow

OBJECTIVES: dict[str, type[Objective]] = {
    "consistency": ConsistencyTraining,
    "edm": EDMDiffusion,
    "meanflow": MeanFlow,
}



def register(objective: type[Objective]) -> None:
    """Add an objective (and its settings section, if it has one) to the registry: what the line in OBJECTIVES
    does for the built-in ones, for an objective defined outside ilct."""
    if objective.settings is not None:
        register_section(objective.section, objective.settings)
    OBJECTIVES[objective.name] = objective


for _objective in list(OBJECTIVES.values()):
    register(_objective)


def make_objective(cfg) -> Objective:
    """The objective `cfg.train.objective` names (config validation has checked the name)."""
    return OBJECTIVES[cfg.train.objective](cfg)


__all__ = ["OBJECTIVES", "ConsistencyTraining", "EDMDiffusion", "LossTerms", "MeanFlow", "Objective", "make_objective", "register"]
