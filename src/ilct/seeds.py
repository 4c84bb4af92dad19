"""Randomness made explicit: sample j of a draw with base seed s has its own generator, seeded by (s, j), so the
same seed gives the same noise (and images, and posterior draws) whatever the batch size or a resume.
"""

from __future__ import annotations

import numpy as np
import torch


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit seed for sample `index` of a draw with base `seed`."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def per_sample_noise(seed: int, indices: range | list[int], shape: tuple[int, ...], draws: int) -> list[torch.Tensor]:
    """draws x (B, *shape) standard normal tensors; sample j's come from its own generator."""
    per = []
    for j in indices:
        g = torch.Generator().manual_seed(sample_seed(seed, j))
        per.append(torch.randn((draws, *shape), generator=g))
    stacked = torch.stack(per, dim=1)  # (draws, B, *shape)
    return list(stacked.unbind(0))
