"""One-step and multistep consistency sampling (METHOD.md section 5): the sigmas f is evaluated at, and the
consistency models' multistep Algorithm 1.
"""

from __future__ import annotations

import math

import torch

from ilct.objectives.consistency.schedule import karras_sigmas

# The 2-step tau: the authors' value, index 22 of a 40-level Karras grid (1.382 for sigma in [0.002, 80]).
# Measured on the fmnist presets' ADM-T (the demo sweep's fifth round, docs/stability.md): val FID 850 at
# 1.382 and 858 at 2.0 against 1,065 at 0.2. With DiT-T/2 0.2 had scored best by less (1,782 against 1,844,
# docs/results.md) and was the default from 2026-11-29 to 2026-11-30; `--tau 0.2` gives it.
TWO_STEP_GRID, TWO_STEP_INDEX = 40, 22


def default_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> list[float]:
    """The sigmas f is evaluated at: [sigma_max] for 1 step, [sigma_max, tau] for 2 steps
    (tau: the authors' value, index 22 of a 40-level Karras grid over [sigma_min, sigma_max]),
    and for more steps the interior points of a Karras grid with steps + 1 levels."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if steps == 1:
        return [sigma_max]
    if steps == 2:
        return [sigma_max, float(karras_sigmas(TWO_STEP_GRID, sigma_min, sigma_max, rho)[TWO_STEP_INDEX])]
    return [float(s) for s in karras_sigmas(steps + 1, sigma_min, sigma_max, rho)[:-1]]


@torch.no_grad()
def consistency_sample(model, noise: list[torch.Tensor], sigmas: list[float], sigma_min: float = 0.002, labels=None,
                       device: torch.device | None = None) -> torch.Tensor:
    """Algorithm 1 of the consistency-model paper.

        x = sigma_0 z_0;                    x0 = f(x, sigma_0)
        for each further tau:  x = x0 + sqrt(tau^2 - sigma_min^2) z_k;  x0 = f(x, tau)
    """
    if len(noise) < len(sigmas):
        raise ValueError("need one noise draw per evaluation")
    for a, b in zip(sigmas[:-1], sigmas[1:]):
        if not b < a:
            raise ValueError(f"sigmas must decrease, got {sigmas}")
    if sigmas[-1] <= sigma_min:
        raise ValueError(f"intermediate sigmas must exceed sigma_min={sigma_min}")
    device = device if device is not None else next(model.parameters()).device
    B = noise[0].shape[0]
    x = sigmas[0] * noise[0].to(device)
    x0 = model(x, torch.full((B,), sigmas[0], device=device), labels)
    for k, tau in enumerate(sigmas[1:], start=1):
        x = x0 + math.sqrt(tau**2 - sigma_min**2) * noise[k].to(device)
        x0 = model(x, torch.full((B,), tau, device=device), labels)
    return x0
