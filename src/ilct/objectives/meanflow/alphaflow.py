"""AlphaFlow's curriculum from flow matching to MeanFlow (Zhang et al. 2025, "AlphaFlow: Understanding and
Improving MeanFlow Models", arXiv 2510.20771), on the symbols of ilct.objectives.meanflow.maths.

The alpha-Flow target, for 0 < alpha <= 1 and dt = alpha (t - r), under stop-gradient:

    u_tgt = ( dt v + (t - dt - r) u_theta(z_t - dt v, r, t - dt) ) / (t - r)

- alpha = 1: u_tgt = v, trajectory flow matching (the network is not evaluated);
- alpha -> 0: u_tgt = u + alpha (u_MF - u) + O(alpha^2), with u_MF = v - (t - r) du/dt the MeanFlow target:
  a step of size alpha toward it, with a discrete (JVP-free) derivative;
- alpha = 0: MeanFlow itself (the JVP target of ilct.objectives.meanflow.maths.meanflow_target).

Samples with r = t keep u_tgt = v. Their loss keeps its weight; the others' is multiplied by alpha (so the
objective's size does not shrink with alpha squared as the target approaches u).

The curriculum: alpha(k) falls from 1 to 0 along a sigmoid of slope `gamma` between the fractions `start`
and `end` of the run, and snaps to 1 or 0 within ALPHA_CLAMP of either end (so the last part of the run is
MeanFlow with its JVP):

    alpha(k) = 1 - sigmoid(gamma (k/K - (start + end)/2) / (end - start)),   K = total steps

The authors' DiT-B/2 setting: gamma = 25 over the whole run, r = t for half the batch (ilct leaves
meanflow.equal_fraction where the preset has it). Their optional clamp of u_tgt is not implemented.
"""

from __future__ import annotations

import math

import torch

from ilct.objectives.meanflow.maths import UFn, per_sample

ALPHA_CLAMP = 0.005  # alpha within this of 0 or 1 becomes 0 or 1


def alpha_at(k: int, total_steps: int, start: float = 0.0, end: float = 1.0, gamma: float = 25.0) -> float:
    """alpha of (0-based) step k of a run of total_steps: 1 before start, 0 after end, the sigmoid between."""
    progress = k / max(total_steps, 1)
    if progress <= start:
        return 1.0
    if progress >= end:
        return 0.0
    x = gamma * (progress - (start + end) / 2) / (end - start)
    alpha = 1.0 - 1.0 / (1.0 + math.exp(-x))
    return 0.0 if alpha < ALPHA_CLAMP else 1.0 if alpha > 1.0 - ALPHA_CLAMP else alpha


@torch.no_grad()
def alphaflow_target(u_fn: UFn, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, v: torch.Tensor,
                     alpha: float) -> torch.Tensor:
    """sg(u_tgt) for 0 < alpha <= 1 (alpha = 0 is MeanFlow's JVP target): one network evaluation at
    (z_t - dt v, r, t - dt) without gradient, v where r = t or alpha = 1."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must lie in (0, 1], got {alpha}")
    if alpha == 1.0:
        return v.detach()
    gap = t - r
    dt = alpha * gap
    u_next = u_fn(z - per_sample(dt, z) * v, r, t - dt)
    safe = torch.where(gap > 0, gap, torch.ones_like(gap))
    u_tgt = (per_sample(dt, z) * v + per_sample(gap - dt, z) * u_next) / per_sample(safe, z)
    return torch.where(per_sample(gap > 0, z), u_tgt, v).detach()


def loss_scale(r: torch.Tensor, t: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-sample loss multiplier: alpha where r < t (and alpha > 0), 1 where r = t."""
    if alpha == 0.0:
        return torch.ones_like(t)
    return torch.where(t > r, torch.full_like(t, alpha), torch.ones_like(t))
