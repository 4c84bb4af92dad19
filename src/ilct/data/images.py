"""An in-memory image dataset: uint8 images plus labels, converted to [-1, 1] per batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class ImageDataset:
    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int64; -1 where unlabelled
    name: str  # identifies the data for the latent cache, e.g. "fashion_mnist/train@32"

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        n, h, w, c = self.images.shape
        return (c, h, w)

    def batch(self, start: int, stop: int) -> torch.Tensor:
        """Images start:stop as float32 NCHW in [-1, 1]."""
        x = torch.from_numpy(np.ascontiguousarray(self.images[start:stop])).permute(0, 3, 1, 2).float()
        return x / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW -> uint8 NHWC (what grids and .npz files hold)."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
