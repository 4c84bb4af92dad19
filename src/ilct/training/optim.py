"""RAdam (METHOD.md section 3, Optimizer) that skips a step on the device, without a host sync.

torch.optim.RAdam computes the same update, but skipping a step whose gradient
is not finite needs `bool(torch.isfinite(norm))`, a host synchronization every
step. Here the decision stays a tensor: `found_inf` (0 or 1, on the device)
multiplies every change to the parameters and the moments, so a bad step leaves
them bit-for-bit unchanged and the step counter does not advance. The update
is torch.optim.RAdam's (L2 weight decay added to the gradient, eps outside the
square root):

    g   = grad + wd * theta
    m   = beta1 m + (1 - beta1) g               v = beta2 v + (1 - beta2) g^2
    t   = t + 1                                  rho_inf = 2 / (1 - beta2) - 1
    rho = rho_inf - 2 t beta2^t / (1 - beta2^t)
    theta -= lr m / (1 - beta1^t) * (r_t sqrt(1 - beta2^t) / (sqrt(v) + eps)   if rho > 5
                                    1                                           otherwise)
    r_t = sqrt((rho - 4)(rho - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho))

`radam_update_` writes it once, with multi-tensor (foreach) ops and the device
scalars as tensors (a per-parameter loop would launch a kernel per tensor).
`RAdam` calls it on lists of tensors, the gradients copied into one scratch buffer
with NaN/inf zeroed. The speed path (`train.fused_optimizer`) is ilct.training.flat's
`FlatRAdam`: the same formulas on flat buffers, one compiled kernel with
`train.compile`; this module does not know about it.

The state keys (`step`, `exp_avg`, `exp_avg_sq`) are torch.optim.RAdam's, so
checkpoints of either load into the other.

An optional linear warm-up (`train.warmup_steps`, not in the paper: RAdam's rectification already damps the
first updates) multiplies the learning rate by `warmup_factor(k, W)` = min(1, (k + 1) / W) at step k, and an
optional decay after it (`train.lr_decay`, `train.lr_final`, not in the paper either, whose lr is constant)
by f + (1 - f) d(p), p = (k - W) / (K - W) the fraction of the steps after the warm-up done, d one of
LR_DECAYS (d(0) = 1, d(1) = 0) and f the final fraction: `lr_factor` is both. It is a function of the step
alone, so it is never saved and a resumed run continues it exactly.
"""

from __future__ import annotations

import math

import torch
from torch.distributed.tensor import DTensor



def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded tensor (a DTensor under train.sharding=fsdp: a view, so in-place updates of
    it update the tensor), or the tensor itself. The update is elementwise, so each rank updates its shard."""
    return t.to_local() if isinstance(t, DTensor) else t


def warmup_factor(k: int, warmup_steps: int) -> float:
    """The learning rate's multiplier at (0-based) step k: (k + 1) / W over the first W steps, then 1."""
    return 1.0 if warmup_steps <= 0 else min(1.0, (k + 1) / warmup_steps)


# The shapes of the decay after the warm-up: d(p) for p in [0, 1], from d(0) = 1 to d(1) = 0.
LR_DECAYS = {
    "none": lambda p: 1.0,
    "linear": lambda p: 1.0 - p,
    "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p)),
}


def lr_factor(k: int, total_steps: int, warmup_steps: int = 0, decay: str = "none", final: float = 0.0) -> float:
    """The learning rate's multiplier at (0-based) step k of K = total_steps: warmup_factor(k, W) over the
    first W steps, then f + (1 - f) d(p) with p = (k - W) / (K - W) and d = LR_DECAYS[decay] (1 for "none")."""
    if k < warmup_steps or decay == "none":
        return warmup_factor(k, warmup_steps)
    p = min(1.0, (k - warmup_steps) / max(1, total_steps - warmup_steps))
    return final + (1.0 - final) * LR_DECAYS[decay](p)


def radam_update_(theta: list[torch.Tensor], g: list[torch.Tensor], m: list[torch.Tensor], v: list[torch.Tensor],
                  steps: list[torch.Tensor], keep: torch.Tensor, lr: float | torch.Tensor, beta1: float, beta2: float, eps: float,
                  weight_decay: float) -> None:
    """One RAdam update in place of theta, m, v and the step counts, from finite gradients g (overwritten);
    keep (a 0-d tensor) = 0: nothing changes. All tensors of one call share one step count."""
    dtype = theta[0].dtype
    keep64 = keep.double()
    if weight_decay:
        torch._foreach_add_(g, theta, alpha=weight_decay)
    torch._foreach_mul_(g, keep)  # keep = 0: g = 0, and the moment updates below change nothing
    # m <- beta1' m + (1 - beta1) g,  v <- beta2' v + (1 - beta2) g^2,  beta' = 1 - (1 - beta) keep
    torch._foreach_mul_(m, 1.0 - (1.0 - beta1) * keep)
    torch._foreach_add_(m, g, alpha=1.0 - beta1)
    torch._foreach_mul_(v, 1.0 - (1.0 - beta2) * keep)
    torch._foreach_addcmul_(v, g, g, value=1.0 - beta2)
    torch._foreach_add_(steps, keep)
    t = steps[0].double()  # the schedule in float64
    bc1 = 1 - beta1**t
    bc2 = 1 - beta2**t
    rho_inf = 2 / (1 - beta2) - 1
    rho = rho_inf - 2 * t * beta2**t / bc2
    rect = ((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)).clamp_min(0).sqrt()
    adaptive = (rho > 5).double()
    # theta += m * (a / (sqrt(v) + eps) + b),  a = -keep lr / bc1 adaptive rect sqrt(bc2),
    #                                         b = -keep lr / bc1 (1 - adaptive)
    a = (-keep64 * lr / bc1 * adaptive * rect * bc2.sqrt()).to(dtype)
    b = (-keep64 * lr / bc1 * (1 - adaptive)).to(dtype)
    u = torch._foreach_sqrt(v)
    torch._foreach_add_(u, eps)
    torch._foreach_reciprocal_(u)
    torch._foreach_mul_(u, a)
    torch._foreach_add_(u, b)
    torch._foreach_mul_(u, m)
    torch._foreach_add_(theta, u)


class RAdam(torch.optim.Optimizer):
    """The plain update over lists of tensors (ilct.training.flat.FlatRAdam runs the same formulas on flat buffers)."""

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-4,
                 weight_decay: float = 0.0):
        if lr < 0 or eps < 0 or weight_decay < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid RAdam settings lr={lr} betas={betas} eps={eps} weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def check_state(self) -> None:
        """A loaded state that training can go on from: finite hyperparameters in range, and per parameter
        a step count and both moments of its shape, dtype and finite (raises ValueError)."""
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in (lr, b1, b2, eps, wd)):
                raise ValueError("hyperparameters are not finite numbers")
            if not (lr > 0 and 0 <= b1 < 1 and 0 <= b2 < 1 and eps > 0 and wd >= 0):
                raise ValueError(f"hyperparameters out of range (lr={lr}, betas=({b1}, {b2}), eps={eps})")
            for p in group["params"]:
                st = self.state.get(p)
                if not st:
                    continue
                for key in ("exp_avg", "exp_avg_sq"):
                    t = st.get(key)
                    if not isinstance(t, torch.Tensor) or t.shape != p.shape or t.dtype != p.dtype:
                        raise ValueError(f"'{key}' does not fit a parameter of shape {tuple(p.shape)}")
                    t = local(t)  # (sharded: this rank's shard; ilct.training.sharding agrees the outcome over ranks)
                    if not torch.isfinite(t).all() or (key == "exp_avg_sq" and (t < 0).any()):
                        raise ValueError(f"'{key}' holds values that are not finite (or negative)")
                step = st.get("step")
                if not isinstance(step, torch.Tensor) or step.numel() != 1 or not (torch.isfinite(step) & (step >= 0)).all():
                    raise ValueError("a step count is not a finite number >= 0")

    @torch.no_grad()
    def step(self, found_inf: torch.Tensor | None = None, lr_scale: float = 1.0) -> None:  # type: ignore[override]
        """One update, at each group's lr times lr_scale (a warm-up); with `found_inf` (a 0/1 tensor) nonzero,
        nothing changes."""
        for index, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            dev, dtype = params[0].device, params[0].dtype
            keep = torch.ones((), device=dev, dtype=dtype) if found_inf is None else 1.0 - found_inf.to(dev, dtype)
            beta1, beta2 = group["betas"]
            lr = group["lr"] * lr_scale
            self.step_group(index, group, params, keep, (lr, beta1, beta2, group["eps"], group["weight_decay"]))

    def step_group(self, index: int, group: dict, params: list[torch.Tensor], keep: torch.Tensor, hyper: tuple) -> None:
        """radam_update_ over the group's parameters, their moments and step counts (lists of tensors)."""
        for p in params:
            st = self.state[p]
            if not st:
                st["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            elif st["step"].device != p.device:  # loaded from a torch.optim.RAdam checkpoint (CPU step)
                st["step"] = st["step"].to(p.device, torch.float32)
        radam_update_([local(p) for p in params], _own_grads([local(p.grad) for p in params]),
                      [local(self.state[p]["exp_avg"]) for p in params], [local(self.state[p]["exp_avg_sq"]) for p in params],
                      [self.state[p]["step"] for p in params], keep, *hyper)


def _own_grads(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """A copy of the gradients with NaN/inf set to 0, as views of one flat buffer (per dtype and device)."""
    if len({(g.dtype, g.device) for g in grads}) > 1:
        return [torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0) for g in grads]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.nan_to_num_(flat, nan=0.0, posinf=0.0, neginf=0.0)
    return [c.view_as(g) for c, g in zip(flat.split([g.numel() for g in grads]), grads)]
