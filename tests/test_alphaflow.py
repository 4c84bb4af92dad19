"""AlphaFlow's curriculum (ilct.objectives.meanflow.alphaflow): the schedule's golden values, the discrete target's
closed form and its limits (flow matching at alpha = 1, a step toward the MeanFlow target as alpha -> 0),
the loss scale, and the switch on the MeanFlow objective trained through the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ilct.cli import main
from ilct.config import load_config
from ilct.errors import IlctError
from ilct.objectives.meanflow.alphaflow import ALPHA_CLAMP, alpha_at, alphaflow_target, loss_scale
from ilct.objectives.meanflow.maths import meanflow_target
from ilct.objectives import make_objective
from test_end_to_end import expect_error, train_args
from test_meanflow_objective import tiny_meanflow

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def test_alpha_schedule_golden_values():
    assert alpha_at(0, 100) == 1.0 and alpha_at(50, 100) == 0.5 and alpha_at(100, 100) == 0.0
    assert alpha_at(60, 100) == pytest.approx(1 - 1 / (1 + math.exp(-2.5)))  # 25 (0.6 - 0.5) / 1 = 2.5: 0.0759
    assert alpha_at(80, 100) == 0.0  # 1 - sigmoid(7.5) = 5.5e-4 < ALPHA_CLAMP: MeanFlow
    assert alpha_at(25, 100) == 1.0  # sigmoid(-6.25) = 0.0019 < ALPHA_CLAMP: still flow matching
    assert alpha_at(40, 100, start=0.5, end=1.0) == 1.0 and alpha_at(75, 100, start=0.5, end=1.0) == 0.5
    alphas = [alpha_at(k, 1000, 0.1, 0.9, 10.0) for k in range(1001)]
    assert all(a >= b for a, b in zip(alphas, alphas[1:]))  # never rises
    assert all(a in (0.0, 1.0) or ALPHA_CLAMP <= a <= 1 - ALPHA_CLAMP for a in alphas)


def test_the_discrete_target_golden_value_and_alpha_1_is_flow_matching():
    def u_fn(z, r, t):  # u(z, r, t) = z + r + t, elementwise
        return z + (r + t).reshape(-1, 1, 1, 1)

    z, v = torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 2.0)
    r, t = torch.tensor([0.2]), torch.tensor([0.6])
    # dt = 0.5 * 0.4 = 0.2; u(z - dt v, r, t - dt) = 0.6 + 0.2 + 0.4 = 1.2; (0.2 * 2 + 0.2 * 1.2) / 0.4 = 1.6
    assert alphaflow_target(u_fn, z, r, t, v, 0.5).item() == pytest.approx(1.6)
    assert torch.equal(alphaflow_target(u_fn, z, r, t, v, 1.0), v)
    same = alphaflow_target(u_fn, z.repeat(2, 1, 1, 1), torch.tensor([0.3, 0.2]), torch.tensor([0.3, 0.6]),
                            v.repeat(2, 1, 1, 1), 0.5)
    assert same[0].item() == 2.0 and same[1].item() == pytest.approx(1.6)  # r = t keeps v
    with pytest.raises(ValueError, match="alpha"):
        alphaflow_target(u_fn, z, r, t, v, 0.0)


def test_small_alpha_steps_toward_the_meanflow_target():
    torch.manual_seed(0)
    w = torch.randn(4, 4, dtype=torch.float64) / 2

    def u_fn(z, r, t):  # smooth and nonlinear in z, r and t
        h = torch.einsum("ij,bjhw->bihw", w, z)
        return torch.tanh(h + (2 * t - r).reshape(-1, 1, 1, 1)) * (1 + t).reshape(-1, 1, 1, 1)

    z, v = torch.randn(3, 4, 2, 2, dtype=torch.float64), torch.randn(3, 4, 2, 2, dtype=torch.float64)
    r, t = torch.tensor([0.1, 0.3, 0.5], dtype=torch.float64), torch.tensor([0.7, 0.9, 0.6], dtype=torch.float64)
    u, u_mf = meanflow_target(u_fn, z, r, t, v)
    errors = []
    for alpha in (0.1, 0.01, 0.001):  # (u_tgt - u) / alpha -> u_MF - u, with an error that shrinks like alpha
        step = (alphaflow_target(u_fn, z, r, t, v, alpha) - u.detach()) / alpha
        errors.append((step - (u_mf - u.detach())).abs().max().item())
    assert 7 < errors[0] / errors[1] < 13 and 7 < errors[1] / errors[2] < 13 and errors[2] < 0.01


def test_loss_scale():
    r, t = torch.tensor([0.2, 0.5]), torch.tensor([0.6, 0.5])
    assert loss_scale(r, t, 0.3).tolist() == pytest.approx([0.3, 1.0])
    assert loss_scale(r, t, 0.0).tolist() == [1.0, 1.0]


def test_the_objective_state_is_alpha_and_off_by_default():
    on = make_objective(load_config("fmnist-meanflow", ["meanflow.alpha_curriculum=true", "train.total_steps=100"]))
    off = make_objective(load_config("fmnist-meanflow", ["train.total_steps=100"]))
    assert on.state(0, torch.device("cpu")) == 1.0 and on.state(50, torch.device("cpu")) == 0.5
    assert on.log_fields(0.5) == {"alpha": 0.5}
    assert off.state(0, torch.device("cpu")) is None and off.log_fields(None) == {}
    with pytest.raises(IlctError, match="meanflow.alpha_start"):
        load_config("fmnist-meanflow", ["meanflow.alpha_start=0.8", "meanflow.alpha_end=0.5"])


def test_alphaflow_trains_through_the_cli_and_logs_alpha(tmp_path, tiny_autoencoder, fake_fmnist, capsys):
    cfg = tiny_meanflow(tmp_path, total_steps=8, ckpt_every=4, log_every=1)
    out = tmp_path / "run"
    assert main(train_args(cfg, tiny_autoencoder, fake_fmnist, out, tmp_path / "cache")
                + ["--set", "meanflow.alpha_curriculum=true", "--set", "meanflow.alpha_gamma=10", "--set",
                   "meanflow.alpha_end=0.75"]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if '"step"' in line]
    alphas = [r["alpha"] for r in log if "alpha" in r]
    # flow matching at step 0, the discrete targets between, MeanFlow's JVP target from 3/4 of the run on
    assert len(alphas) == 8 and alphas[0] == 1.0 and alphas[3] == 0.5 and alphas[-2:] == [0.0, 0.0]
    assert alphas == sorted(alphas, reverse=True)
    assert all(math.isfinite(r["loss"]) for r in log)
    expect_error(capsys, ["train", "--config", "fmnist-meanflow", "--out", str(tmp_path / "x"), "--set",
                          "meanflow.alpha_gamma=0"], "meanflow.alpha_gamma")
