"""MeanFlow maths (METHOD.md section 7): times, the JVP target, the loss, guidance, samplers."""

import math
import os
import sys

import pytest
import torch
from torch import nn

from ilct.errors import IlctError
from ilct.objectives.meanflow.maths import (
    TIME_SCALE, MeanFlowModel, adaptive_weight, flow_path, guided_velocity, meanflow_loss, meanflow_sample,
    meanflow_target, sample_times, sampling_times,
)
from ilct.nets.dit import build_dit

# torch's forward-mode AD loads its decompositions through torch.jit.script on first use (torch 2.13)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(1234)

# --------------------------------------------------------------------------- helpers


class TinyU(nn.Module):
    """A small smooth u_theta(z, r, t) on (B, 2, 2, 2) tensors: an MLP of (z, r, t)."""

    def __init__(self, dtype=torch.float64):
        super().__init__()
        torch.manual_seed(0)
        self.mlp = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 8)).to(dtype)

    def forward(self, z, r, t):
        h = torch.cat([z.flatten(1), r[:, None], t[:, None]], dim=1)
        return self.mlp(h).reshape(z.shape)


def gaussian_flow(s: float):
    """The exact flow of data x ~ N(0, s^2 I): sigma(t) = sqrt((1 - t)^2 s^2 + t^2) is the std of z_t.

    The flow map is the scaling z_r = z_t sigma(r) / sigma(t), so u(z, r, t) = z (1 - sigma(r)/sigma(t)) / (t - r),
    and the marginal velocity is v(z, t) = z sigma'(t) / sigma(t) = z ((t - 1) s^2 + t) / sigma(t)^2.
    """

    def sigma(t):
        return torch.sqrt((1 - t) ** 2 * s**2 + t**2)

    def u(z, r, t):
        return z * ((1 - sigma(r) / sigma(t)) / (t - r)).reshape(-1, 1, 1, 1)

    def v(z, t):
        return z * (((t - 1) * s**2 + t) / sigma(t) ** 2).reshape(-1, 1, 1, 1)

    return u, v


def open_dit(net):
    """Random adaLN and final weights: adaLN-Zero starts every branch closed (u = 0)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in [b.adaLN_modulation[-1] for b in net.blocks] + [net.final_layer.adaLN_modulation[-1],
                                                                 net.final_layer.linear]:
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.05)
    return net


def times(B, gen_seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(gen_seed)
    r, t = sample_times(B, g, equal_fraction=0.0)
    return r.to(dtype), t.to(dtype)


# --------------------------------------------------------------------------- time sampling


def test_times_are_ordered_deterministic_and_golden():
    r, t = sample_times(4, torch.Generator().manual_seed(0))
    r2, t2 = sample_times(4, torch.Generator().manual_seed(0))
    assert torch.equal(r, r2) and torch.equal(t, t2)
    assert r.dtype == torch.float32 and r.shape == (4,)
    # sigmoid(-0.4 + N(0, 1)) twice, min/max, then r = t where U < 0.75 (here samples 0, 2, 3)
    assert t.tolist() == pytest.approx([0.75786251, 0.33327076, 0.50083667, 0.60778868], abs=1e-7)
    assert r.tolist() == pytest.approx([0.75786251, 0.14202213, 0.50083667, 0.60778868], abs=1e-7)
    r3, _ = sample_times(4, torch.Generator().manual_seed(1))
    assert not torch.equal(r, r3)


def test_times_equal_fraction_and_logit_normal_marginal():
    n = 20000
    r, t = sample_times(n, torch.Generator().manual_seed(5), p_mean=-0.4, p_std=1.0, equal_fraction=0.75)
    assert bool((t >= r).all()) and bool((r > 0).all()) and bool((t < 1).all())
    equal = r == t
    assert equal.float().mean().item() == pytest.approx(0.75, abs=0.015)  # 5 standard deviations
    # for r != t, (r, t) = (min, max) of two logit-normal draws: logit r + logit t has mean 2 p_mean
    logit = lambda p: torch.log(p / (1 - p))  # noqa: E731
    pair_mean = (logit(r[~equal]) + logit(t[~equal])).mean().item() / 2
    assert pair_mean == pytest.approx(-0.4, abs=0.05)
    r0, t0 = sample_times(1000, torch.Generator().manual_seed(5), equal_fraction=0.0)
    r1, t1 = sample_times(1000, torch.Generator().manual_seed(5), equal_fraction=1.0)
    assert bool((r0 < t0).all()) and torch.equal(r1, t1)


def test_times_reject_bad_fraction():
    with pytest.raises(IlctError):
        sample_times(4, torch.Generator(), equal_fraction=1.5)


def test_flow_path():
    x, e = torch.full((2, 1, 1, 1), 2.0), torch.full((2, 1, 1, 1), -1.0)
    z, v = flow_path(x, e, torch.tensor([0.0, 0.25]))
    assert z.flatten().tolist() == [2.0, 1.25] and v.flatten().tolist() == [-3.0, -3.0]


# --------------------------------------------------------------------------- the target


def test_jvp_matches_closed_form_total_derivative():
    # u = a z t + b r z^2 + sin(t): du/dt = a v t + a z + 2 b r z v + cos(t)
    a, b = 0.7, -0.3

    def u_fn(z, r, t):
        T, R = t[:, None, None, None], r[:, None, None, None]
        return a * z * T + b * R * z**2 + torch.sin(T)

    z, v = torch.randn(3, 2, 2, 2, dtype=torch.float64), torch.randn(3, 2, 2, 2, dtype=torch.float64)
    r, t = times(3)
    T, R = t[:, None, None, None], r[:, None, None, None]
    du_dt = a * v * T + a * z + 2 * b * R * z * v + torch.cos(T)
    u, u_tgt = meanflow_target(u_fn, z, r, t, v)
    assert torch.allclose(u, u_fn(z, r, t), rtol=0, atol=1e-14)
    assert torch.allclose(u_tgt, v - (T - R) * du_dt, rtol=0, atol=1e-12)


def test_jvp_target_equals_finite_difference_on_an_mlp():
    net = TinyU()
    z, v = torch.randn(5, 2, 2, 2, dtype=torch.float64), torch.randn(5, 2, 2, 2, dtype=torch.float64)
    r, t = times(5)
    _, jvp_tgt = meanflow_target(net, z, r, t, v, method="jvp")
    _, fd_tgt = meanflow_target(net, z, r, t, v, method="finite_difference", eps=1e-5)
    assert torch.allclose(jvp_tgt, fd_tgt, rtol=0, atol=1e-8)


def test_jvp_target_equals_finite_difference_on_the_two_time_dit():
    torch.manual_seed(0)
    model = MeanFlowModel(open_dit(build_dit("DiT-T/2", 8, 4, two_times=True, num_classes=3))).eval()
    y = torch.tensor([0, 2, 3])
    u_fn = lambda z, r, t: model(z, r, t, y)  # noqa: E731
    z, v = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    r, t = times(3, dtype=torch.float32)
    u, jvp_tgt = meanflow_target(u_fn, z, r, t, v, method="jvp")
    _, fd_tgt = meanflow_target(u_fn, z, r, t, v, method="finite_difference", eps=1e-3)
    du_jvp, du_fd = (v - jvp_tgt), (v - fd_tgt)  # (t - r) du/dt
    assert du_jvp.abs().max() > 1e-2  # the derivative is not trivially zero
    assert float((du_jvp - du_fd).norm() / du_jvp.norm()) < 2e-3


def test_the_meanflow_identity_holds_for_exact_average_velocities():
    # x fixed: z_t = (1 - t) x0 + t e is a straight line and u = (z - x0) / t = e - x0 exactly
    x0 = torch.randn(1, 2, 2, 2, dtype=torch.float64).expand(4, -1, -1, -1)
    e = torch.randn(4, 2, 2, 2, dtype=torch.float64)
    r, t = times(4)
    z, v = flow_path(x0, e, t)
    u_fn = lambda z, r, t: (z - x0) / t[:, None, None, None]  # noqa: E731
    for method in ("jvp", "finite_difference"):
        u, u_tgt = meanflow_target(u_fn, z, r, t, v, method=method, eps=1e-4)
        assert torch.allclose(u, e - x0, atol=1e-12) and torch.allclose(u_tgt, u, atol=1e-9)
    # Gaussian data: u depends on r and t, du/dt != 0, and the marginal velocity closes the identity
    u_exact, v_marginal = gaussian_flow(0.5)
    z = torch.randn(4, 2, 2, 2, dtype=torch.float64)
    u, u_tgt = meanflow_target(u_exact, z, r, t, v_marginal(z, t))
    assert not torch.allclose(u, v_marginal(z, t), atol=1e-3)
    assert torch.allclose(u_tgt, u, rtol=0, atol=1e-12)


def test_with_r_equal_t_the_loss_is_flow_matching():
    net = TinyU()
    z, v = torch.randn(4, 2, 2, 2, dtype=torch.float64), torch.randn(4, 2, 2, 2, dtype=torch.float64)
    _, t = times(4)
    u, u_tgt = meanflow_target(net, z, t, t, v)
    assert torch.equal(u_tgt, v)
    fm = (net(z, t, t) - v).pow(2).flatten(1).mean(1)
    assert torch.allclose(meanflow_loss(u, u_tgt, "l2"), fm, rtol=1e-12)
    assert torch.allclose(meanflow_loss(u, u_tgt, "adaptive", p=0.0), fm, rtol=1e-12)


@pytest.mark.parametrize("method", ["jvp", "finite_difference"])
def test_gradients_flow_through_u_only(method):
    net = TinyU()
    z, v = torch.randn(4, 2, 2, 2, dtype=torch.float64), torch.randn(4, 2, 2, 2, dtype=torch.float64)
    r, t = times(4)
    u, u_tgt = meanflow_target(net, z, r, t, v, method=method)
    assert u.requires_grad and not u_tgt.requires_grad
    meanflow_loss(u, u_tgt).mean().backward()
    through_jvp = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    # the same loss with the target as a constant and u from a plain forward pass
    meanflow_loss(net(z, r, t), u_tgt.clone()).mean().backward()
    for g, h in zip(through_jvp, [p.grad for p in net.parameters()]):
        assert torch.allclose(g, h, rtol=1e-10, atol=1e-14)
    assert any(g.abs().sum() > 0 for g in through_jvp)


def test_jvp_through_a_training_dit_with_dropout_has_one_mask():
    torch.manual_seed(0)
    model = MeanFlowModel(open_dit(build_dit("DiT-T/2", 8, 4, two_times=True, dropout=0.3))).train()
    z, v = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    r, t = times(2, dtype=torch.float32)
    torch.manual_seed(1)
    u, u_tgt = meanflow_target(model, z, r, t, v)
    torch.manual_seed(1)
    assert torch.equal(u, model(z, r, t))  # the primal is the plain forward with the same dropout draw
    torch.manual_seed(1)
    _, fd_tgt = meanflow_target(model, z, r, t, v, method="finite_difference", eps=1e-3)
    # primal and tangent see one dropout mask: the JVP is the derivative of that one sub-network
    assert float(((v - u_tgt) - (v - fd_tgt)).norm() / (v - u_tgt).norm()) < 2e-3
    meanflow_loss(u, u_tgt).mean().backward()
    assert model.net.t2_embedder.mlp[0].weight.grad.abs().sum() > 0


def test_unknown_method_and_metric():
    z = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    with pytest.raises(IlctError):
        meanflow_target(TinyU(), z, torch.zeros(1), torch.ones(1), z, method="vjp")
    with pytest.raises(IlctError):
        meanflow_loss(torch.zeros(1, 2), torch.zeros(1, 2), metric="huber")


# --------------------------------------------------------------------------- the loss


def test_adaptive_weight_golden_numbers():
    d = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)
    assert adaptive_weight(d).tolist() == pytest.approx([1000.0, 1 / 0.501, 1 / 2.001], rel=1e-12)
    expect = [10.0, 1 / math.sqrt(0.51), 1 / math.sqrt(2.01)]
    assert adaptive_weight(d, p=0.5, c=0.01).tolist() == pytest.approx(expect, rel=1e-12)
    assert adaptive_weight(d, p=0.0).tolist() == [1.0, 1.0, 1.0]
    u, tgt = torch.full((1, 4), 1.0, dtype=torch.float64), torch.zeros(1, 4, dtype=torch.float64)
    assert meanflow_loss(u, tgt).item() == pytest.approx(1.0 / 1.001, rel=1e-12)  # ||Delta||^2 = 1 (a mean)
    assert meanflow_loss(u, tgt, "cauchy", c=0.5).item() == pytest.approx(math.log(3.0), rel=1e-12)


def test_adaptive_gradient_is_the_gradient_of_log_for_p_1():
    u = torch.randn(3, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    tgt = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    c = 1e-3
    (g_adaptive,) = torch.autograd.grad(meanflow_loss(u, tgt, "adaptive", p=1.0, c=c).sum(), u)
    log_loss = torch.log((u - tgt).pow(2).flatten(1).mean(1) + c)
    (g_log,) = torch.autograd.grad(log_loss.sum(), u)
    assert torch.allclose(g_adaptive, g_log, rtol=1e-12, atol=0)


def test_mean_with_c_is_the_jax_sum_with_c_times_d():
    # the authors sum over elements; with p = 1 a mean with c is the same loss as a sum with c * D
    u = torch.randn(3, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    tgt = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    D, c = 32, 1e-3
    mean_loss = meanflow_loss(u, tgt, "adaptive", p=1.0, c=c)
    s = (u - tgt).pow(2).flatten(1).sum(1)
    sum_loss = s / (s.detach() + c * D)
    assert torch.allclose(mean_loss, sum_loss, rtol=1e-12)
    g1, = torch.autograd.grad(mean_loss.sum(), u)
    g2, = torch.autograd.grad(sum_loss.sum(), u)
    assert torch.allclose(g1, g2, rtol=1e-12)


# --------------------------------------------------------------------------- guidance


def test_guided_velocity_formula_and_w_1_is_the_conditional_target():
    v, u_null = torch.randn(2, 1, 2, 2), torch.randn(2, 1, 2, 2, requires_grad=True)
    u_cond = torch.randn(2, 1, 2, 2)
    assert torch.equal(guided_velocity(v, u_null, 1.0), v)
    g = guided_velocity(v, u_null, 2.5)
    assert not g.requires_grad and torch.allclose(g, 2.5 * v - 1.5 * u_null)
    g = guided_velocity(v, u_null, 1.0, kappa=0.5, u_cond_instant=u_cond)
    assert torch.allclose(g, v - 0.5 * u_null + 0.5 * u_cond)
    with pytest.raises(IlctError):
        guided_velocity(v, u_null, 1.0, kappa=0.5)
    net = TinyU(torch.float32)
    z, r, t = torch.randn(2, 2, 2, 2), torch.tensor([0.2, 0.5]), torch.tensor([0.6, 0.5])
    v2 = torch.randn(2, 2, 2, 2)
    _, cond_tgt = meanflow_target(net, z, r, t, v2)
    _, guided_tgt = meanflow_target(net, z, r, t, guided_velocity(v2, torch.randn_like(v2), 1.0))
    assert torch.equal(guided_tgt, cond_tgt)


# --------------------------------------------------------------------------- sampling


def test_sampling_times():
    assert sampling_times(1) == [1.0, 0.0]
    assert sampling_times(2, m=0.3) == [1.0, 0.3, 0.0]
    assert sampling_times(4) == [1.0, 0.75, 0.5, 0.25, 0.0]
    for bad in (dict(steps=0), dict(steps=2, m=1.0)):
        with pytest.raises(IlctError):
            sampling_times(**bad)


def test_samplers_match_their_formulas_on_a_linear_u():
    a, b, c = 0.4, -0.7, 1.3  # u(z, r, t) = a z + b t + c r
    u_fn = lambda z, r, t: a * z + b * t[:, None, None, None] + c * r[:, None, None, None]  # noqa: E731
    e = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    assert torch.allclose(meanflow_sample(u_fn, e, steps=1), e - (a * e + b), atol=1e-14)
    m = 0.3
    z_m = e - (1 - m) * (a * e + b + c * m)
    x = z_m - m * (a * z_m + b * m)
    assert torch.allclose(meanflow_sample(u_fn, e, steps=2, m=m), x, atol=1e-14)


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_exact_average_velocity_samples_exactly_in_any_number_of_steps(steps):
    u_exact, _ = gaussian_flow(0.5)  # data N(0, 0.25 I): the flow map sends e to 0.5 e
    e = torch.randn(3, 2, 2, 2, dtype=torch.float64)
    assert torch.allclose(meanflow_sample(u_exact, e, steps=steps), 0.5 * e, atol=1e-12)


# --------------------------------------------------------------------------- the wrapper


def test_meanflow_model_feeds_scaled_t_and_t_minus_r():
    seen = {}

    class Stub(nn.Module):
        two_times = True

        def forward(self, x, t, y=None, t2=None):
            seen.update(t=t, y=y, t2=t2)
            return x.to(torch.float16)

    z, r, t = torch.randn(2, 4, 8, 8), torch.tensor([0.1, 0.5]), torch.tensor([0.4, 0.5])
    out = MeanFlowModel(Stub())(z, r, t, torch.tensor([1, 2]))
    assert out.dtype == torch.float32
    assert torch.allclose(seen["t"], TIME_SCALE * t) and torch.allclose(seen["t2"], TIME_SCALE * (t - r))
    assert seen["y"].tolist() == [1, 2] and TIME_SCALE == 1.0
    MeanFlowModel(Stub(), time_scale=1000.0)(z, r, t)
    assert torch.allclose(seen["t"], 1000 * t) and torch.allclose(seen["t2"], 1000 * (t - r))
    with pytest.raises(IlctError):
        MeanFlowModel(build_dit("DiT-T/4", 8, 4))  # one time input only


# --------------------------------------------------------------------------- DDP


def _ddp_grads(rank: int, world: int, port: int, out: str) -> None:
    """One gloo rank: the JVP through the DDP-wrapped model, as ilct.training.loop wraps it (broadcast_buffers=False)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = _ddp_model()
    ddp = DDP(model, broadcast_buffers=False)
    torch.save(_grads(model, lambda z, r, t: ddp(z, r, t), rank), f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def _ddp_model():
    torch.manual_seed(0)
    return MeanFlowModel(open_dit(build_dit("DiT-T/4", 8, 4, two_times=True)))


def _grads(model, u_fn, rank):
    g = torch.Generator().manual_seed(100 + rank)
    z, v = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    u, u_tgt = meanflow_target(u_fn, z, torch.tensor([0.1, 0.3]), torch.tensor([0.6, 0.3]), v)
    meanflow_loss(u, u_tgt).mean().backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.skipif(not torch.distributed.is_available() or sys.platform != "linux", reason="needs gloo and fork")
def test_jvp_through_ddp_averages_the_gradients_of_the_ranks(tmp_path):
    # Through the DDP wrapper the backward through u all-reduces. (torch 2.13: with DDP's default
    # broadcast_buffers=True the forward's in-place buffer sync is refused inside torch.func.jvp, and
    # find_unused_parameters / static_graph wrap the output in an autograd.Function functorch refuses;
    # through ddp.module the JVP runs but every rank keeps its own gradient.)
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_grads, args=(2, port, str(tmp_path)), nprocs=2, start_method="fork")
    local = [_grads(m, m, k) for k, m in ((k, _ddp_model()) for k in range(2))]
    assert not torch.allclose(local[0], local[1])
    mean = (local[0] + local[1]) / 2
    for k in range(2):
        torch.testing.assert_close(torch.load(tmp_path / f"rank{k}.pt"), mean, rtol=1e-4, atol=1e-6)


def test_the_model_runs_the_jvp_in_its_forward_when_given_a_tangent():
    # (so that a DDP wrapper's forward work stays outside torch.func.jvp: ilct.objectives.meanflow.objective calls it so)
    torch.manual_seed(0)
    model = MeanFlowModel(open_dit(build_dit("DiT-T/4", 8, 4, two_times=True, num_classes=3))).eval()
    y = torch.tensor([0, 2])
    z, v = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    r, t = times(2, dtype=torch.float32)
    u, du_dt = model(z, r, t, y, tangent=v)
    u_ref, tgt_ref = meanflow_target(lambda z_, r_, t_: model(z_, r_, t_, y), z, r, t, v)
    assert torch.equal(u, u_ref) and u.requires_grad
    torch.testing.assert_close(v - (t - r)[:, None, None, None] * du_dt, tgt_ref, rtol=0, atol=0)
    _, via_model = meanflow_target(None, z, r, t, v, jvp=lambda z_, r_, t_, v_: model(z_, r_, t_, y, tangent=v_))
    assert torch.equal(via_model, tgt_ref)


def test_the_cauchy_metric_has_the_gradient_of_the_adaptive_one_with_c_2c_squared():
    # d/dr log(1 + r / (2 c^2)) = 1 / (r + 2 c^2): meanflow.metric=cauchy with c is adaptive (p = 1) with 2 c^2
    u = torch.randn(3, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    tgt = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    c = 0.03
    (g_cauchy,) = torch.autograd.grad(meanflow_loss(u, tgt, "cauchy", c=c).sum(), u)
    (g_adaptive,) = torch.autograd.grad(meanflow_loss(u, tgt, "adaptive", p=1.0, c=2 * c**2).sum(), u)
    assert torch.allclose(g_cauchy, g_adaptive, rtol=1e-12, atol=0)


def test_attention_under_forward_mode_runs_in_fp32_under_autocast():
    """Inside forward_mode (MeanFlow's JVP) attention is computed in fp32 with autocast off and handed back in the
    autocast dtype (CUDA's math kernel fails in bf16 there); outside it, attend is the plain kernel call."""
    import torch.nn.functional as F

    from ilct.nets.attention import attend, forward_mode

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(3))
    exact = F.scaled_dot_product_attention(q, k, v)
    assert torch.equal(attend(q, k, v), exact)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with forward_mode():
            inside = attend(q.bfloat16(), k.bfloat16(), v.bfloat16())
        outside = attend(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert inside.dtype == torch.bfloat16 and outside.dtype == torch.bfloat16
    want = F.scaled_dot_product_attention(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float())
    assert torch.equal(inside, want.bfloat16())  # the fp32 computation, rounded once
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):  # the forward-mode rule exists on the math kernel only
        out, tangent = torch.func.jvp(lambda x: F.scaled_dot_product_attention(x, k, v), (q,), (torch.ones_like(q),))
    with forward_mode():
        out2, tangent2 = torch.func.jvp(lambda x: attend(x, k, v), (q,), (torch.ones_like(q),))
    assert torch.allclose(out, out2, atol=1e-6) and torch.allclose(tangent, tangent2, atol=1e-5)
