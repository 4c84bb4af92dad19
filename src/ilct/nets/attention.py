"""Scaled-dot-product attention, and how it runs under a forward-mode JVP (MeanFlow's d/dt u).

Under `torch.func.jvp` the attention runs on the math kernel (the flash and memory-efficient kernels have no
forward-mode rule). On CUDA with bf16 autocast, that kernel's backward then fails in torch 2.11
("expected input and grad types to match", from the softmax backward; benchmarks/device/meanflow_check.py
reproduces it with one attention call and no ilct code, docs/performance.md). Inside `forward_mode()` the
attention therefore runs in fp32 with autocast off and gives its output back in the autocast dtype; outside it
(every consistency and EDM step, every sample) `attend` is `F.scaled_dot_product_attention` itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

_FORWARD_MODE = [False]  # a plain flag (not a context variable): torch.compile guards on it


@contextmanager
def forward_mode() -> Iterator[None]:
    """The attention of the enclosed forward passes on the math kernel, in fp32 under autocast."""
    before = _FORWARD_MODE[0]
    _FORWARD_MODE[0] = True
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        _FORWARD_MODE[0] = before


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (B, heads, T, d) tensors (F.scaled_dot_product_attention's arguments)."""
    device = q.device.type
    if _FORWARD_MODE[0] and torch.is_autocast_enabled(device):
        with torch.autocast(device, enabled=False):
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kwargs)
        return out.to(torch.get_autocast_dtype(device))
    return F.scaled_dot_product_attention(q, k, v, **kwargs)
