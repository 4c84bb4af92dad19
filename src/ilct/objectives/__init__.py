"""Training objectives: one module each, one line each in OBJECTIVES (selected by `train.objective`)."""

from __future__ import annotations

from ilct.objectives.base import LossTerms, Objective
from ilct.objectives.consistency.objective import ConsistencyTraining
from ilct.objectives.edm import EDMDiffusion
from ilct.objectives.meanflow.objective import MeanFlow

OBJECTIVES: dict[str, type[Objective]] = {
    "consistency": ConsistencyTraining,
    "edm": EDMDiffusion,
    "meanflow": MeanFlow,
}


def make_objective(cfg) -> Objective:
    """The objective `cfg.train.objective` names (config validation has checked the name)."""
    return OBJECTIVES[cfg.train.objective](cfg)


__all__ = ["OBJECTIVES", "ConsistencyTraining", "EDMDiffusion", "LossTerms", "MeanFlow", "Objective", "make_objective"]
