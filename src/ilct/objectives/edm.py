"""EDM diffusion (Karras et al. 2022): the multistep reference the ablation compares against.

The same backbone F, trained as a denoiser D(x, sigma) instead of a consistency
model, sampled with the deterministic Heun sampler (EDM Algorithm 2):
18 steps = 35 network evaluations.

    c_skip = sigma_d^2 / (sigma^2 + sigma_d^2)      c_out = sigma sigma_d / sqrt(sigma^2 + sigma_d^2)
    c_in   = 1 / sqrt(sigma^2 + sigma_d^2)          c_noise = ln(sigma) / 4
    ln sigma ~ N(P_mean = -1.2, P_std = 1.2)        lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2

As an objective (EDMDiffusion): a step draws u ~ N(0, 1) per sample (ln sigma = P_mean + P_std u); the loss is
EDM's weighted denoising loss; sampling is the deterministic Heun sampler, `steps` Heun steps = 2 steps - 1
network evaluations. OT coupling does not apply (there is no consistency pair).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ilct.objectives.base import LossTerms, Objective
from ilct.objectives.consistency.precond import c_in, sigma_per_sample, skip_plus_out
from ilct.objectives.consistency.schedule import karras_sigmas
from ilct.seeds import per_sample_noise

P_MEAN, P_STD = -1.2, 1.2


class EDMDenoiser(nn.Module):
    def __init__(self, net: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        sigma, s = sigma_per_sample(sigma, x)
        sd2 = self.sigma_data**2
        c_skip = sd2 / (s**2 + sd2)
        c_out = s * self.sigma_data / torch.sqrt(s**2 + sd2)
        F = self.net(c_in(s, self.sigma_data) * x, torch.log(sigma) / 4, class_labels)
        return skip_plus_out(x, F, c_skip, c_out)  # in fp32 under autocast too


def edm_loss(model: EDMDenoiser, x: torch.Tensor, n: torch.Tensor, u: torch.Tensor, labels=None) -> torch.Tensor:
    """mean_b lambda(sigma) mean((D(x + sigma n, sigma) - x)^2), sigma = exp(P_mean + P_std u)."""
    sigma = torch.exp(P_MEAN + P_STD * u)
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    weight = (sigma**2 + model.sigma_data**2) / (sigma * model.sigma_data) ** 2
    return (weight * (model(x + s * n, sigma, labels) - x).float().pow(2).flatten(1).mean(1)).mean()


@torch.no_grad()
def heun_sample(model, noise: torch.Tensor, num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0,
                rho: float = 7.0, labels=None) -> torch.Tensor:
    """EDM Algorithm 2 (deterministic): Euler steps with a second-order correction except the last."""
    device = noise.device
    t = karras_sigmas(num_steps, sigma_min, sigma_max, rho).tolist() + [0.0]
    x = noise.to(device) * t[0]
    B = x.shape[0]
    for i in range(num_steps):
        t_cur, t_next = t[i], t[i + 1]
        d = (x - model(x, torch.full((B,), t_cur, device=device), labels)) / t_cur
        x_next = x + (t_next - t_cur) * d
        if t_next > 0:
            d2 = (x_next - model(x_next, torch.full((B,), t_next, device=device), labels)) / t_next
            x_next = x + (t_next - t_cur) * (0.5 * d + 0.5 * d2)
        x = x_next
    return x


def heun_nfe(num_steps: int) -> int:
    return 2 * num_steps - 1


GRID_STEPS = 18  # EDM's Heun setting for its periodic grids (35 evaluations)


class EDMDiffusion(Objective):
    name = "edm"
    couples_noise = False
    grid_steps = GRID_STEPS

    def wrap(self, net: nn.Module) -> nn.Module:
        return EDMDenoiser(net, self.cfg.consistency.sigma_data)

    def draw(self, k: int, batch_size: int, g: torch.Generator) -> torch.Tensor:
        return torch.randn((batch_size,), generator=g)

    def loss(self, model: nn.Module, batch, state: Any) -> LossTerms:
        diffusion = edm_loss(model, batch.x, batch.z, batch.draw, batch.y)
        return LossTerms(diffusion, diffusion.detach(), torch.zeros((), device=batch.x.device))

    def sample(self, f, seed, indices, shape, steps, sigmas, device) -> torch.Tensor:
        cons = self.cfg.consistency
        return heun_sample(f, per_sample_noise(seed, indices, shape, 1)[0].to(device), steps, cons.sigma_min,
                           cons.sigma_max, cons.rho)

    def nfe(self, steps: int) -> int:
        return heun_nfe(steps)

    def describe(self, steps: int, sigmas: list[float] | None) -> str:
        return f"{steps} Heun step(s) ({self.nfe(steps)} evaluations)"
