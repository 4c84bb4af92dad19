"""Consistency training: the iCT recipe with the paper's five switches (METHOD.md sections 3-5).

The state of step k is the curriculum's N(k) with its Karras sigmas and the scaling c(N) (technique 4); a
step draws level indices i ~ P(i) (the discretized log-normal); the loss is the student-teacher consistency
term with the chosen metric (technique 1) plus the early-timestep diffusion loss (technique 2) from
ilct.objectives.consistency.loss; sampling is the consistency models' multistep Algorithm 1.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ilct.schema import latent_dim
from ilct.objectives.consistency.loss import consistency_training_loss
from ilct.objectives.consistency.precond import ConsistencyModel
from ilct.objectives.consistency.schedule import curriculum, karras_sigmas, level_probabilities, num_levels, sample_levels, scaling_c
from ilct.errors import IlctError
from ilct.objectives.base import LossTerms, Objective
from ilct.objectives.consistency.sampler import consistency_sample, default_sigmas
from ilct.seeds import per_sample_noise


class ConsistencyTraining(Objective):
    name = "consistency"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self._levels: dict[tuple[int, str], tuple[int, torch.Tensor, float]] = {}
        self._probs: dict[int, torch.Tensor] = {}
        self._grids: dict[int, torch.Tensor] = {}

    def wrap(self, net: nn.Module) -> nn.Module:
        cons = self.cfg.consistency
        return ConsistencyModel(net, cons.sigma_data, cons.sigma_min)

    def N(self, k: int) -> int:
        """The curriculum's number of levels at step k (METHOD.md section 3)."""
        cons = self.cfg.consistency
        return num_levels(k, self.cfg.train.total_steps, cons.s0, cons.s1)

    def lr_scale(self, k: int) -> float:
        """consistency.lr_last_stage once the curriculum is in its last stage (N = s1 + 1), else 1: the update
        size kept from growing with the consistency term's jump at the change to the finest grid (not in the
        paper; docs/stability.md findings 7-8 and 15)."""
        cons = self.cfg.consistency
        return cons.lr_last_stage if self.N(k) == cons.s1 + 1 else 1.0

    def grid(self, N: int) -> torch.Tensor:
        """The N Karras sigmas (float64, CPU), built once per N for the levels and their probabilities."""
        if N not in self._grids:
            cons = self.cfg.consistency
            self._grids[N] = karras_sigmas(N, cons.sigma_min, cons.sigma_max, cons.rho)
        return self._grids[N]

    def levels(self, N: int, device: torch.device) -> tuple[int, torch.Tensor, float]:
        """(N, the N Karras sigmas in fp32 on device, c(N)), cached per N and device."""
        key = (N, str(device))
        if key not in self._levels:
            cons = self.cfg.consistency
            D = latent_dim(self.cfg)  # C*H*W, C*T*H*W for clips
            self._levels[key] = (N, self.grid(N).to(device, torch.float32),
                                 scaling_c(N, D, cons.s0, self.cfg.method.adaptive_c, cons.c_scale,
                                           cons.c_floor))
        return self._levels[key]

    def state(self, k: int, device: torch.device) -> tuple[int, torch.Tensor, float]:
        return self.levels(self.N(k), device)

    def log_fields(self, state: Any) -> dict[str, Any]:
        N, _, c = state
        return {"N": N, "c": c}

    def draw(self, k: int, batch_size: int, g: torch.Generator) -> torch.Tensor:
        """Level indices i in 0..N-2, P(i) the discretized log-normal (METHOD.md section 3)."""
        N = self.N(k)
        if N not in self._probs:
            cons = self.cfg.consistency
            self._probs[N] = level_probabilities(self.grid(N), cons.p_mean, cons.p_std).float()
        return sample_levels(self._probs[N], batch_size, g)

    def loss(self, model: nn.Module, batch, state: Any) -> LossTerms:
        N, sigmas, c_now = state
        return consistency_training_loss(model, batch.x, batch.z, batch.draw, sigmas, N, c_now, self.cfg.method,
                                         self.cfg.consistency.sigma_data, batch.y)

    def sigmas(self, steps: int, taus: list[float] | None = None) -> list[float]:
        """[sigma_max] + the steps - 1 intermediate sigmas: the user's `taus` (decreasing, inside (sigma_min,
        sigma_max)), or by default the authors' tau for 2 steps and a Karras grid beyond (METHOD.md section 5)."""
        cons = self.cfg.consistency
        if taus is None:
            return default_sigmas(steps, cons.sigma_min, cons.sigma_max, cons.rho)
        if len(taus) != steps - 1:
            raise IlctError(f"--tau needs {steps - 1} value(s) for --steps {steps}, got {len(taus)}")
        sigmas = [cons.sigma_max, *taus]
        if any(not (cons.sigma_min < s <= cons.sigma_max) for s in taus) or any(b >= a for a, b in zip(sigmas, sigmas[1:])):
            raise IlctError(f"--tau values must decrease and lie in ({cons.sigma_min:g}, {cons.sigma_max:g}), got {taus}")
        return sigmas

    def sample(self, f, seed, indices, shape, steps, sigmas, device) -> torch.Tensor:
        cons = self.cfg.consistency
        sigmas = sigmas or default_sigmas(steps, cons.sigma_min, cons.sigma_max, cons.rho)
        return consistency_sample(f, per_sample_noise(seed, indices, shape, len(sigmas)), sigmas, cons.sigma_min,
                                  device=device)

    def schedule(self, D: int) -> tuple[str, list[dict[str, Any]]]:
        """The curriculum's stages: N levels and the scaling c(N) from each start step (METHOD.md section 3)."""
        cfg, cons = self.cfg, self.cfg.consistency
        stages = curriculum(cfg.train.total_steps, cons.s0, cons.s1, D, cfg.method.adaptive_c, cons.c_scale, cons.c_floor)
        head = (f"objective consistency: {cfg.train.total_steps} steps, D = {D}, s0 = {cons.s0}, s1 = {cons.s1}, "
                f"c {'adaptive' if cfg.method.adaptive_c else 'fixed'}, metric {cfg.method.metric}")
        if cons.lr_last_stage != 1.0:
            head += f", lr x {cons.lr_last_stage:g} from N = {cons.s1 + 1}"
        return head, [{"start_step": s.start_step, "end_step": s.end_step, "N": s.N, "c": s.c,
                       "lr_scale": self.lr_scale(s.start_step)} for s in stages]

    def describe(self, steps: int, sigmas: list[float] | None) -> str:
        cons = self.cfg.consistency
        sigmas = sigmas or default_sigmas(steps, cons.sigma_min, cons.sigma_max, cons.rho)
        return f"{len(sigmas)} step(s) at sigmas {[round(s, 4) for s in sigmas]}"
