"""A new objective with a settings section of its own is one module plus one registry line (issue 35): a toy
flow-matching objective, defined here as a module outside ilct, trains, resumes and samples through the same
loop, CLI and run folder, and its section is read, written and validated like the built-in ones.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys

import pytest
import yaml

from ilct.cli import main
from ilct.runs.checkpoint import latest_checkpoint

TOY = '''
"""Flow matching (rectified flow) in ilct's objective interface: z_t = (1 - t) x + t e, the network predicts
v = e - x; sampling walks from t = 1 to 0 in Euler steps."""

from dataclasses import dataclass

import torch
from torch import nn

from ilct.errors import IlctError
from ilct.objectives.base import LossTerms, Objective
from ilct.seeds import per_sample_noise


@dataclass
class ToySettings:
    time_scale: float = 1000.0  # the network's time input is time_scale * t


class Velocity(nn.Module):
    def __init__(self, net, scale):
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, z, t, labels=None):
        return self.net(z, self.scale * t, labels)


class Toy(Objective):
    name = "toy"
    section = "toy"
    settings = ToySettings
    couples_noise = False

    @classmethod
    def check_settings(cls, section):
        if not 0 < section.time_scale <= 1e4:
            raise IlctError(f"config: toy.time_scale must be in (0, 1e4], got {section.time_scale}")

    def wrap(self, net):
        return Velocity(net, self.cfg.toy.time_scale)

    def draw(self, k, batch_size, g):
        return torch.rand((batch_size,), generator=g)

    def loss(self, model, batch, state):
        t = batch.draw.reshape(-1, *([1] * (batch.x.ndim - 1)))
        z = (1 - t) * batch.x + t * batch.z
        mse = (model(z, batch.draw, batch.y) - (batch.z - batch.x)).float().pow(2).mean()
        return LossTerms(mse, mse.detach(), torch.zeros((), device=batch.x.device))

    def sample(self, f, seed, indices, shape, steps, sigmas, device):
        x = per_sample_noise(seed, indices, shape, 1)[0].to(device)
        for i in range(steps, 0, -1):
            t = torch.full((x.shape[0],), i / steps, device=device)
            x = x - f(x, t) / steps
        return x
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy module, imported from a file, and its one registry line."""
    from ilct import objectives, schema

    path = tmp_path / "toy_objective.py"
    path.write_text(TOY)
    spec = importlib.util.spec_from_file_location("toy_objective", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "toy_objective", module)
    spec.loader.exec_module(module)
    monkeypatch.setattr(objectives, "OBJECTIVES", dict(objectives.OBJECTIVES))
    monkeypatch.setattr(schema, "SECTIONS", dict(schema.SECTIONS))
    import ilct.config

    monkeypatch.setattr(ilct.config, "OBJECTIVES", objectives.OBJECTIVES)
    objectives.register(module.Toy)  # the registry line
    return module


def test_a_toy_objective_with_its_own_section_trains_resumes_and_samples(toy, tmp_path, capsys, tiny_autoencoder,
                                                                         fake_fmnist):
    run = tmp_path / "run"
    argv = ["train", "--config", "fmnist-ict", "--autoencoder", str(tiny_autoencoder), "--data-dir", str(fake_fmnist),
            "--out", str(run), "--no-progress", "--set", f"data.cache_dir={tmp_path / 'cache'}",
            "--set", "train.objective=toy", "--set", "toy.time_scale=250", "--set", "model.arch=DiT-T/4",
            "--set", "train.total_steps=6", "--set", "train.batch_size=8", "--set", "train.ckpt_every=3",
            "--set", "train.sample_every=0", "--set", "train.log_every=1", "--set", "train.device=cpu"]
    assert main(argv) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["objective"] == "toy" and saved["toy"] == {"time_scale": 250.0}
    losses = [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    # resume from the middle checkpoint reproduces the uninterrupted run's last losses bit for bit
    crashed = tmp_path / "crashed"
    shutil.copytree(run, crashed)
    shutil.rmtree(crashed / "checkpoints" / "step_000000006")
    (crashed / "checkpoints" / "latest").write_text("step_000000003\n")
    (crashed / "log.jsonl").write_text("".join(line + "\n" for line in (run / "log.jsonl").read_text().splitlines()
                                               if json.loads(line).get("step", 0) <= 3))
    assert main(["train", "--out", str(crashed), "--resume", "--no-progress"]) == 0
    resumed = [json.loads(line)["loss"] for line in (crashed / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert resumed[-3:] == losses[-3:] and latest_checkpoint(crashed).name == "step_000000006"
    png = tmp_path / "toy.png"
    assert main(["sample", "--run", str(run), "--steps", "4", "--n", "4", "--out", str(png), "--no-progress"]) == 0
    assert png.is_file()


def test_the_toy_section_is_validated_and_owned(toy, capsys):
    from ilct.config import load_config

    with pytest.raises(Exception, match="toy.time_scale must be in"):
        load_config("fmnist-ict", ["train.objective=toy", "toy.time_scale=-1"])
    with pytest.raises(Exception, match="toy.time_scale applies to train.objective toy"):
        load_config("fmnist-ict", ["toy.time_scale=5"])  # another objective's section keeps its defaults
    assert load_config("fmnist-ict", []).toy.time_scale == 1000.0
