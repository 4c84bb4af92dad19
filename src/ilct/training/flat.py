"""Weights as views of one flat buffer, so that the optimizer and the EMA touch every weight in one kernel.

A DiT-B/2 has 150 parameter tensors. Multi-tensor (foreach) kernels update
them in a few launches, but every elementwise operation of the RAdam update is
still one pass over all 130 M weights in memory: about 35 passes, 10 ms per
step on an H100 (docs/performance.md). When the parameters are views of one
buffer, the whole update is a function of a few flat tensors, which
torch.compile fuses into one kernel (ilct.training.optim).

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
from torch.distributed.tensor import DTensor

from ilct.training.optim import RAdam, local, radam_update_

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
    if not params or isinstance(params[0], DTensor):  # (sharded weights are never flat: ilct.training.sharding)
        return None
    key = (params[0].data_ptr(), params[-1].data_ptr())
    hit = _CACHE.get(module)
    if hit is not None and hit[:2] == key:
        return hit[2]
    flat = flat_buffer(params)
    _CACHE[module] = (*key, flat)
    return flat


# --------------------------------------------------------------------------- the speed path of the optimizer and the EMA


def weight_tensors(a: nn.Module, b: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The weights of two modules of one layout as paired lists: one flat buffer each when both are flat,
    else their parameters (detached; sharded ones: this rank's shards, ilct.training.sharding)."""
    fa, fb = module_buffer(a), module_buffer(b)
    if fa is not None and fb is not None and fa.shape == fb.shape:
        return [fa], [fb]
    return [local(p.detach()) for p in a.parameters()], [local(p.detach()) for p in b.parameters()]


def flat_update_(theta: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step: torch.Tensor,
                 keep: torch.Tensor, lr: float | torch.Tensor, beta1: float, beta2: float, eps: float,
                 weight_decay: float) -> None:
    """radam_update_ on flat tensors, NaN/inf in g zeroed first (a NaN must not reach the moments, even times 0)."""
    torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0)
    radam_update_([theta], [g], [m], [v], [step], keep, lr, beta1, beta2, eps, weight_decay)


class FlatRAdam(RAdam):
    """RAdam whose groups of flat parameters (views of one buffer, `flatten_`) are updated as four flat tensors;
    with compile=True torch.compile fuses the update into one kernel (one pass over the weights instead of
    about 35). Other groups take RAdam's list path. The moments in the state stay per-parameter views of the
    flat moments, so checkpoints keep torch.optim.RAdam's format."""

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-4,
                 weight_decay: float = 0.0, compile: bool = False):
        super().__init__(params, lr, betas, eps, weight_decay)
        self._flat_update = torch.compile(flat_update_, fullgraph=True, dynamic=False) if compile else flat_update_
        self._lr: tuple[float, torch.Tensor] | None = None  # under compile: the last lr as a 0-d tensor
        # group index -> (address of its first parameter, (theta, g, m, v, step) or None if not flat)
        self._flat: dict[int, tuple[int, tuple[torch.Tensor, ...] | None]] = {}

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        self._flat.clear()  # the loaded moments are new tensors: gathered into flat buffers at the next step

    def add_param_group(self, param_group) -> None:
        super().add_param_group(param_group)
        if hasattr(self, "_flat"):
            self._flat.clear()

    def _flat_group(self, index: int, params: list[torch.Tensor]) -> tuple[torch.Tensor, ...] | None:
        """(theta, g, m, v, step) flat buffers of a group whose parameters are flat views, else None.
        The state's per-parameter moments become views of m and v; every parameter shares one step tensor."""
        hit = self._flat.get(index)
        if hit is not None and hit[0] == params[0].data_ptr():
            return hit[1]
        theta = flat_buffer(params)
        found = None
        if theta is not None:
            m, v = torch.zeros_like(theta), torch.zeros_like(theta)
            step = torch.zeros((), dtype=torch.float32, device=theta.device)
            old = [self.state[p] for p in params]
            if all(old):  # moments from before (a loaded checkpoint, or steps taken before flattening)
                torch._foreach_copy_(views(m, params), [st["exp_avg"] for st in old])
                torch._foreach_copy_(views(v, params), [st["exp_avg_sq"] for st in old])
                step.copy_(old[0]["step"])
            for p, mp, vp in zip(params, views(m, params), views(v, params)):
                self.state[p].update(step=step, exp_avg=mp, exp_avg_sq=vp)
            found = (theta, torch.zeros_like(theta), m, v, step)
        self._flat[index] = (params[0].data_ptr(), found)
        return found

    def step_group(self, index: int, group: dict, params: list[torch.Tensor], keep: torch.Tensor, hyper: tuple) -> None:
        flat = self._flat_group(index, group["params"]) if len(params) == len(group["params"]) else None
        if flat is None:
            return super().step_group(index, group, params, keep, hyper)
        theta, g, m, v, step = flat
        torch._foreach_copy_(views(g, params), [p.grad for p in params])
        self._flat_update(theta, g, m, v, step, keep, self._lr_input(hyper[0], theta.device), *hyper[1:])

    def _lr_input(self, lr: float, device: torch.device) -> float | torch.Tensor:
        """The learning rate as the update takes it: compiled, a 0-d float64 tensor (made again only when its
        value changes, as in a warm-up), so that a new value is a new input and not a recompilation."""
        if self._flat_update is flat_update_:
            return lr
        if self._lr is None or self._lr[0] != lr or self._lr[1].device != device:
            self._lr = (lr, torch.tensor(lr, dtype=torch.float64, device=device))
        return self._lr[1]
