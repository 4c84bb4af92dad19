"""MeanFlow as an objective (Geng et al. 2025; METHOD.md section 7; the maths in ilct.objectives.meanflow.maths).

A step draws, per sample, the times (r, t) (logit-normal, r = t with probability meanflow.equal_fraction)
and a uniform that decides whether the sample is trained with the null condition (label / caption
dropout at rate model.class_dropout: the objective drops, not the backbone, because it must know which
samples keep the unguided velocity). The loss:

    z_t, v  = (1 - t) x + t e,  e - x                x: data, e: the batch's noise (OT-paired when method.ot_coupling)
    v~      = w v + (1 - w - kappa) u(z_t, t, t | null) + kappa u(z_t, t, t | y)   guidance trained in (no gradient);
              v itself where w = 1, kappa = 0, for unconditional models and for label-dropped samples
    u, u_tgt = u_theta(z_t, r, t), sg(v~ - (t - r) (v~ d_z u + d_t u))           one JVP (or a central difference)
    loss    = mean over the batch of the metric of Delta = u - u_tgt (adaptive | l2 | cauchy)

With meanflow.alpha_curriculum (AlphaFlow, ilct.objectives.meanflow.alphaflow) the state of step k is alpha(k): while
alpha > 0 the target is the discrete alpha-Flow target (flow matching at alpha = 1, one extra forward without
gradient in between) and the loss of the samples with r < t is scaled by alpha; at alpha = 0 it is the above.

The JVP runs through the model as the step passes it: the DDP wrapper under torchrun, so the backward
through u all-reduces (or the FSDP2-sharded model under train.sharding=fsdp, whose blocks gather their weights
inside the transform: ilct.training.sharding); the model is called with the tangent, so the JVP runs inside the wrapped forward
(ilct.objectives.meanflow.maths.meanflow_target says why). Sampling walks z_r = z_t - (t - r) u from
noise in 1 step, 2 steps (through meanflow.two_step_m) or n uniform steps; guidance is trained in, so
sampling takes no guidance weight, and no intermediate sigmas (--tau).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ilct.errors import IlctError
from ilct.nets.embedders import null_condition
from ilct.objectives.base import LossTerms, Objective
from ilct.objectives.consistency.losses import squared_residual
from ilct.objectives.meanflow.alphaflow import alpha_at, alphaflow_target, loss_scale
from ilct.objectives.meanflow.maths import (MeanFlowModel, flow_path, guided_velocity, meanflow_loss, meanflow_sample,
                                   meanflow_target, per_sample, sample_times, sampling_times)
from ilct.seeds import per_sample_noise


@dataclass
class MeanFlowConfig:
    """The `meanflow:` config section (METHOD.md section 7; read with train.objective = meanflow, else it keeps
    these defaults)."""

    p_mean: float = -0.4  # times: sigmoid(p_mean + p_std N(0, 1)), two draws, t = max and r = min
    p_std: float = 1.0
    equal_fraction: float = 0.75  # share of samples with r = t (flow matching); the paper's best
    derivative: str = "jvp"  # du/dt: jvp (one forward-mode pass) | finite_difference (central, step fd_eps)
    fd_eps: float = 1.0e-3
    metric: str = "adaptive"  # adaptive: sg(w) ||Delta||^2, w = 1/(||Delta||^2 + c)^p | l2 | cauchy (technique 1)
    p: float = 1.0  # the adaptive weight's power (0: plain L2)
    c: float = 1.0e-3  # the adaptive weight's c, and the Cauchy metric's c
    guidance_w: float = 1.0  # guidance trained in: v -> w v + (1 - w - kappa) u(z,t,t | null) + kappa u(z,t,t | y)
    guidance_kappa: float = 0.0  # (w = 1, kappa = 0: the unguided v; label-dropped samples always keep v)
    time_scale: float = 1.0  # S: the network's time inputs are S t and S (t - r)
    two_step_m: float = 0.5  # the intermediate time of 2-step sampling: 1 -> m -> 0
    # AlphaFlow (ilct.objectives.meanflow.alphaflow): the target moves from flow matching (alpha 1) to MeanFlow (alpha 0)
    alpha_curriculum: bool = False  # the switch (off: MeanFlow from step 0)
    alpha_start: float = 0.0  # fractions of train.total_steps: alpha 1 before start, 0 after end,
    alpha_end: float = 1.0  #   a sigmoid of slope alpha_gamma between
    alpha_gamma: float = 25.0

METRICS = ("adaptive", "l2", "cauchy")
DERIVATIVES = ("jvp", "finite_difference")


def check_meanflow_settings(mf: MeanFlowConfig) -> None:
    """Choices and ranges of the meanflow: section; IlctError naming the first bad field."""
    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise IlctError(f"config: meanflow.{key} {msg}, got {getattr(mf, key)!r}")

    need(mf.derivative in DERIVATIVES, "derivative", f"must be one of {', '.join(DERIVATIVES)}")
    need(mf.metric in METRICS, "metric", f"must be one of {', '.join(METRICS)}")
    need(abs(mf.p_mean) <= 100, "p_mean", "must lie within 100")
    need(0 < mf.p_std <= 100, "p_std", "must be in (0, 100]")
    need(0.0 <= mf.equal_fraction <= 1.0, "equal_fraction", "must be in [0, 1]")
    need(0 < mf.fd_eps <= 0.1, "fd_eps", "must be in (0, 0.1]")
    need(0 <= mf.p <= 10, "p", "must be in [0, 10]")
    need(0 < mf.c <= 1e3, "c", "must be in (0, 1e3]")
    need(0 < mf.guidance_w <= 100, "guidance_w", "must be in (0, 100]")
    need(0 <= mf.guidance_kappa < 1, "guidance_kappa", "must be in [0, 1)")
    need(0 < mf.time_scale <= 1e4, "time_scale", "must be in (0, 1e4]")
    need(0 < mf.two_step_m < 1, "two_step_m", "must be in (0, 1)")
    need(0 <= mf.alpha_start < mf.alpha_end <= 1, "alpha_start",
         f"and alpha_end must satisfy 0 <= start < end <= 1 (alpha_end {mf.alpha_end})")
    need(0 < mf.alpha_gamma <= 1000, "alpha_gamma", "must be in (0, 1000]")


class MeanFlow(Objective):
    name = "meanflow"
    term_names = ("delta_sq", None)  # the log's main term: the unweighted mean ||Delta||^2 (the adaptive loss sits near 1)
    time_inputs = 2  # u_theta(z, r, t): the backbone sees t and t - r
    drops_condition = True
    section = "meanflow"
    settings = MeanFlowConfig
    method_switches = ("ot_coupling", "nsln")  # techniques 3 and 5; technique 1 is meanflow.metric: cauchy

    @classmethod
    def check_settings(cls, section: MeanFlowConfig) -> None:
        check_meanflow_settings(section)

    @classmethod
    def check_config(cls, cfg) -> None:
        mf, m = cfg.meanflow, cfg.model
        if mf.guidance_w == 1.0 and mf.guidance_kappa == 0.0:
            return
        if m.num_classes == 0 and m.text_dim == 0:
            raise IlctError(f"config: meanflow.guidance_w / guidance_kappa guide toward a condition: they need a class- "
                            f"or text-conditional model (model.num_classes or model.text_dim), got w = "
                            f"{mf.guidance_w}, kappa = {mf.guidance_kappa}")
        if m.class_dropout == 0:
            raise IlctError("config: meanflow.guidance_w / guidance_kappa need model.class_dropout > 0 "
                            "(the null condition they guide away from must be trained), got 0.0")

    def wrap(self, net: nn.Module) -> nn.Module:
        return MeanFlowModel(net, self.cfg.meanflow.time_scale)

    def draw(self, k: int, batch_size: int, g: torch.Generator) -> torch.Tensor:
        """(B, 3): r, t (ilct.objectives.meanflow.maths.sample_times) and a uniform; below model.class_dropout
        the sample is trained with the null condition."""
        mf = self.cfg.meanflow
        r, t = sample_times(batch_size, g, mf.p_mean, mf.p_std, mf.equal_fraction)
        return torch.stack([r, t, torch.rand(batch_size, generator=g)], dim=1)

    def conditions(self, batch) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """(the condition the model is trained with, the batch's own condition, which samples were dropped to
        the null); all None for an unconditional model."""
        y = batch.y
        if y is None:
            return None, None, None
        dropped = batch.draw[:, 2] < self.cfg.model.class_dropout  # (b,)
        y_in = torch.where(dropped.reshape(-1, *([1] * (y.ndim - 1))), null_condition(y, self.cfg.model.num_classes), y)
        return y_in, y, dropped

    def velocity(self, model: nn.Module, z: torch.Tensor, t: torch.Tensor, v: torch.Tensor, y: torch.Tensor | None,
                 dropped: torch.Tensor | None) -> torch.Tensor:
        """The training velocity v~: guided where meanflow.guidance_w / kappa ask for it, v for the dropped samples."""
        mf = self.cfg.meanflow
        if y is None or (mf.guidance_w == 1.0 and mf.guidance_kappa == 0.0):
            return v
        null = null_condition(y, self.cfg.model.num_classes)
        with torch.no_grad():  # the instantaneous velocities u(z_t, t, t | .), in one forward
            if mf.guidance_kappa:
                u_null, u_cond = model(torch.cat([z, z]), torch.cat([t, t]), torch.cat([t, t]),
                                       torch.cat([null, y])).chunk(2)
            else:
                u_null, u_cond = model(z, t, t, null), None
        g = guided_velocity(v, u_null, mf.guidance_w, mf.guidance_kappa, u_cond)
        return torch.where(per_sample(dropped, v), v, g)

    def state(self, k: int, device: torch.device) -> float | None:
        """AlphaFlow's alpha at step k (meanflow.alpha_curriculum), else None (MeanFlow throughout)."""
        mf = self.cfg.meanflow
        if not mf.alpha_curriculum:
            return None
        return alpha_at(k, self.cfg.train.total_steps, mf.alpha_start, mf.alpha_end, mf.alpha_gamma)

    def log_fields(self, state: Any) -> dict[str, Any]:
        return {} if state is None else {"alpha": round(state, 6)}

    def loss(self, model: nn.Module, batch, state: Any) -> LossTerms:
        """(the loss, the unweighted mean ||Delta||^2, 0)."""
        mf = self.cfg.meanflow
        r, t = batch.draw[:, 0], batch.draw[:, 1]
        y_in, y, dropped = self.conditions(batch)
        z, v = flow_path(batch.x, batch.z, t)
        v = self.velocity(model, z, t, v, y, dropped)
        alpha = state or 0.0
        if alpha > 0.0:  # AlphaFlow before its end: the discrete target, no JVP
            u = model(z, r, t, y_in)
            u_tgt = alphaflow_target(lambda z_, r_, t_: model(z_, r_, t_, y_in), z, r, t, v, alpha)
        else:
            u, u_tgt = meanflow_target(lambda z_, r_, t_: model(z_, r_, t_, y_in), z, r, t, v, mf.derivative,
                                       mf.fd_eps, jvp=lambda z_, r_, t_, v_: model(z_, r_, t_, y_in, tangent=v_))
        loss = (meanflow_loss(u, u_tgt, mf.metric, mf.p, mf.c) * loss_scale(r, t, alpha)).mean()
        return LossTerms(loss, squared_residual(u.detach(), u_tgt).mean(), torch.zeros((), device=batch.x.device))

    def condition(self, model: nn.Module, cond: torch.Tensor, w: float, null_index: int):
        if w != 1.0:
            mf = self.cfg.meanflow
            raise IlctError(f"--guidance: a meanflow run has its guidance trained in (meanflow.guidance_w = "
                            f"{mf.guidance_w:g}, guidance_kappa = {mf.guidance_kappa:g}); sample it with guidance 1")
        return lambda z, r, t: model(z, r, t, cond)

    def sample(self, f, seed, indices, shape, steps, sigmas, device) -> torch.Tensor:
        e = per_sample_noise(seed, indices, shape, 1)[0].to(device)
        return meanflow_sample(f, e, steps, self.cfg.meanflow.two_step_m)

    def schedule(self, D: int) -> tuple[str, list[dict[str, Any]]]:
        """No consistency curriculum: the times are drawn the same way at every step; with
        meanflow.alpha_curriculum, alpha(k) moves the target from flow matching to MeanFlow (rows: alpha at
        each tenth of the run)."""
        mf, total = self.cfg.meanflow, self.cfg.train.total_steps
        head = (f"objective meanflow: no consistency curriculum (no N, no c); every step draws t, r from "
                f"sigmoid({mf.p_mean:g} + {mf.p_std:g} N(0, 1)) with r = t for {mf.equal_fraction:.0%} of samples, "
                f"metric {mf.metric}, {total} steps")
        if not mf.alpha_curriculum:
            return head + "; alpha_curriculum off: the MeanFlow target from step 0", []
        steps = sorted({min(total - 1, round(q * total / 10)) for q in range(11)})
        rows = [{"step": k, "alpha": alpha_at(k, total, mf.alpha_start, mf.alpha_end, mf.alpha_gamma)} for k in steps]
        return head + "; alpha_curriculum on: alpha(k) from flow matching (1) to MeanFlow (0)", rows

    def describe(self, steps: int, sigmas: list[float] | None) -> str:
        times = sampling_times(steps, self.cfg.meanflow.two_step_m)
        return f"{steps} step(s) at times {[round(s, 4) for s in times]}"
