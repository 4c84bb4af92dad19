"""Metrics and losses (METHOD.md section 3, Loss and Metric d; section 4, techniques 1-2).

All metrics are functions of r = per-sample mean over elements of (a - b)^2
(a mean, not a sum: authors' code).
"""

from __future__ import annotations

import math
from typing import Callable

import torch


def squared_residual(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """r = mean over elements of (a - b)^2, one value per sample."""
    d = a - b
    return d.to(torch.promote_types(d.dtype, torch.float32)).pow(2).flatten(1).mean(dim=1)  # fp32 at least


def pseudo_huber(r: torch.Tensor, c: float) -> torch.Tensor:
    """iCT baseline: sqrt(r + c^2) - c."""
    return torch.sqrt(r + c * c) - c


def cauchy(r: torch.Tensor, c: float) -> torch.Tensor:
    """Technique 1: log(1 + r / (2 c^2))."""
    return torch.log1p(r / (2.0 * c * c))


def l2(r: torch.Tensor, c: float) -> torch.Tensor:
    """Plain squared error r (c unused)."""
    return r


def geman_mcclure(r: torch.Tensor, c: float) -> torch.Tensor:
    """Ablation option: 2r / (r + 4c^2)."""
    return 2.0 * r / (r + 4.0 * c * c)


METRICS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "pseudo_huber": pseudo_huber,
    "cauchy": cauchy,
    "l2": l2,
    "geman_mcclure": geman_mcclure,
}


def consistency_loss(
    student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor, metric: str, c: float
) -> torch.Tensor:
    """Per-sample lambda_i * d(f(x + sigma_i z, sigma_i), sg f(x + sigma_{i+1} z, sigma_{i+1}))."""
    r = squared_residual(student, teacher.detach())
    return weight * METRICS[metric](r, c)


def diffusion_weight(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """w(s) = 1/s^2 + 1/sigma_d^2 (technique 2)."""
    return 1.0 / sigma**2 + 1.0 / sigma_data**2


def diffusion_mask(i: torch.Tensor, N: int, fraction: float = 0.75) -> torch.Tensor:
    """Samples whose level index i >= floor(0.75 N): the early (low-noise) timesteps."""
    return i >= math.floor(fraction * N)


def diffusion_loss(
    student: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, mask: torch.Tensor, sigma_data: float = 0.5
) -> torch.Tensor:
    """Mean over the selected samples of w(sigma_i) * mean((f(x + sigma_i z, sigma_i) - x)^2).

    Zero (with a gradient path) when no sample of the batch is selected.
    """
    per_sample = diffusion_weight(sigma, sigma_data) * squared_residual(student, x)
    m = mask.to(per_sample.dtype)
    return (per_sample * m).sum() / m.sum().clamp_min(1.0)
