"""Exact minibatch optimal-transport coupling (METHOD.md section 4, technique 3).

With B data latents and B noise draws of equal uniform weight, the optimal
plan is a permutation; scipy's Hungarian solver finds it exactly.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def ot_cost(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Cost matrix C[a, b] = ||x_a - z_b||^2 over flattened samples."""
    return torch.cdist(x.flatten(1).float(), z.flatten(1).float()).pow(2)


def ot_permutation(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """perm with x[a] paired to z[perm[a]], minimizing sum_a ||x_a - z_perm[a]||^2."""
    cost = ot_cost(x, z).detach().cpu().double().numpy()
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty_like(cols)
    perm[rows] = cols
    return torch.from_numpy(perm).to(device=z.device, dtype=torch.long)


def ot_couple(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The noise reordered so that z_out[a] is x[a]'s assigned draw (labels stay with x)."""
    return z[ot_permutation(x, z)]
