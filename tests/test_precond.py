"""The parameterization (METHOD.md section 3): coefficients and the boundary condition."""

import math

import pytest
import torch

from ilct.objectives.consistency.precond import ConsistencyModel, c_in, c_noise, c_out, c_skip


def test_boundary_coefficients_at_sigma_min():
    s = torch.tensor(0.002, dtype=torch.float64)
    assert c_skip(s).item() == pytest.approx(1.0, abs=1e-15)
    assert c_out(s).item() == pytest.approx(0.0, abs=1e-15)


def test_coefficients_at_large_sigma():
    s = torch.tensor(80.0, dtype=torch.float64)
    assert c_skip(s).item() == pytest.approx(0.25 / ((80 - 0.002) ** 2 + 0.25), rel=1e-12)
    assert c_skip(s).item() == pytest.approx(3.90625e-5, rel=1e-3)
    assert c_out(s).item() == pytest.approx((80 - 0.002) * 0.5 / math.sqrt(6400.25), rel=1e-12)
    assert c_out(torch.tensor(1e6, dtype=torch.float64)).item() == pytest.approx(0.5, rel=1e-6)  # -> sigma_d
    assert c_in(torch.tensor(1.0)).item() == pytest.approx(1 / math.sqrt(1.25), rel=1e-6)
    assert c_noise(torch.tensor(80.0)).item() == pytest.approx(250 * math.log(80), rel=1e-6)
    assert c_noise(torch.tensor(1.0)).item() == 0.0


class Spy(torch.nn.Module):
    """A backbone that records its inputs and returns a constant."""

    def __init__(self):
        super().__init__()
        self.seen = None

    def forward(self, x, t, y=None):
        self.seen = (x.clone(), t.clone())
        return torch.full_like(x, 7.0)


def test_model_boundary_condition_and_inputs():
    spy = Spy()
    f = ConsistencyModel(spy)
    x = torch.randn(3, 4, 8, 8)
    out = f(x, torch.full((3,), 0.002))
    assert torch.allclose(out, x, atol=1e-6)  # f(x, sigma_min) = x whatever F says
    sig = torch.tensor([0.5, 2.0, 80.0])
    out = f(x, sig)
    xs, t = spy.seen
    assert torch.allclose(t, 250 * sig.log())
    assert torch.allclose(xs, x / torch.sqrt(sig**2 + 0.25).view(-1, 1, 1, 1))
    expect = c_skip(sig).view(-1, 1, 1, 1) * x + c_out(sig).view(-1, 1, 1, 1) * 7.0
    assert torch.allclose(out, expect, atol=1e-5)


class Bf16Backbone(torch.nn.Module):
    """A backbone whose output is in bf16, as a DiT's is when its final layer runs under autocast."""

    def forward(self, x, t, y=None):
        return (x * 3.0 + 0.1).to(torch.bfloat16)


@pytest.mark.parametrize("wrap", ["consistency", "edm"])
def test_output_maths_in_fp32_under_bf16_autocast(wrap):
    from ilct.objectives.edm import EDMDenoiser

    model = ConsistencyModel(Bf16Backbone()) if wrap == "consistency" else EDMDenoiser(Bf16Backbone())
    x = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sig = torch.tensor([0.002, 0.01, 1.4, 80.0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, sig)
    s = sig.view(-1, 1, 1, 1)
    F = model.net(c_in(s) * x, None).float()  # what the backbone gave, cast up
    if wrap == "consistency":
        skip, outc = c_skip(s), c_out(s)
    else:
        skip, outc = 0.25 / (s**2 + 0.25), s * 0.5 / torch.sqrt(s**2 + 0.25)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, skip * x + outc * F, rtol=0, atol=0)
    if wrap == "consistency":
        assert torch.equal(out[0], x[0])  # the boundary condition holds exactly, also under autocast
