"""The EDM diffusion reference: preconditioning, loss weighting, Heun sampler, a tiny run."""

import json

import numpy as np
import pytest
import torch

from ilct.cli import main
from ilct.objectives.edm import EDMDenoiser, edm_loss, heun_nfe, heun_sample


class Spy(torch.nn.Module):
    def __init__(self, value=0.0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.value = value
        self.seen = None

    def forward(self, x, t, y=None):
        self.seen = t.clone()
        return torch.full_like(x, self.value)


def test_preconditioning():
    d = EDMDenoiser(Spy(0.0))
    x = torch.randn(2, 1, 2, 2)
    sig = torch.tensor([1e-4, 3.0])
    out = d(x, sig)
    assert torch.allclose(d.net.seen, torch.log(sig) / 4)
    assert torch.allclose(out[0], x[0], atol=1e-6)  # c_skip -> 1 as sigma -> 0
    assert torch.allclose(out[1], x[1] * 0.25 / 9.25, atol=1e-6)


def test_loss_weighting_golden():
    d = EDMDenoiser(Spy(0.0))
    x = torch.zeros(1, 1, 1, 1)
    n = torch.ones(1, 1, 1, 1)
    u = torch.zeros(1)  # sigma = exp(-1.2)
    s = float(np.exp(-1.2))
    denoised = 0.25 / (s * s + 0.25) * s  # c_skip * (x + sigma n) with F = 0
    weight = (s * s + 0.25) / (s * 0.5) ** 2
    assert edm_loss(d, x, n, u).item() == pytest.approx(weight * denoised**2, rel=1e-5)


class PointMass(torch.nn.Module):
    """The ideal denoiser of a dataset with one point x0."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = torch.nn.Parameter(x0, requires_grad=False)

    def forward(self, x, sigma, y=None):
        return self.x0.expand_as(x)


def test_heun_reaches_the_data_with_an_ideal_denoiser():
    x0 = torch.tensor([[[[0.3, -0.7]]]])
    out = heun_sample(PointMass(x0), torch.randn(4, 1, 1, 2), num_steps=18)
    assert torch.allclose(out, x0.expand(4, 1, 1, 2), atol=1e-5)
    assert heun_nfe(18) == 35


def test_tiny_edm_run(tmp_path, tiny_autoencoder, fake_fmnist, capsys):
    out = tmp_path / "edm"
    assert main(["train", "--config", "fmnist-ict", "--autoencoder", str(tiny_autoencoder), "--data-dir", str(fake_fmnist),
                 "--out", str(out), "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "train.objective=edm",
                 "--set", "train.total_steps=3", "--set", "train.batch_size=4", "--set", "model.arch=DiT-T/4",
                 "--set", "train.device=cpu", "--set", "train.num_sample_images=2", "--no-progress"]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert np.isfinite(log[-1]["loss"])
    capsys.readouterr()
    assert main(["sample", "--run", str(out), "--steps", "3", "--n", "2", "--out", str(tmp_path / "s.png"),
                 "--npz", str(tmp_path / "s.npz"), "--no-progress", "--device", "cpu"]) == 0
    assert "3 Heun step(s) (5 evaluations)" in capsys.readouterr().out
    assert np.load(tmp_path / "s.npz")["images"].shape == (2, 32, 32, 1)
