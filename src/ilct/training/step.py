"""One training update: the objective's loss under autocast, backward, RAdam and the EMA (constant, or the
power-function profiles: ilct.training.ema), skipped on the device when the loss or gradient is not finite (no
host synchronization)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP

from ilct.runs import faults
from ilct.training import flat
from ilct.training.batches import Batch
from ilct.training.ema import power_beta
from ilct.schema import Config
from ilct.objectives import Objective
from ilct.training.optim import RAdam, lr_factor


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return model.module if isinstance(model, DDP) else model


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float, keep: torch.Tensor | None = None) -> None:
    """ema <- ema + (1 - decay) keep (model - ema), a lerp per weight tensor (one, when the weights are one flat
    buffer: ilct.training.flat); keep = 0 (a skipped step) changes nothing."""
    for e, m in zip(*flat.weight_tensors(ema, model)):
        w = torch.full((), 1.0 - decay, dtype=e.dtype, device=e.device)
        e.lerp_(m, w if keep is None else w * keep.to(w.dtype))


def ema_step(ema: torch.nn.Module, model: torch.nn.Module, cfg: Config, t: int, keep: torch.Tensor,
             profiles: Sequence[torch.nn.Module] = ()) -> None:
    """The EMA after step t (counted from 1): train.ema=constant, ema_decay; train.ema=power, each profile
    (`ema`, then `profiles`, in the order of train.ema_stds) with its own beta_t (ilct.training.ema.power_beta)."""
    tc = cfg.train
    if tc.ema == "constant":
        ema_update(ema, model, tc.ema_decay, keep=keep)
        return
    modules = (ema, *profiles)
    if len(modules) != len(tc.ema_stds):
        raise ValueError(f"ema_step: {len(modules)} EMA modules for the {len(tc.ema_stds)} train.ema_stds")
    for module, std in zip(modules, tc.ema_stds):
        ema_update(module, model, power_beta(std, t), keep=keep)


def training_step(
    model: torch.nn.Module,  # the student (DDP-wrapped and/or compiled as configured)
    ema: torch.nn.Module,
    opt: RAdam,
    batch: Batch,
    objective: Objective,
    state: Any,  # the objective's schedule state of this step
    cfg: Config,
    k: int = 0,
    profiles: Sequence[torch.nn.Module] = (),  # train.ema=power: the EMA profiles after the first (`ema`)
) -> tuple[torch.Tensor, torch.Tensor]:
    """One update (step k + 1), without a host synchronization: returns (loss, main term, auxiliary term) and
    a 0/1 tensor `bad` (the loss or gradient was not finite: the update was skipped on the device)."""
    t = cfg.train
    if batch.x.is_cuda:  # a new iteration for CUDA graphs (compiled with mode reduce-overhead); no-op otherwise
        torch.compiler.cudagraph_mark_step_begin()
    with torch.autocast(device_type=batch.x.device.type, dtype=torch.bfloat16, enabled=t.precision == "bf16"):
        terms = objective.loss(model, batch, state)
    loss = faults.corrupt_loss(k, terms.loss)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    if t.grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if isinstance(grad_norm, DTensor):  # sharded gradients (train.sharding=fsdp): the norm over every rank's shards
        grad_norm = grad_norm.full_tensor()
    bad = (~(torch.isfinite(grad_norm) & torch.isfinite(loss.detach()))).float()
    lr_scale = lr_factor(k, t.total_steps, t.warmup_steps, t.lr_decay, t.lr_final) * objective.lr_scale(k)
    opt.step(found_inf=bad, lr_scale=lr_scale)
    ema_step(ema, unwrap(model), cfg, k + 1, 1.0 - bad, profiles)
    values = torch.stack([terms.loss.detach().float(), terms.consistency.float(), terms.diffusion.float()])
    return torch.where(bad > 0, torch.zeros_like(values), values), bad
