"""The device-side skipping RAdam: torch.optim.RAdam's update, and a skipped step changes nothing."""

import copy
import math

import pytest
import torch

from ilct.training import flat
from ilct.runs.checkpoint import optimizer_from_files, optimizer_to_files
from ilct.io.files import read_tensors, save_tensors
from ilct.training.optim import LR_DECAYS, RAdam, lr_factor, warmup_factor


def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.GELU(), torch.nn.Linear(7, 3))


def grad_step(model: torch.nn.Module, x: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    model(x).square().mean().backward()


def trained(flat_: bool, steps: int = 3) -> tuple[torch.nn.Module, RAdam, torch.Tensor]:
    """net() (flat or not), its RAdam after `steps` good updates on one batch, and that batch."""
    model = net()
    if flat_:
        flat.flatten_(model)
    opt = (flat.FlatRAdam if flat_ else RAdam)(model.parameters(), lr=1e-2, weight_decay=1e-4)
    x = torch.randn(4, 5)
    for _ in range(steps):
        grad_step(model, x)
        opt.step(torch.zeros(()))
    return model, opt, x


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_torch_radam_through_the_rectification_switch(dtype):
    a = net().to(dtype)
    b = copy.deepcopy(a)
    oa = torch.optim.RAdam(a.parameters(), lr=1e-2, eps=1e-4, weight_decay=1e-4)
    ob = RAdam(b.parameters(), lr=1e-2, eps=1e-4, weight_decay=1e-4)
    g = torch.Generator().manual_seed(1)
    for _ in range(12):  # rho_t > 5 from step 6 on: both branches are exercised
        x = torch.randn(4, 5, generator=g, dtype=dtype)
        grad_step(a, x)
        grad_step(b, x)
        oa.step()
        ob.step(torch.zeros(()))
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p, atol=tol, rtol=tol)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(ob.state[q]["exp_avg_sq"], oa.state[p]["exp_avg_sq"], atol=tol, rtol=tol)


@pytest.mark.parametrize("compile_", [False, True])
def test_flat_weights_match_torch_radam_in_one_flat_update(compile_):
    a = net()
    b = copy.deepcopy(a)
    buf = flat.flatten_(b)
    oa = torch.optim.RAdam(a.parameters(), lr=1e-2, eps=1e-4, weight_decay=1e-4)
    ob = flat.FlatRAdam(b.parameters(), lr=1e-2, eps=1e-4, weight_decay=1e-4, compile=compile_)
    g = torch.Generator().manual_seed(1)
    for _ in range(12):
        x = torch.randn(4, 5, generator=g)
        grad_step(a, x)
        grad_step(b, x)
        oa.step()
        ob.step(torch.zeros(()))
    theta, _, m, v, step = ob._flat[0][1]  # the flat path ran, over the model's own buffer
    assert theta.data_ptr() == buf.data_ptr() and step.item() == 12
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(ob.state[q]["exp_avg"], oa.state[p]["exp_avg"], atol=1e-6, rtol=1e-6)
    state = [ob.state[q] for q in b.parameters()]  # the state holds views of the flat moments
    assert flat.flat_buffer([st["exp_avg_sq"] for st in state]).data_ptr() == v.data_ptr()
    assert flat.flat_buffer([st["exp_avg"] for st in state]).data_ptr() == m.data_ptr()
    n = sum(p.numel() for p in b.parameters())
    assert (buf != 0).sum() <= n and (m != 0).sum() <= n  # the alignment gaps stay zero


def test_warmup_factor_golden_values():
    assert [warmup_factor(k, 4) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == warmup_factor(7, 0) == 1.0  # 0: no warm-up


def test_lr_factor_golden_values():
    # K = 10, W = 2: the warm-up's (k + 1) / 2, then 1 - p with p = (k - 2) / 8
    assert [lr_factor(k, 10, 2, "linear") for k in range(10)] == pytest.approx(
        [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])
    # cosine to 0.1: 0.1 + 0.9 (1 + cos(pi p)) / 2 at p = 0, 0.5, 0.9
    assert [lr_factor(k, 10, 0, "cosine", 0.1) for k in (0, 5, 9)] == pytest.approx([1.0, 0.55, 0.1220245])
    assert [lr_factor(k, 10, 2) for k in range(10)] == [warmup_factor(k, 2) for k in range(10)]  # "none"


@pytest.mark.parametrize("decay", sorted(set(LR_DECAYS) - {"none"}))
@pytest.mark.parametrize("final", [0.0, 0.3])
def test_a_decay_falls_from_1_towards_the_final_fraction_after_the_warm_up(decay, final):
    f = [lr_factor(k, 100, 10, decay, final) for k in range(100)]
    assert f[:10] == [warmup_factor(k, 10) for k in range(10)] and f[10] == 1.0
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and final < f[-1] < final + 0.02


def test_the_training_step_scales_its_update_by_the_decay():
    from types import SimpleNamespace

    from ilct.config import load_config
    from ilct.training.step import training_step

    def update(decay: str, objective_scale: float = 1.0) -> torch.Tensor:  # the weights' change at step k = 3 of K = 4
        model, ema = net(), net()
        opt = RAdam(model.parameters(), lr=1e-2)  # its first steps are unrectified: the change is lr m / bc1
        objective = SimpleNamespace(loss=lambda m, b, s: SimpleNamespace(
            loss=m(b.x).square().mean(), consistency=torch.zeros(()), diffusion=torch.zeros(())),
            lr_scale=lambda k: objective_scale if k == 3 else 1.0)
        cfg = load_config("fmnist-ilct", ["train.total_steps=4", f"train.lr_decay={decay}"])
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        training_step(model, ema, opt, SimpleNamespace(x=torch.randn(4, 5, generator=torch.Generator().manual_seed(0))),
                      objective, None, cfg, k=3)
        return torch.cat([p.detach().flatten() for p in model.parameters()]) - before

    torch.testing.assert_close(update("linear"), 0.25 * update("none"))  # 1 - 3/4
    torch.testing.assert_close(update("cosine"), (0.5 * (1 + math.cos(0.75 * math.pi))) * update("none"))
    # the objective's own multiplier (consistency.lr_last_stage) on top of the decay
    torch.testing.assert_close(update("none", 0.5), 0.5 * update("none"))
    torch.testing.assert_close(update("linear", 0.5), 0.125 * update("none"))


@pytest.mark.parametrize("kind", ["list", "flat", "flat-compiled"])
def test_a_warmup_scales_each_steps_learning_rate_and_nothing_else(kind):
    from torch._dynamo.utils import counters

    a = net()
    b = copy.deepcopy(a)
    if kind != "list":
        flat.flatten_(b)
    oa = torch.optim.RAdam(a.parameters(), lr=1e-2, eps=1e-4, weight_decay=1e-4)
    ob = (RAdam(b.parameters(), lr=1e-2, eps=1e-4, weight_decay=1e-4) if kind == "list" else
          flat.FlatRAdam(b.parameters(), lr=1e-2, eps=1e-4, weight_decay=1e-4, compile=kind == "flat-compiled"))
    g = torch.Generator().manual_seed(1)
    graphs = []
    for k in range(10):  # 6 warm-up steps with a new lr each, then 4 at the full lr
        x = torch.randn(4, 5, generator=g)
        grad_step(a, x)
        grad_step(b, x)
        for group in oa.param_groups:
            group["lr"] = 1e-2 * warmup_factor(k, 6)
        oa.step()
        ob.step(torch.zeros(()), lr_scale=warmup_factor(k, 6))
        graphs.append(counters["stats"]["unique_graphs"])
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p, atol=1e-6, rtol=1e-6)
    assert ob.param_groups[0]["lr"] == 1e-2  # what a checkpoint saves: the lr without the warm-up
    assert graphs[-1] == graphs[0]  # compiled: a new learning rate is a new input, not a recompilation


@pytest.mark.parametrize("flat_", [False, True])
def test_a_skipped_step_changes_nothing_even_with_nan_gradients(flat_):
    model, opt, x = trained(flat_)
    before = copy.deepcopy(model.state_dict())
    state = copy.deepcopy(opt.state_dict())
    for p in model.parameters():
        p.grad = torch.full_like(p, float("nan"))
    opt.step(torch.ones(()))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    after = opt.state_dict()
    for i, st in state["state"].items():
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(after["state"][i][key], st[key]), key
    grad_step(model, x)  # and the next good step is a normal one
    opt.step(torch.zeros(()))
    assert opt.state_dict()["state"][0]["step"].item() == 4
    assert isinstance(opt, flat.FlatRAdam) == flat_ and (not flat_ or opt._flat[0][1] is not None)  # the flat path ran


def test_flat_state_survives_a_checkpoint_round_trip(tmp_path):
    """Saved through the checkpoint files (views and one shared step tensor become plain tensors), loaded
    into a fresh flat optimizer: the run continues exactly as without the break."""
    a, oa, x = trained(True)
    tensors, meta = optimizer_to_files(oa)
    save_tensors(tensors, tmp_path / "opt.safetensors")
    save_tensors(a.state_dict(), tmp_path / "model.safetensors")
    b = net()
    flat.flatten_(b)
    b.load_state_dict(read_tensors(tmp_path / "model.safetensors"))
    assert flat.module_buffer(b) is not None  # loading copies into the views
    ob = flat.FlatRAdam(b.parameters(), lr=1e-2, weight_decay=1e-4)
    ob.load_state_dict(optimizer_from_files(read_tensors(tmp_path / "opt.safetensors"), meta))
    for _ in range(3):
        grad_step(a, x)
        grad_step(b, x)
        oa.step(torch.zeros(()))
        ob.step(torch.zeros(()))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert ob._flat[0][1] is not None and ob.state_dict()["state"][3]["step"].item() == 6


def test_loads_a_torch_radam_checkpoint():
    a = net()
    oa = torch.optim.RAdam(a.parameters(), lr=1e-3)
    x = torch.randn(4, 5)
    grad_step(a, x)
    oa.step()
    b = copy.deepcopy(a)
    ob = RAdam(b.parameters(), lr=1e-3)
    ob.load_state_dict(oa.state_dict())
    grad_step(a, x)
    grad_step(b, x)
    oa.step()
    ob.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p, atol=1e-7, rtol=1e-6)


def test_rejects_bad_settings():
    with pytest.raises(ValueError):
        RAdam(net().parameters(), lr=-1.0)
    with pytest.raises(ValueError):
        RAdam(net().parameters(), betas=(0.9, 1.0))
