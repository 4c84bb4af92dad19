"""EDM diffusion (Karras et al. 2022) as an objective: the many-step reference (ilct.edm has the maths).

A step draws u ~ N(0, 1) per sample (ln sigma = P_mean + P_std u); the loss is EDM's weighted denoising
loss; sampling is the deterministic Heun sampler, `steps` Heun steps = 2 steps - 1 network evaluations.
OT coupling does not apply (there is no consistency pair).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ilct.edm import EDMDenoiser, edm_loss, heun_nfe, heun_sample
from ilct.objectives.base import LossTerms, Objective

GRID_STEPS = 18  # EDM's Heun setting for its periodic grids (35 evaluations)


class EDMDiffusion(Objective):
    name = "edm"
    couples_noise = False
    grid_steps = GRID_STEPS
    takes_tau = False

    def wrap(self, net: nn.Module) -> nn.Module:
        return EDMDenoiser(net, self.cfg.consistency.sigma_data)

    def draw(self, k: int, batch_size: int, g: torch.Generator) -> torch.Tensor:
        return torch.randn((batch_size,), generator=g)

    def loss(self, model: nn.Module, batch, state: Any) -> LossTerms:
        diffusion = edm_loss(model, batch.x, batch.z, batch.draw, batch.y)
        return LossTerms(diffusion, diffusion.detach(), torch.zeros((), device=batch.x.device))

    def sample(self, f, seed, indices, shape, steps, sigmas, device) -> torch.Tensor:
        from ilct.sampling import per_sample_noise

        cons = self.cfg.consistency
        return heun_sample(f, per_sample_noise(seed, indices, shape, 1)[0].to(device), steps, cons.sigma_min,
                           cons.sigma_max, cons.rho)

    def nfe(self, steps: int) -> int:
        return heun_nfe(steps)

    def describe(self, steps: int, sigmas: list[float] | None) -> str:
        return f"{steps} Heun step(s) ({self.nfe(steps)} evaluations)"
