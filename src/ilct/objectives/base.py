"""The objective interface: one object per training method, selected once by `train.objective`.

An objective owns everything the training loop and the samplers would otherwise have to ask "which method
is this?" about: the parameterization around the backbone (f for consistency training, D for EDM), the
schedule state of step k, the per-sample draw each step makes besides data and noise, the loss terms, the
sampler and its network evaluations. The loop, the batch maker, `ilct sample` and `ilct eval` call these
methods and never test which objective is running. A new objective is one new module and one line in
`ilct.objectives.OBJECTIVES`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ilct.errors import IlctError
from ilct.objectives.sampling import guided


@dataclass
class LossTerms:
    """What every objective's loss returns: the scalar back-propagated, and its main and auxiliary terms (logged
    under the objective's term_names)."""

    loss: torch.Tensor  # the scalar that is back-propagated
    consistency: torch.Tensor  # the main term: batch mean of lambda_i d(..) for consistency training
    diffusion: torch.Tensor  # the auxiliary term: the diffusion loss (0 when off or absent)


class Objective(ABC):
    """A training method over one backbone F. `cfg` is the run's resolved Config."""

    name: str = ""
    couples_noise: bool = True  # whether method.ot_coupling pairs data and noise for this objective
    grid_steps: int = 1  # steps of the periodic sample grids written during training
    term_names: tuple[str | None, str | None] = ("consistency", "diffusion")  # the log's names of LossTerms' main
    #                                                                       and auxiliary terms (None: not logged)
    time_inputs: int = 1  # time inputs of the backbone: 1 (sigma), or 2 (MeanFlow's t and t - r)
    drops_condition: bool = False  # the objective drops labels / captions to the null itself (the backbone does not)
    section: str | None = None  # a config section that only this objective reads (elsewhere it keeps its defaults)
    settings: type | None = None  # that section's dataclass (registered with ilct.schema by ilct.objectives)
    method_switches: tuple[str, ...] | None = None  # the method.* switches that apply (None: all of them)

    def __init__(self, cfg) -> None:
        self.cfg = cfg

    @classmethod
    def backbone_options(cls) -> dict[str, Any]:
        """Options of the backbone (ilct.nets.build_backbone) that the objective sets, beyond the config's."""
        options: dict[str, Any] = {}
        if cls.time_inputs == 2:
            options["two_times"] = True
        if cls.drops_condition:
            options["class_dropout"] = 0.0  # model.class_dropout is applied by the objective's loss instead
        return options

    @classmethod
    def check_settings(cls, section) -> None:
        """Choices and ranges of the objective's own section (IlctError naming the field)."""

    @classmethod
    def check_config(cls, cfg) -> None:
        """Cross-field checks of a config that trains with this objective (IlctError naming the field)."""

    @abstractmethod
    def wrap(self, net: nn.Module) -> nn.Module:
        """The model trained and sampled: the parameterization around the backbone."""

    @abstractmethod
    def draw(self, k: int, batch_size: int, g: torch.Generator) -> torch.Tensor:
        """This step's per-sample draw (global batch, CPU), taken from g after the data indices and noise."""

    def state(self, k: int, device: torch.device) -> Any:
        """The schedule state of step k (cached by the objective where it is costly)."""
        return None

    def lr_scale(self, k: int) -> float:
        """The learning rate's multiplier the objective's schedule asks for at (0-based) step k, on top of the
        warm-up and decay of train.* (ilct.training.optim.lr_factor): 1 unless the objective has a reason."""
        return 1.0

    def log_fields(self, state: Any) -> dict[str, Any]:
        """What the log records of the state (e.g. N and c)."""
        return {}

    @abstractmethod
    def loss(self, model: nn.Module, batch, state: Any) -> LossTerms:
        """The loss terms of one batch (called under autocast when train.precision is bf16)."""

    @abstractmethod
    def sample(self, f, seed: int, indices: range, shape: tuple[int, ...], steps: int, sigmas: list[float] | None,
               device: torch.device) -> torch.Tensor:
        """Normalized latents of samples `indices` (sample j's noise seeded by (seed, j)) in `steps` steps."""

    def condition(self, model: nn.Module, cond: torch.Tensor, w: float, null_index: int):
        """What `sample` evaluates for condition `cond` (labels or caption embeddings) at guidance weight w:
        by default classifier-free guidance of f(x, sigma) (ilct.objectives.sampling.guided)."""
        return guided(model, cond, w, null_index)

    def schedule(self, D: int) -> tuple[str, list[dict[str, Any]]]:
        """What `ilct schedule` prints: a line saying what the objective's training schedule is (for latents of D
        elements), and its stages as rows of a table (none where every step trains the same objective)."""
        return (f"objective {self.name}: no curriculum; every one of the {self.cfg.train.total_steps} steps trains the "
                "same loss", [])

    @property
    def takes_tau(self) -> bool:
        """Whether multistep sampling takes intermediate sigmas (--tau): the objective defines `sigmas`."""
        return type(self).sigmas is not Objective.sigmas

    def sigmas(self, steps: int, taus: list[float] | None = None) -> list[float] | None:
        """The noise levels `steps` sampling steps evaluate at, with the user's intermediate ones (`--tau`), checked;
        None where the objective's sampler takes none (then `taus` is refused with one line)."""
        if taus is not None:
            raise IlctError(f"--tau applies to consistency sampling; this run's objective is {self.name}")
        return None

    def nfe(self, steps: int) -> int:
        """Network evaluations of `steps` sampling steps."""
        return steps

    def describe(self, steps: int, sigmas: list[float] | None) -> str:
        return f"{steps} step(s)"
