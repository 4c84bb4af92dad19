"""Metrics and losses (METHOD.md section 3, Loss and Metric d; section 4, techniques 1-2).

The per-sample metrics are functions of r = per-sample mean over elements of
(a - b)^2 (a mean, not a sum: authors' code). The per-element metric
`cauchy_element` (the authors' `cauchy_new`) applies the Cauchy function to each
element's (a - b)^2 and then takes the per-sample mean, so the lambda_i weighting
still applies per sample.
"""

from __future__ import annotations

import math
from typing import Callable

import torch


def squared_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(a - b)^2 per element, in fp32 (or wider: float64 stays float64)."""
    d = a - b
    return d.to(torch.promote_types(d.dtype, torch.float32)).pow(2)


def squared_residual(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """r = mean over elements of (a - b)^2, one value per sample."""
    return squared_difference(a, b).flatten(1).mean(dim=1)


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


def cauchy_element(sq: torch.Tensor, c: float) -> torch.Tensor:
    """Authors' `cauchy_new`: mean over elements of log(1 + (a - b)^2 / (2 c^2)), one value per sample.

    `sq` is (a - b)^2 per element (B, ...). By Jensen's inequality (log is concave) it is at most
    cauchy(r, c) on r = mean (a - b)^2, with equality when every element has the same (a - b)^2.
    """
    return torch.log1p(sq / (2.0 * c * c)).flatten(1).mean(dim=1)


# Metrics of r, the per-sample mean of (a - b)^2.
METRICS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "pseudo_huber": pseudo_huber,
    "cauchy": cauchy,
    "l2": l2,
    "geman_mcclure": geman_mcclure,
}

# Metrics of the per-element (a - b)^2 that reduce to one value per sample themselves.
ELEMENT_METRICS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "cauchy_element": cauchy_element,
}

METRIC_NAMES: tuple[str, ...] = (*METRICS, *ELEMENT_METRICS)


def consistency_loss(
    student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor, metric: str, c: float
) -> torch.Tensor:
    """Per-sample lambda_i * d(f(x + sigma_i z, sigma_i), sg f(x + sigma_{i+1} z, sigma_{i+1}))."""
    sq = squared_difference(student, teacher.detach())
    if metric in ELEMENT_METRICS:
        return weight * ELEMENT_METRICS[metric](sq, c)
    return weight * METRICS[metric](sq.flatten(1).mean(dim=1), c)


def w_sigma(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
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
    per_sample = w_sigma(sigma, sigma_data) * squared_residual(student, x)
    m = mask.to(per_sample.dtype)
    return (per_sample * m).sum() / m.sum().clamp_min(1.0)
