"""Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN manifolds.

Each real feature gets a ball whose radius is the distance to its k-th nearest
real neighbour (itself excluded); precision is the fraction of generated
features inside at least one real ball. Recall swaps the roles.
"""

from __future__ import annotations

import numpy as np
import torch


def knn_radii(features: torch.Tensor, k: int = 3, chunk: int = 2048) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point."""
    out = []
    for s in range(0, len(features), chunk):
        d = torch.cdist(features[s : s + chunk], features)
        out.append(d.kthvalue(k + 1, dim=1).values)  # k + 1: the point itself is at distance 0
    return torch.cat(out)


def coverage(manifold: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor, chunk: int = 2048) -> float:
    """Fraction of queries within radii[j] of some manifold point j."""
    inside = []
    for s in range(0, len(queries), chunk):
        d = torch.cdist(queries[s : s + chunk], manifold)
        inside.append((d <= radii[None, :]).any(dim=1))
    return float(torch.cat(inside).float().mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    r = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    f = torch.as_tensor(np.asarray(fake), dtype=torch.float64)
    if len(r) <= k or len(f) <= k:
        raise ValueError(f"need more than k={k} points on each side")
    precision = coverage(r, knn_radii(r, k), f)
    recall = coverage(f, knn_radii(f, k), r)
    return precision, recall
