"""Weights as views of one flat buffer, so that the optimizer and the EMA touch every weight in one kernel.

A DiT-B/2 has 150 parameter tensors. Multi-tensor (foreach) kernels update
them in a few launches, but every elementwise operation of the RAdam update is
still one pass over all 130 M weights in memory: about 35 passes, 10 ms per
step on an H100 (docs/performance.md). When the parameters are views of one
buffer, the whole update is a function of a few flat tensors, which
torch.compile fuses into one kernel (ilct.optim).

Layout: the parameters in `module.parameters()` order, each starting at a
multiple of ALIGN elements (so that every view stays 64-byte aligned, as
compiled kernels assume); the gaps hold zeros and stay zero under the update.
`flatten_` changes no value and no state-dict key.
"""

from __future__ import annotations

import weakref
from typing import Sequence

import torch
from torch import nn

ALIGN = 16  # elements: 64 bytes of fp32


def layout(numels: Sequence[int]) -> tuple[list[int], int]:
    """(offset of each tensor, total length) of the flat buffer: each offset a multiple of ALIGN."""
    offsets, end = [], 0
    for n in numels:
        start = -(-end // ALIGN) * ALIGN
        offsets.append(start)
        end = start + n
    return offsets, -(-end // ALIGN) * ALIGN


def flatten_(module: nn.Module) -> torch.Tensor:
    """Make every parameter of `module` a view of one new flat buffer (same values); returns the buffer."""
    params = list(module.parameters())
    if not params:
        raise ValueError("flatten_: the module has no parameters")
    if len({(p.dtype, p.device) for p in params}) > 1:
        raise ValueError("flatten_: the parameters must share one dtype and device")
    flat = torch.zeros(layout([p.numel() for p in params])[1], dtype=params[0].dtype, device=params[0].device)
    with torch.no_grad():
        for p, view in zip(params, views(flat, params)):
            view.copy_(p)
            p.data = view
    return flat


def views(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Views of `flat` shaped like `like`, at the offsets of `layout`."""
    offsets, _ = layout([t.numel() for t in like])
    return [flat[o:o + t.numel()].view_as(t) for o, t in zip(offsets, like)]


def flat_buffer(tensors: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """The flat buffer that `tensors` are the views of (in the layout above), or None if they are not."""
    if not tensors:
        return None
    t0 = tensors[0]
    storage = t0.untyped_storage()
    base = t0.storage_offset()
    offsets, total = layout([t.numel() for t in tensors])
    for t, o in zip(tensors, offsets):
        if (t.dtype != t0.dtype or not t.is_contiguous() or t.storage_offset() != base + o
                or t.untyped_storage().data_ptr() != storage.data_ptr()):
            return None
    if storage.nbytes() < (base + total) * t0.element_size():
        return None
    return torch.empty(0, dtype=t0.dtype, device=t0.device).set_(storage, base, (total,))


_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple[int, int, torch.Tensor | None]]" = weakref.WeakKeyDictionary()


def module_buffer(module: nn.Module) -> torch.Tensor | None:
    """flat_buffer of the module's parameters, remembered per module (checked against the first and
    last parameter's address, so a module flattened again or moved is looked at anew)."""
    params = list(module.parameters())
    if not params:
        return None
    key = (params[0].data_ptr(), params[-1].data_ptr())
    hit = _CACHE.get(module)
    if hit is not None and hit[:2] == key:
        return hit[2]
    flat = flat_buffer(params)
    _CACHE[module] = (*key, flat)
    return flat
