"""The objective registry: a new training method is one new class and one registry line, trained, checkpointed,
resumed and sampled through the same loop and CLI (issue 17). The one defined here is plain x-prediction
denoising: D(x, sigma) = F(c_in x, ln(sigma) / 4), loss mean((D(x + sigma z, sigma) - x)^2)."""

from __future__ import annotations

import json

import torch
from torch import nn

from conftest import crashed_copy
from ilct.runs.checkpoint import latest_checkpoint, read_json, read_tensors
from ilct.cli import main
from ilct.objectives.consistency.loss import LossTerms
from ilct.objectives.consistency.precond import c_in, sigma_per_sample
from ilct.objectives import OBJECTIVES, Objective
from test_end_to_end import tiny_config, train_args


class XPredModel(nn.Module):
    def __init__(self, net: nn.Module, sigma_data: float):
        super().__init__()
        self.net, self.sigma_data = net, sigma_data

    def forward(self, x, sigma, labels=None):
        sigma, s = sigma_per_sample(sigma, x)
        return self.net(c_in(s, self.sigma_data) * x, torch.log(sigma) / 4, labels)


class XPrediction(Objective):
    name = "xpred"
    couples_noise = False
    calls: list[str] = []

    def wrap(self, net):
        return XPredModel(net, self.cfg.consistency.sigma_data)

    def draw(self, k, batch_size, g):
        return torch.randn((batch_size,), generator=g)

    def loss(self, model, batch, state):
        self.calls.append("loss")
        sigma = torch.exp(-1.2 + 1.2 * batch.draw)
        s = sigma.reshape(-1, 1, 1, 1)
        mse = (model(batch.x + s * batch.z, sigma, batch.y) - batch.x).float().pow(2).mean()
        return LossTerms(mse, mse.detach(), torch.zeros((), device=batch.x.device))

    def sample(self, f, seed, indices, shape, steps, sigmas, device):
        from ilct.seeds import per_sample_noise

        self.calls.append(f"sample {steps}")
        sigma_max = self.cfg.consistency.sigma_max
        z = per_sample_noise(seed, indices, shape, 1)[0].to(device) * sigma_max
        return f(z, torch.full((z.shape[0],), sigma_max, device=device))


def test_a_new_objective_is_one_class_and_one_registry_line(tmp_path, tiny_autoencoder, fake_fmnist, monkeypatch, capsys):
    monkeypatch.setitem(OBJECTIVES, "xpred", XPrediction)  # the one registry line
    XPrediction.calls.clear()
    out = tmp_path / "run"
    argv = train_args(tiny_config(tmp_path), tiny_autoencoder, fake_fmnist, out, tmp_path / "cache",
                      "--set", "train.objective=xpred")
    assert main(argv) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4, 6] and all(r["loss"] > 0 for r in log)
    assert "N" not in log[0]  # no curriculum: the loop logs what the objective reports, nothing else
    assert XPrediction.calls.count("loss") == 6 and "sample 1" in XPrediction.calls  # the periodic grids
    # resumed from the middle checkpoint, it ends with the straight run's weights
    assert read_json(latest_checkpoint(out) / "state.json")["step"] == 6
    crashed = crashed_copy(out, tmp_path / "crashed", 6, 3)
    assert main(["train", "--out", str(crashed), "--resume", "--set", f"data.cache_dir={tmp_path / 'cache'}",
                 "--no-progress"]) == 0
    a, b = (read_tensors(latest_checkpoint(r) / "model.safetensors") for r in (out, crashed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert main(["sample", "--run", str(out), "--out", str(tmp_path / "s.png"), "--n", "4", "--no-progress"]) == 0
    assert (tmp_path / "s.png").is_file() and "1 step(s)" in capsys.readouterr().out
    # an unknown objective is one line from the config
    capsys.readouterr()
    assert main(train_args(tiny_config(tmp_path), tiny_autoencoder, fake_fmnist, tmp_path / "x", tmp_path / "cache",
                           "--set", "train.objective=nope")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.objective must be one of consistency, edm, meanflow, xpred" in err[0]


def test_the_built_model_is_the_objectives_parameterization(monkeypatch):
    from ilct.config import load_config
    from ilct.objectives.consistency.precond import ConsistencyModel
    from ilct.objectives.edm import EDMDenoiser
    from ilct.models import build_model

    from ilct.objectives.meanflow.maths import MeanFlowModel

    monkeypatch.setitem(OBJECTIVES, "xpred", XPrediction)
    kinds = {}
    for name in ("consistency", "edm", "xpred", "meanflow"):
        cfg = load_config("fmnist-ict", [f"train.objective={name}", "model.in_channels=4", "model.input_size=8"])
        kinds[name] = type(build_model(cfg))
    assert kinds == {"consistency": ConsistencyModel, "edm": EDMDenoiser, "xpred": XPredModel, "meanflow": MeanFlowModel}
