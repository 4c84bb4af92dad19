"""The conditioning embedders shared by the backbones (ilct.nets.dit, ilct.nets.unet).

The time input t (c_noise = 250 ln sigma, METHOD.md section 3; a float per sample), class
labels with a null class, and pooled caption embeddings with a learned null caption, each mapped
to one vector per sample that the backbone adds into its conditioning (adaLN in the DiT, the
scale-shift GroupNorms in the ADM UNet). Label / caption dropout to the null condition makes one
model learn both the conditional and the unconditional f, so guidance works at sampling time.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of the (scalar) time input, then an MLP."""

    def __init__(self, hidden_size: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    @staticmethod
    def sinusoid(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.sinusoid(t, self.freq_dim))


def null_condition(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The null condition shaped like y: the null class `num_classes` for labels (B,), zero rows for
    caption embeddings (B, text_dim) (what label / caption dropout trains, and guidance samples with)."""
    return torch.zeros_like(y) if y.is_floating_point() else torch.full_like(y, num_classes)


class LabelEmbedder(nn.Module):
    """Class labels -> vectors; index num_classes is the null class used by label dropout."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.table = nn.Embedding(num_classes + 1, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def forward(self, labels: torch.Tensor, train: bool) -> torch.Tensor:
        if train and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.table(labels)


class TextEmbedder(nn.Module):
    """Caption embeddings (B, text_dim) -> vectors added to the adaLN conditioning c.

    A row of zeros means "no caption" and maps to a learned null vector; in training,
    caption dropout replaces a caption by the null with probability `dropout_prob`, so
    one model also learns the unconditional f and guidance works at sampling time.
    """

    def __init__(self, text_dim: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(text_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.null = nn.Parameter(torch.zeros(hidden_size))
        self.dropout_prob = dropout_prob

    def forward(self, e: torch.Tensor, train: bool) -> torch.Tensor:
        drop = e.abs().sum(dim=1) == 0
        if train and self.dropout_prob > 0:
            drop = drop | (torch.rand(e.shape[0], device=e.device) < self.dropout_prob)
        h = self.proj(e)
        return torch.where(drop[:, None], self.null.to(h.dtype).expand_as(h), h)
