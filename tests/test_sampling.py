"""Samplers (METHOD.md section 5): sigmas, Algorithm 1, per-sample seeds."""

import math

import pytest
import torch

from ilct.objectives.consistency.precond import ConsistencyModel
from ilct.nets.dit import build_dit
from ilct.objectives.consistency.schedule import karras_sigmas
from ilct.objectives.consistency.sampler import consistency_sample, default_sigmas
from ilct.seeds import per_sample_noise


def test_default_sigmas():
    assert default_sigmas(1) == [80.0]
    two = default_sigmas(2)
    assert two[0] == 80.0 and two[1] == pytest.approx(1.382, abs=5e-4)  # the authors' tau (golden: 1.3821...)
    other = default_sigmas(2, sigma_min=0.5)  # index 22 of the 40-level grid over the run's own sigma range
    assert other[1] == pytest.approx(float(karras_sigmas(40, 0.5, 80.0, 7.0)[22]), rel=1e-12) and other[1] != two[1]
    four = default_sigmas(4)
    assert len(four) == 4 and four[0] == 80.0 and all(b < a for a, b in zip(four, four[1:])) and four[-1] > 0.002


def test_noise_depends_only_on_seed_and_index():
    a = per_sample_noise(5, range(0, 6), (2, 3, 3), draws=2)
    b = per_sample_noise(5, range(3, 6), (2, 3, 3), draws=2)
    assert torch.equal(a[0][3:], b[0]) and torch.equal(a[1][3:], b[1])
    assert not torch.equal(a[0][0], a[0][1]) and not torch.equal(a[0], a[1])
    assert not torch.equal(per_sample_noise(6, range(1), (4,), 1)[0], per_sample_noise(5, range(1), (4,), 1)[0])


class Recorder(torch.nn.Module):
    """f(x, sigma) = x / 2, recording the sigmas it is called with."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.calls = []

    def forward(self, x, sigma, labels=None):
        self.calls.append((x.clone(), sigma.clone()))
        return x / 2


def test_algorithm_one():
    f = Recorder()
    noise = per_sample_noise(0, range(3), (1, 2, 2), 2)
    out = consistency_sample(f, noise, [80.0, 1.5], 0.002)
    (x1, s1), (x2, s2) = f.calls
    assert torch.allclose(x1, 80.0 * noise[0]) and torch.all(s1 == 80.0)
    expect_x2 = 40.0 * noise[0] + math.sqrt(1.5**2 - 0.002**2) * noise[1]
    assert torch.allclose(x2, expect_x2) and torch.all(s2 == 1.5)
    assert torch.allclose(out, expect_x2 / 2)


def test_sampler_rejects_bad_sigmas():
    f = Recorder()
    noise = per_sample_noise(0, range(1), (1, 2, 2), 3)
    with pytest.raises(ValueError):
        consistency_sample(f, noise, [80.0, 90.0])
    with pytest.raises(ValueError):
        consistency_sample(f, noise, [80.0, 0.001])


def test_real_model_one_step_shape():
    model = ConsistencyModel(build_dit("DiT-T/4", 8, 4)).eval()
    noise = per_sample_noise(0, range(2), (4, 8, 8), 1)
    out = consistency_sample(model, noise, [80.0])
    # a zero-initialized F leaves c_skip(80) * 80 z
    assert torch.allclose(out, 80.0 * noise[0] * 0.25 / ((80 - 0.002) ** 2 + 0.25), atol=1e-6)
