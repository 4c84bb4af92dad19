"""Noise levels, the discretization curriculum, level sampling and the c schedule.

METHOD.md section 3 (iCT) and section 4, technique 4 (adaptive scaling-c).
Index convention: i = 0 is the noisiest level, i = N-1 is sigma_min.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def karras_sigmas(N: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, i = 0..N-1.

    Returned in float64, decreasing from sigma_max to sigma_min.
    """
    if N < 2:
        raise ValueError(f"need at least 2 noise levels, got N={N}")
    i = torch.arange(N, dtype=torch.float64)
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (a + i / (N - 1) * (b - a)) ** rho


def stage_length(total_steps: int, s0: int, s1: int) -> int:
    """K' = floor(K / (log2(floor(s1/s0)) + 1)), the steps per curriculum stage."""
    return max(1, math.floor(total_steps / (math.log2(math.floor(s1 / s0)) + 1)))


def num_levels(k: int, total_steps: int, s0: int, s1: int) -> int:
    """N(k) = min(s0 * 2^floor(k/K'), s1) + 1 (METHOD.md section 3, curriculum)."""
    k_prime = stage_length(total_steps, s0, s1)
    return min(s0 * 2 ** (k // k_prime), s1) + 1


def fixed_c(latent_dim: int, c_scale: float = 0.00054) -> float:
    """c = 0.00054 sqrt(D) (iCT's pseudo-Huber constant, D = C*H*W)."""
    return c_scale * math.sqrt(latent_dim)


def adaptive_c(N: int) -> float:
    """c(N) = exp(-1.15 ln(N - 1) - 0.85) (METHOD.md section 4, technique 4, code)."""
    return math.exp(-1.15 * math.log(N - 1) - 0.85)


def scaling_c(N: int, latent_dim: int, s0: int, adaptive: bool, c_scale: float = 0.00054, c_floor: float = 0.0) -> float:
    """The metric's c at N levels: fixed, or adaptive from the second stage on, and then never below
    c_floor x the fixed c (c_floor 0, the default: the paper's schedule; an option of ilct, docs/stability.md)."""
    if adaptive and N != s0 + 1:
        return max(adaptive_c(N), c_floor * fixed_c(latent_dim, c_scale))
    return fixed_c(latent_dim, c_scale)


def level_probabilities(sigmas: torch.Tensor, p_mean: float = -1.1, p_std: float = 2.0) -> torch.Tensor:
    """P(i) for i = 0..N-2, proportional to
    erf((ln sigma_i - P_mean) / (sqrt2 P_std)) - erf((ln sigma_{i+1} - P_mean) / (sqrt2 P_std)).
    """
    sigmas = sigmas.double()
    e = torch.erf((torch.log(sigmas) - p_mean) / (math.sqrt(2.0) * p_std))
    w = e[:-1] - e[1:]
    return w / w.sum()


def sample_levels(
    probs: torch.Tensor, batch: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw level indices i in 0..N-2 with the given probabilities (int64, on probs' device)."""
    return torch.multinomial(probs, batch, replacement=True, generator=generator)


def lambda_weight(sigma_i: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """lambda_i = 1 / (sigma_i - sigma_{i+1})."""
    return 1.0 / (sigma_i - sigma_next)


@dataclass(frozen=True)
class Stage:
    start_step: int  # first step of the stage (inclusive)
    end_step: int  # last step + 1 (exclusive)
    N: int
    c: float


def curriculum(total_steps: int, s0: int, s1: int, latent_dim: int, adaptive: bool, c_scale: float = 0.00054,
               c_floor: float = 0.0) -> list[Stage]:
    """The stages a run of `total_steps` goes through (what `ilct schedule` prints)."""
    k_prime = stage_length(total_steps, s0, s1)
    stages: list[Stage] = []
    for start in range(0, total_steps, k_prime):
        N = num_levels(start, total_steps, s0, s1)
        end = min(start + k_prime, total_steps)
        if stages and stages[-1].N == N:  # N stays at s1 + 1 once it gets there
            stages[-1] = Stage(stages[-1].start_step, end, N, stages[-1].c)
        else:
            stages.append(Stage(start, end, N, scaling_c(N, latent_dim, s0, adaptive, c_scale, c_floor)))
    return stages
