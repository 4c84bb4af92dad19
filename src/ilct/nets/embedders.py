"""The conditioning embedders shared by the backbones (ilct.nets.dit, ilct.nets.unet).

The time input t (c_noise = 250 ln sigma, METHOD.md section 3; a float per sample), class
labels with a null class, and pooled caption embeddings with a learned null caption, each mapped
to one vector per sample that the backbone adds into its conditioning (adaLN in the DiT, the
scale-shift GroupNorms in the ADM UNet). Label / caption dropout to the null condition makes one
model learn both the conditional and the unconditional f, so guidance works at sampling time.

With caption tokens (`model.text_tokens` = L > 0, the DiT only) the condition y of a sample is one tensor
(1 + L, text_dim + 1) that packs the pooled embedding with the caption's per-token embeddings and their
mask (`pack_text`, `unpack_text`), so it travels like any other condition (batches, the objectives'
dropout, guidance's concatenation); all zeros is still the null caption. `TokenEmbedder` projects the
tokens into the context that the DiT blocks cross-attend to.
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


def text_condition_shape(text_dim: int, text_tokens: int) -> tuple[int, ...]:
    """The shape of one sample's text condition: (text_dim,) pooled only, or (1 + L, text_dim + 1) packed."""
    return (text_dim,) if text_tokens == 0 else (1 + text_tokens, text_dim + 1)


def pack_text(pooled: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(n, T) pooled, (n, L, T) tokens, (n, L) bool mask -> the packed condition (n, 1 + L, T + 1):

        row 0        [pooled, 0]
        row 1 + l    [token l, 1 if token l is a real token else 0]

    Padded tokens are stored as zeros. The null caption (zero pooled vector, no tokens) is all zeros.
    """
    n, L, T = tokens.shape
    if pooled.shape != (n, T) or mask.shape != (n, L):
        raise ValueError(f"pack_text: pooled {tuple(pooled.shape)}, tokens {tuple(tokens.shape)}, "
                         f"mask {tuple(mask.shape)} do not fit")
    m = mask.to(torch.bool)
    head = torch.cat([pooled.float(), pooled.new_zeros(n, 1, dtype=torch.float32)], dim=1)[:, None]  # (n, 1, T + 1)
    body = torch.cat([torch.where(m[..., None], tokens.float(), 0.0), m[..., None].float()], dim=2)  # (n, L, T + 1)
    return torch.cat([head, body], dim=1)


def unpack_text(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The packed condition (B, 1 + L, T + 1) -> pooled (B, T), tokens (B, L, T), mask (B, L) bool."""
    return y[:, 0, :-1], y[:, 1:, :-1], y[:, 1:, -1] > 0.5


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

    def dropped(self, e: torch.Tensor, train: bool) -> torch.Tensor:
        """(B,) bool: the samples that get the null caption (zero rows, and in training the dropout draws)."""
        drop = e.abs().sum(dim=1) == 0
        if train and self.dropout_prob > 0:
            drop = drop | (torch.rand(e.shape[0], device=e.device) < self.dropout_prob)
        return drop

    def forward(self, e: torch.Tensor, train: bool, drop: torch.Tensor | None = None) -> torch.Tensor:
        """`drop`: the samples to replace by the null, when the caller has decided (the DiT's token path
        shares one decision between the pooled vector and the tokens); by default `dropped(e, train)`."""
        drop = self.dropped(e, train) if drop is None else drop
        h = self.proj(e)
        return torch.where(drop[:, None], self.null.to(h.dtype).expand_as(h), h)


class TokenEmbedder(nn.Module):
    """Caption token embeddings (B, L, text_dim) and their mask -> the context the DiT blocks cross-attend to.

    Each token is projected to the hidden size (an MLP, as PixArt-alpha's caption projection); a learned
    null token is put in front of every sequence and is always attended, so a dropped caption (mask all
    False) attends to the null token alone and a softmax over keys is never empty. Padded tokens are
    zeroed before the projection and masked out of the attention: they have no influence on the output.
    """

    def __init__(self, text_dim: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(text_dim, hidden_size), nn.GELU(approximate="tanh"),
                                  nn.Linear(hidden_size, hidden_size))
        self.null = nn.Parameter(torch.zeros(1, 1, hidden_size))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> context (B, 1 + L, D) and its key mask (B, 1 + L) bool (True: attended)."""
        B = tokens.shape[0]
        h = self.proj(torch.where(mask[..., None], tokens, torch.zeros_like(tokens)))  # (B, L, D)
        context = torch.cat([self.null.to(h.dtype).expand(B, 1, -1), h], dim=1)  # (B, 1 + L, D)
        keep = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)  # (B, 1 + L)
        return context, keep
