"""Metrics and losses (METHOD.md section 3 Metric d; section 4 techniques 1-2)."""

import math

import pytest
import torch

from ilct.config import CHOICES
from ilct.objectives.consistency.losses import (
    ELEMENT_METRICS, METRIC_NAMES, METRICS, cauchy, cauchy_element, consistency_loss, diffusion_loss, diffusion_mask,
    geman_mcclure, l2, pseudo_huber, squared_residual, w_sigma,
)


def test_residual_is_a_mean_not_a_sum():
    a = torch.zeros(2, 4, 8, 8)
    b = torch.ones(2, 4, 8, 8) * 2.0
    assert squared_residual(a, b).tolist() == [4.0, 4.0]


@pytest.mark.parametrize("r,c", [(0.0, 0.03), (1e-4, 0.0346), (0.5, 0.01), (10.0, 0.00025)])
def test_metric_closed_forms(r, c):
    t = torch.tensor([r], dtype=torch.float64)
    assert pseudo_huber(t, c).item() == pytest.approx(math.sqrt(r + c * c) - c, rel=1e-12, abs=1e-15)
    assert cauchy(t, c).item() == pytest.approx(math.log(1 + r / (2 * c * c)), rel=1e-12, abs=1e-15)
    assert geman_mcclure(t, c).item() == pytest.approx(2 * r / (r + 4 * c * c), rel=1e-12, abs=1e-15)
    assert l2(t, c).item() == r


def test_metric_golden_numbers():
    r = torch.tensor([0.01], dtype=torch.float64)
    assert pseudo_huber(r, 0.0346).item() == pytest.approx(0.0712166338531, rel=1e-9)
    assert cauchy(r, 0.0346).item() == pytest.approx(1.6441390374, rel=1e-9)
    assert geman_mcclure(r, 0.0346).item() == pytest.approx(1.3523894016, rel=1e-9)


def test_cauchy_grows_logarithmically_pseudo_huber_linearly():
    c = 0.0346
    big = torch.tensor([1e2, 1e4], dtype=torch.float64)
    ph, ca = pseudo_huber(big, c), cauchy(big, c)
    assert (ph[1] / ph[0]).item() == pytest.approx(10.0, rel=1e-2)  # sqrt: x100 in r, x10 in d
    assert (ca[1] - ca[0]).item() == pytest.approx(math.log(100), rel=1e-3)  # log: +ln 100


def test_consistency_loss_weights_and_stops_gradient():
    s = torch.zeros(2, 1, 2, 2, requires_grad=True)
    t = torch.ones(2, 1, 2, 2, requires_grad=True)
    w = torch.tensor([1.0, 3.0])
    loss = consistency_loss(s, t, w, "l2", 0.1)
    assert loss.tolist() == [1.0, 3.0]
    loss.sum().backward()
    assert t.grad is None and s.grad is not None
    assert set(METRICS) == {"pseudo_huber", "cauchy", "l2", "geman_mcclure"}


def test_cauchy_element_golden_numbers():
    # sample 0: a - b = (0, 0.01, -0.02, 0.03), c = 0.01, so (a - b)^2 / (2 c^2) = (0, 0.5, 2, 4.5):
    #   per element: (ln 1 + ln 1.5 + ln 3 + ln 5.5) / 4 = ln(24.75) / 4 = 0.802206...
    #   per sample:  r = 3.5e-4, ln(1 + 1.75) = ln 2.75 = 1.011600...
    # sample 1: every element 0.02 apart: both are ln(1 + 2) = ln 3
    a = torch.tensor([[0.0, 0.01, -0.02, 0.03], [0.02, 0.02, -0.02, 0.02]], dtype=torch.float64).view(2, 1, 2, 2)
    b = torch.zeros_like(a)
    sq = (a - b) ** 2
    assert cauchy_element(sq, 0.01).tolist() == pytest.approx([math.log(24.75) / 4, math.log(3.0)], rel=1e-12)
    assert math.log(24.75) / 4 == pytest.approx(0.8022063720, rel=1e-9)
    per_sample = cauchy(squared_residual(a, b).double(), 0.01)
    assert per_sample.tolist() == pytest.approx([math.log(2.75), math.log(3.0)], rel=1e-6)
    # the loss: lambda_i weights each sample's per-element mean
    w = torch.tensor([2.0, 10.0])
    loss = consistency_loss(a.float(), b.float(), w, "cauchy_element", 0.01)
    assert loss.tolist() == pytest.approx([2 * math.log(24.75) / 4, 10 * math.log(3.0)], rel=1e-6)


def test_cauchy_element_is_at_most_the_per_sample_cauchy():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 4, 8, 8, generator=g, dtype=torch.float64) * torch.logspace(-4, 0, 8, dtype=torch.float64).view(-1, 1, 1, 1)
    sq = a.pow(2)
    for c in (2.5e-4, 0.0136, 0.0346):
        elem, whole = cauchy_element(sq, c), cauchy(sq.flatten(1).mean(1), c)
        assert (elem <= whole + 1e-12).all() and (elem < whole).any()  # Jensen: log is concave


def test_metric_names_are_the_config_choices():
    assert set(METRIC_NAMES) == set(CHOICES["method.metric"])
    assert set(ELEMENT_METRICS) == {"cauchy_element"} and not set(ELEMENT_METRICS) & set(METRICS)


def test_diffusion_selection_floor_of_three_quarters():
    i = torch.arange(10)
    assert diffusion_mask(i, 11).tolist() == [False] * 8 + [True] * 2  # floor(8.25) = 8
    i = torch.arange(640)
    m = diffusion_mask(i, 641)
    assert int(m.float().argmax()) == 480 and int(m.sum()) == 160  # floor(480.75) = 480


def test_w_sigma_and_the_diffusion_loss():
    assert w_sigma(torch.tensor(0.5)).item() == pytest.approx(8.0)  # 1/0.25 + 1/0.25
    x = torch.zeros(3, 1, 2, 2)
    f = torch.ones(3, 1, 2, 2) * torch.tensor([1.0, 2.0, 3.0]).view(-1, 1, 1, 1)
    sig = torch.tensor([0.5, 1.0, 2.0])
    mask = torch.tensor([False, True, True])
    w = 1 / sig**2 + 4
    expect = (w[1] * 4 + w[2] * 9) / 2
    assert diffusion_loss(f, x, sig, mask).item() == pytest.approx(expect.item())
    none = diffusion_loss(f, x, sig, torch.zeros(3, dtype=torch.bool))
    assert none.item() == 0.0
