"""MeanFlow (Geng, Deng, Bai, Kolter, He 2025, arXiv 2505.13447; METHOD.md section 7).

Symbols (t = 0 data, t = 1 noise):

    z_t      = (1 - t) x + t e,  e ~ N(0, I)          the path
    v        = e - x                                   the conditional velocity
    u(z, r, t) = 1/(t - r) int_r^t v(z_s, s) ds        the average velocity over [r, t]
    du/dt    = v . d_z u + d_t u                       total derivative, r held fixed
    u_tgt    = v - (t - r) du/dt                       the MeanFlow identity, under stop-gradient
    Delta    = u_theta(z_t, r, t) - sg(u_tgt)
    loss     = sg(w) ||Delta||^2,  w = 1 / (||Delta||^2 + c)^p

At r = t the target is v and the loss is flow matching. Sampling walks the flow map
backwards from noise: z_r = z_t - (t - r) u_theta(z_t, r, t).

Choices made where METHOD.md is silent (docs/method.md, "MeanFlow (beside the paper)"):
- ||Delta||^2 is the per-sample MEAN over elements (as every metric in ilct.objectives.consistency.losses);
  the authors' codes sum over elements. With p = 1 the two are the same loss when c is
  scaled by D = C*H*W: r / (r + c) = (D r) / (D r + D c), value and gradient.
- r = t is drawn per sample (Bernoulli with probability `equal_fraction`), as in the authors'
  PyTorch code (py-meanflow, "v0, used in paper"); their JAX code sets r = t on the first
  floor(0.75 B) rows of each batch instead.
- the time input of the network: t and t - r unscaled (TIME_SCALE below).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ilct.objectives.consistency.losses import cauchy, squared_residual
from ilct.errors import IlctError
from ilct.nets.attention import forward_mode

UFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # u(z, r, t), r and t of shape (B,)

# How t in [0, 1] reaches the DiT's sinusoidal time embedder (frequencies 1 .. 1e-4, max period
# 10000): fed as is, S = 1, as in both of the authors' codes (JAX Gsunshine/meanflow and the PyTorch
# py-meanflow) and in SiT. Then the embedding is a smooth, nearly straight curve in t, which the
# embedder's MLP separates. (The consistency net instead gets c_noise = 250 ln(sigma), about
# -1550 .. 1100.) A DDPM-like S = 1000 turns the fastest sinusoid 1000 radians over the path: every
# step of 1e-3 is resolved, but the JVP's d_t u is the network's derivative times S. On DiT-T/2 with
# random adaLN weights ||(t - r) du/dt|| was 5.0 at S = 1 against 87 at S = 1000 (||u|| = 13.4), and a
# central finite difference needed eps = 1e-4 instead of 1e-2 to match the JVP. S is a constructor
# argument of MeanFlowModel, to be ablated.
TIME_SCALE = 1.0


def per_sample(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1), to multiply the (B, C, H, W) tensor x with ((B, 1, 1, 1, 1) for clips)."""
    return s.reshape(-1, *([1] * (x.ndim - 1)))


def flow_path(x: torch.Tensor, e: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_t, v): z_t = (1 - t) x + t e and the conditional velocity v = e - x."""
    t_ = per_sample(t, x)
    return (1 - t_) * x + t_ * e, e - x


# --------------------------------------------------------------------------- time sampling


def sample_times(
    n: int, generator: torch.Generator, p_mean: float = -0.4, p_std: float = 1.0, equal_fraction: float = 0.75
) -> tuple[torch.Tensor, torch.Tensor]:
    """(r, t), each (n,) float32 on the generator's device, with 0 < r <= t < 1.

    Two logit-normal draws sigmoid(p_mean + p_std N(0, 1)), swapped so that t >= r; then
    each sample independently gets r = t with probability `equal_fraction` (the paper's best
    setting: 25 % of r != t, so equal_fraction = 0.75). The draws come from `generator` only,
    in the order t, r, mask: the same seed gives the same times.
    """
    if not 0.0 <= equal_fraction <= 1.0:
        raise IlctError(f"equal_fraction must lie in [0, 1], got {equal_fraction}")
    if p_std <= 0:
        raise IlctError(f"p_std must be > 0, got {p_std}")
    device = generator.device
    a = torch.sigmoid(p_mean + p_std * torch.randn(n, generator=generator, device=device))
    b = torch.sigmoid(p_mean + p_std * torch.randn(n, generator=generator, device=device))
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    equal = torch.rand(n, generator=generator, device=device) < equal_fraction
    return torch.where(equal, t, r), t


# --------------------------------------------------------------------------- the target


def _rng_state(device: torch.device):
    cuda = device.type == "cuda"
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if cuda else None)


def _set_rng_state(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def total_derivative_jvp(u_fn: UFn, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, v: torch.Tensor):
    """(u, du/dt) from ONE forward-mode pass of u_fn at (z, r, t) with tangent (v, 0, 1).

    The primal u keeps its autograd graph (the loss back-propagates through it). Inside, the
    scaled-dot-product attention runs on the math kernel: the flash and memory-efficient kernels
    have no forward-mode rule (and in fp32 under bf16 autocast: ilct.nets.attention).
    """
    with forward_mode():  # the math kernel, in fp32 under bf16 autocast (ilct.nets.attention says why)
        return torch.func.jvp(u_fn, (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))


def total_derivative_fd(u_fn: UFn, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, v: torch.Tensor, eps: float):
    """(u, du/dt) with du/dt = (u(z + eps v, r, t + eps) - u(z - eps v, r, t - eps)) / (2 eps).

    For networks or kernels without forward-mode support. Three evaluations (u with gradient, two
    without), all with the same dropout / label-dropout randomness (the RNG state is restored before
    each). A central difference: error O(eps^2) plus rounding ~ (precision of u) / eps, so run it
    in fp32 (under bf16 autocast eps = 1e-3 is far too small), and shrink eps with the time scale
    of the network (MeanFlowModel with time_scale = 1000 needs about 1e-4).
    """
    state = _rng_state(z.device)
    u = u_fn(z, r, t)
    with torch.no_grad():
        _set_rng_state(state, z.device)
        u_plus = u_fn(z + eps * v, r, t + eps)
        _set_rng_state(state, z.device)
        u_minus = u_fn(z - eps * v, r, t - eps)
    return u, (u_plus - u_minus) / (2 * eps)


def meanflow_target(
    u_fn: UFn,
    z: torch.Tensor,
    r: torch.Tensor,
    t: torch.Tensor,
    v: torch.Tensor,
    method: str = "jvp",
    eps: float = 1e-3,
    jvp: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, u_tgt): u = u_fn(z, r, t) with gradient, u_tgt = sg(v - (t - r) (v . d_z u + d_t u)).

    v is the velocity of the path at z (the conditional e - x, or the guided velocity of
    `guided_velocity`); it is also the tangent of z in the total derivative. `jvp(z, r, t, v)`, when
    given, returns (u, du/dt) in place of `total_derivative_jvp(u_fn, ...)`: a MeanFlowModel called
    with tangent=v, which runs the JVP inside its forward.

    For a DDP-wrapped network the JVP must go through the wrapped module (through .module the ranks'
    gradients are never averaged), and (torch 2.13) DDP must be built with broadcast_buffers=False,
    as ilct.training.loop does, and without find_unused_parameters or static_graph: torch.func.jvp refuses
    the in-place buffer sync of DDP's forward and the autograd.Function those two options wrap the
    output in. Best call the wrapper with the tangent (`jvp=lambda z, r, t, v: ddp(z, r, t, y,
    tangent=v)`): DDP's own forward work then stays outside the transform. With u_fn = ddp the JVP
    wraps DDP's forward, which works for one step only: on the second, DDP rebuilds its gradient
    buckets inside the forward, under the transform, and fails ("Cannot access data pointer of
    Tensor that doesn't have storage").
    """
    if method == "jvp":
        u, du_dt = jvp(z, r, t, v) if jvp is not None else total_derivative_jvp(u_fn, z, r, t, v)
    elif method == "finite_difference":
        u, du_dt = total_derivative_fd(u_fn, z, r, t, v, eps)
    else:
        raise IlctError(f"unknown MeanFlow derivative method {method!r}; methods: jvp, finite_difference")
    u_tgt = v - per_sample(t - r, du_dt) * du_dt
    return u, u_tgt.detach()


# --------------------------------------------------------------------------- the loss


def adaptive_weight(delta_sq: torch.Tensor, p: float = 1.0, c: float = 1e-3) -> torch.Tensor:
    """sg(w) = 1 / (sg(||Delta||^2) + c)^p, per sample. p = 0 gives w = 1 (plain L2)."""
    return 1.0 / (delta_sq.detach() + c) ** p


def meanflow_loss(
    u: torch.Tensor, u_tgt: torch.Tensor, metric: str = "adaptive", p: float = 1.0, c: float = 1e-3
) -> torch.Tensor:
    """Per-sample loss on ||Delta||^2 = mean over elements of (u - sg u_tgt)^2.

    adaptive: sg(w) ||Delta||^2, whose gradient for p = 1 is that of log(||Delta||^2 + c);
    l2: ||Delta||^2;  cauchy: log(1 + ||Delta||^2 / (2 c^2)) (METHOD.md section 4, technique 1).
    """
    delta_sq = squared_residual(u, u_tgt.detach())
    if metric == "adaptive":
        return adaptive_weight(delta_sq, p, c) * delta_sq
    if metric == "l2":
        return delta_sq
    if metric == "cauchy":
        return cauchy(delta_sq, c)
    raise IlctError(f"unknown MeanFlow metric {metric!r}; metrics: adaptive, l2, cauchy")


def guided_velocity(
    v: torch.Tensor,
    u_uncond_instant: torch.Tensor,
    w: float,
    kappa: float = 0.0,
    u_cond_instant: torch.Tensor | None = None,
) -> torch.Tensor:
    """The guided training velocity, no gradient: w v + (1 - w) u_theta(z_t, t, t | null).

    With kappa > 0 (the paper's appendix variant; the authors' default config has w = 1,
    kappa = 0.5): w v + (1 - w - kappa) u_theta(z_t, t, t | null) + kappa u_theta(z_t, t, t | y).
    w = 1, kappa = 0 is the unguided v. Samples trained with the null condition keep v.
    """
    g = w * v + (1 - w - kappa) * u_uncond_instant
    if kappa:
        if u_cond_instant is None:
            raise IlctError("guidance with kappa > 0 needs the conditional instantaneous velocity")
        g = g + kappa * u_cond_instant
    return g.detach()


# --------------------------------------------------------------------------- sampling


def sampling_times(steps: int = 1, m: float = 0.5) -> list[float]:
    """The times the flow map is evaluated between: [1, 0]; 2 steps [1, m, 0]; n steps a uniform grid."""
    if steps < 1:
        raise IlctError(f"steps must be >= 1, got {steps}")
    if steps == 2:
        if not 0.0 < m < 1.0:
            raise IlctError(f"the intermediate time m must lie in (0, 1), got {m}")
        return [1.0, m, 0.0]
    return [1.0 - k / steps for k in range(steps + 1)]


@torch.no_grad()
def meanflow_sample(u_fn: UFn, e: torch.Tensor, steps: int = 1, m: float = 0.5) -> torch.Tensor:
    """x from noise e by z_r = z_t - (t - r) u(z_t, r, t) over `sampling_times(steps, m)`.

    1 step: x = e - u(e, 0, 1).  2 steps: z_m = e - (1 - m) u(e, m, 1), x = z_m - m u(z_m, 0, m).
    """
    z = e
    times = sampling_times(steps, m)
    for t, r in zip(times[:-1], times[1:]):
        t_ = torch.full((e.shape[0],), t, dtype=e.dtype, device=e.device)
        r_ = torch.full((e.shape[0],), r, dtype=e.dtype, device=e.device)
        z = z - (t - r) * u_fn(z, r_, t_)
    return z


# --------------------------------------------------------------------------- the network


class MeanFlowModel(nn.Module):
    """u_theta(z, r, t[, cond]) = net(z, S t, cond, t2=S (t - r)), S = `time_scale` (see TIME_SCALE).

    net: a DiT built with two_times=True (t and t - r, each with its own embedder, summed into
    the adaLN conditioning). No preconditioning: the net predicts the average velocity itself.
    """

    def __init__(self, net: nn.Module, time_scale: float = TIME_SCALE):
        super().__init__()
        if not getattr(net, "two_times", False):
            raise IlctError("MeanFlow needs a network with two time inputs (a DiT built with two_times=True)")
        self.net = net
        self.time_scale = time_scale

    def forward(
        self, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
        tangent: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """u (B, C, H, W), or (B, C, T, H, W) for clips; with `tangent` v: (u, du/dt), one JVP at (z, r, t) with tangent (v, 0, 1)
        (`total_derivative_jvp`), run inside this forward so that a DDP wrapper's own forward work stays
        outside the transform (see `meanflow_target`)."""
        if tangent is not None:
            return total_derivative_jvp(lambda z_, r_, t_: self.forward(z_, r_, t_, cond), z, r, t, tangent)
        u = self.net(z, self.time_scale * t, cond, t2=self.time_scale * (t - r))
        return u.to(torch.float32)  # the target maths stay in fp32 under autocast
