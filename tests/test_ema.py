"""The EMA: the constant update (ilct.training.step.ema_update), the trainables ilct train builds
(ilct.training.build.build_student), and EDM2's power-function EMA (ilct.training.ema): its formulas against golden
values and an independent integral, post-hoc reconstruction from snapshots, and train.ema=power in a run (profiles,
snapshots, resume and branch bit for bit, bad settings)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import crashed_copy, module_dir
from ilct.cli import main
from ilct.errors import IlctError
from ilct.io.files import read_tensors
from ilct.runs import faults
from ilct.runs.checkpoint import whole
from ilct.training import ema as ema_maths
from ilct.training import flat
from ilct.config import load_config
from ilct.models import make_ema
from ilct.training.build import build_profiles
from ilct.training.build import build_student as make_student
from ilct.training.ema import list_snapshots, posthoc_ema, save_snapshots, snapshot_name
from ilct.training.step import ema_step, ema_update


def pair(flat_: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.GELU(), torch.nn.Linear(7, 3))
    if flat_:
        flat.flatten_(model)
    ema = make_ema(model)
    if flat_:
        flat.flatten_(ema)
    with torch.no_grad():
        for p in ema.parameters():
            p.fill_(1.0)
        for i, p in enumerate(model.parameters()):
            p.fill_(3.0 + i)
    return model, ema


@pytest.mark.parametrize("flat_", [False, True])
def test_ema_golden_values_and_a_skipped_step(flat_):
    model, ema = pair(flat_)
    assert (flat.module_buffer(ema) is not None) == flat_
    ema_update(ema, model, 0.75)  # ema + (1 - 0.75) (theta - ema) = 1 + 0.25 (3 + i - 1)
    for i, p in enumerate(ema.parameters()):
        torch.testing.assert_close(p, torch.full_like(p, 1.0 + 0.25 * (2.0 + i)), rtol=0, atol=1e-6)
    before = copy.deepcopy(ema.state_dict())
    ema_update(ema, model, 0.75, keep=torch.zeros(()))
    for k, v in ema.state_dict().items():
        assert torch.equal(v, before[k]), k
    ema_update(ema, model, 0.75, keep=torch.ones(()))
    for i, p in enumerate(ema.parameters()):
        expected = 1.0 + 0.25 * (2.0 + i)
        torch.testing.assert_close(p, torch.full_like(p, expected + 0.25 * (3.0 + i - expected)), rtol=0, atol=1e-6)
    if flat_:  # the gaps between the flat views stay zero
        buf = flat.module_buffer(ema)
        assert (buf != 0).sum() == sum(p.numel() for p in ema.parameters())


@pytest.mark.parametrize("fused", [False, True])
def test_make_student_flattens_weights_only_with_fused_optimizer(fused):
    cfg = load_config("fmnist-ilct", ["model.arch=DiT-T/4", f"train.fused_optimizer={str(fused).lower()}"])
    cfg.model.in_channels, cfg.model.input_size = 4, 8
    model, ema, opt = make_student(cfg, torch.device("cpu"))
    assert model.training and not ema.training
    assert (flat.module_buffer(model) is not None) == fused
    assert (flat.module_buffer(ema) is not None) == fused
    assert not any(p.requires_grad for p in ema.parameters())
    for p, q in zip(model.parameters(), ema.parameters()):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()
    assert opt.param_groups[0]["lr"] == cfg.train.lr
    assert build_profiles(cfg, ema) == []  # the constant EMA has one
    cfg.train.ema, cfg.train.ema_stds = "power", [0.05, 0.1, 0.2]
    profiles = build_profiles(cfg, ema)  # the profiles after `ema`, laid out as it is
    assert len(profiles) == 2 and all((flat.module_buffer(p) is not None) == fused for p in profiles)
    assert all(not p.training and not any(q.requires_grad for q in p.parameters()) for p in profiles)
    assert len({q.data_ptr() for p in (ema, *profiles) for q in list(p.parameters())[:1]}) == 3


# --------------------------------------------------------------------------- EDM2's power-function EMA (ilct.training.ema)


def test_std_and_exponent_golden_values_and_round_trip():
    """EDM2's two profiles (Karras et al. 2024, section 3.1): sigma_rel 0.05 and 0.10 are gamma 16.97 and 6.94."""
    assert round(ema_maths.std_to_exp(0.05), 2) == 16.97
    assert round(ema_maths.std_to_exp(0.10), 2) == 6.94
    for std in (1e-3, 0.01, 0.05, 0.07, 0.10, 0.15, 0.25, ema_maths.SIGMA_REL_MAX):
        assert ema_maths.exp_to_std(ema_maths.std_to_exp(std)) == pytest.approx(std, rel=1e-12)
    for gamma in (0.0, 0.5, 3.0, 6.94, 16.97, 100.0):
        assert ema_maths.std_to_exp(ema_maths.exp_to_std(gamma)) == pytest.approx(gamma, rel=1e-9, abs=1e-9)
    assert ema_maths.std_to_exp(ema_maths.SIGMA_REL_MAX) == pytest.approx(0.0, abs=1e-9)  # the plain average
    np.testing.assert_allclose(ema_maths.std_to_exp(np.array([0.05, 0.10])), [16.9722, 6.9372], atol=1e-4)


def test_power_beta_formula():
    g = ema_maths.std_to_exp(0.10)
    assert ema_maths.power_beta(0.10, 1) == 0.0  # step 1 copies the weights
    for t in (2, 3, 10, 1000, 10**6):
        assert ema_maths.power_beta(0.10, t) == pytest.approx((1 - 1 / t) ** (g + 1), rel=1e-15)
    # a longer profile (larger sigma_rel, smaller gamma) keeps more of the past at every step
    assert all(ema_maths.power_beta(0.15, t) > ema_maths.power_beta(0.05, t) for t in (2, 10, 100))


def power_config(stds=(0.05, 0.10)):
    return load_config("fmnist-ilct", ["train.ema=power", f"train.ema_stds=[{', '.join(map(str, stds))}]"])


@pytest.mark.parametrize("flat_", [False, True])
def test_power_ema_weights_each_step_by_the_power_function(flat_):
    """After T updates the profile is sum_u w_u theta_u with w_u = (u^(g+1) - (u-1)^(g+1)) / T^(g+1): the
    integral of p(tau) = (g+1) tau^g / T^(g+1) over step u's interval, for every profile and both layouts;
    a skipped step (keep = 0) leaves every profile as it was."""
    cfg, T = power_config((0.05, 0.2)), 40
    model, ema = pair(flat_)
    profiles = [make_ema(ema)]
    if flat_:
        flat.flatten_(profiles[0])
    thetas = torch.randn(T, generator=torch.Generator().manual_seed(0)).tolist()
    for u, theta in enumerate(thetas, start=1):
        with torch.no_grad():
            for i, p in enumerate(model.parameters()):
                p.fill_(theta + i)  # every weight of tensor i follows theta_u + i
        ema_step(ema, model, cfg, u, torch.ones(()), profiles)
    before = [copy.deepcopy(m.state_dict()) for m in (ema, *profiles)]
    ema_step(ema, model, cfg, T + 1, torch.zeros(()), profiles)
    for m, b in zip((ema, *profiles), before):
        assert all(torch.equal(v, b[k]) for k, v in m.state_dict().items())
    for module, std in zip((ema, *profiles), (0.05, 0.2)):
        g = ema_maths.std_to_exp(std)
        w = [(u ** (g + 1) - (u - 1) ** (g + 1)) / T ** (g + 1) for u in range(1, T + 1)]
        assert sum(w) == pytest.approx(1.0)
        expected = sum(wu * theta for wu, theta in zip(w, thetas))
        for i, p_ema in enumerate(module.parameters()):
            torch.testing.assert_close(p_ema, torch.full_like(p_ema, expected + i), rtol=0, atol=2e-5)


def test_constant_ema_step_is_the_constant_update_bit_for_bit():
    cfg = load_config("fmnist-ilct", ["train.ema_decay=0.75"])
    (model, a), (_, b) = pair(True), pair(True)
    ema_step(a, model, cfg, 7, torch.ones(()))
    ema_update(b, model, 0.75, keep=torch.ones(()))
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    with pytest.raises(ValueError, match="EMA modules"):  # power needs every profile
        ema_step(a, model, power_config(), 1, torch.ones(()))


def test_correlation_is_the_inner_product_of_two_power_profiles():
    """<p_a, p_b> against numerical integration (scipy) of p(tau) = (g + 1) tau^g / t^(g + 1) on [0, t]."""
    from scipy.integrate import quad

    def p(t, std):
        g = ema_maths.std_to_exp(std)
        return lambda tau: (g + 1) * tau ** g / t ** (g + 1) if tau <= t else 0.0

    for a_t, a_std, b_t, b_std in ((100, 0.05, 100, 0.05), (70, 0.05, 100, 0.10), (100, 0.10, 40, 0.2),
                                   (5, 0.25, 9, 0.01)):
        exact, _ = quad(lambda tau: p(a_t, a_std)(tau) * p(b_t, b_std)(tau), 0, min(a_t, b_t), limit=500)
        assert ema_maths.correlation(a_t, a_std, b_t, b_std) == pytest.approx(exact, rel=1e-6)
        assert ema_maths.correlation(b_t, b_std, a_t, a_std) == pytest.approx(exact, rel=1e-12)


def random_walk_snapshots(run_dir, steps: int, every: int, stds, extra=(), seed: int = 0):
    """A weight trajectory theta_t = theta_{t-1} + noise (a 2-tensor 'network'), its power-function EMAs tracked with
    the training step's update (ema_step), the profiles of `stds` saved every `every` steps as a run does, and those
    of `extra` tracked only; returns {sigma_rel: the EMA state dict at the last step}."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(20, 10))
    every_std = tuple(stds) + tuple(extra)
    cfg = power_config(every_std)
    emas = [make_ema(model) for _ in every_std]
    g = torch.Generator().manual_seed(seed)
    for t in range(1, steps + 1):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g))
        ema_step(emas[0], model, cfg, t, torch.ones(()), emas[1:])
        if t % every == 0:
            save_snapshots(run_dir, t, emas[:len(stds)], stds)
    return {std: copy.deepcopy(m.state_dict()) for std, m in zip(every_std, emas)}


def distance(a: dict, b: dict) -> float:
    return float(torch.sqrt(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a)))


def test_posthoc_reconstructs_a_stored_profile_exactly(tmp_path):
    """Snapshots that include the wanted profile at the newest step: the least-squares solution is that snapshot."""
    tracked = random_walk_snapshots(tmp_path, 300, 50, (0.05, 0.10))
    for std in (0.05, 0.10):
        out = posthoc_ema(tmp_path, std)
        assert out.keys() == tracked[std].keys()
        for k, v in out.items():
            torch.testing.assert_close(v, tracked[std][k], rtol=0, atol=1e-5)
            assert v.dtype == tracked[std][k].dtype


@pytest.mark.parametrize("seed", [0, 1])
def test_posthoc_reconstructs_another_length_close_to_its_tracked_ema(tmp_path, seed):
    """The property EDM2's post-hoc EMA rests on: from the 0.05 and 0.10 profiles saved every 100 of 2,000 steps
    of a random walk, sigma_rel 0.07 and 0.15 come out within 1 % of the distance between the two stored
    profiles from EMAs of those lengths tracked directly (measured: 0.05 % and 0.12 % on seed 0, 0.04 % and
    0.11 % on seed 1); and ten times closer than the nearer stored profile is at least (measured: 900 times)."""
    tracked = random_walk_snapshots(tmp_path, 2000, 100, (0.05, 0.10), extra=(0.07, 0.15), seed=seed)
    scale = distance(tracked[0.05], tracked[0.10])
    for std, nearer in ((0.07, 0.05), (0.15, 0.10)):
        error = distance(posthoc_ema(tmp_path, std), tracked[std])
        assert error < 0.01 * scale, (std, error / scale)
        assert error < 0.1 * distance(tracked[nearer], tracked[std])


def test_posthoc_copies_tensors_that_never_change_and_refuses_bad_requests(tmp_path):
    model = torch.nn.BatchNorm1d(3)  # running statistics: buffers, the same in every snapshot here
    for t in (10, 20):
        save_snapshots(tmp_path, t, [model, model], [0.05, 0.10])
    out = posthoc_ema(tmp_path, 0.07)
    assert out["num_batches_tracked"].dtype == torch.int64
    assert all(torch.equal(out[k], v) for k, v in model.state_dict().items())
    for bad in (0.0, -0.1, 0.3, float("nan")):
        with pytest.raises(IlctError, match="sigma_rel must be in"):
            posthoc_ema(tmp_path, bad)
    with pytest.raises(IlctError, match="holds no EMA snapshots"):
        posthoc_ema(tmp_path / "nothing", 0.1)


def test_snapshot_names_hold_step_and_sigma_rel(tmp_path):
    assert snapshot_name(1000, 0.05) == "step_000001000_std_0.05.safetensors"
    save_snapshots(tmp_path, 1000, [torch.nn.Linear(2, 2)] * 2, [0.05, 0.125])
    (tmp_path / "ema_snapshots" / "notes.txt").write_text("a file of the user's")
    assert [(s, std, p.name) for s, std, p in list_snapshots(tmp_path)] == [
        (1000, 0.05, "step_000001000_std_0.05.safetensors"), (1000, 0.125, "step_000001000_std_0.125.safetensors")]


# --------------------------------------------------------------------------- train.ema=power in a run


def power_train_args(tmp: Path, ae: Path, data: Path, out: Path, *extra: str) -> list[str]:
    cfg = tmp / "tiny_power.yaml"
    cfg.write_text(yaml.safe_dump({
        "base": "fmnist-ilct", "model": {"arch": "DiT-T/4", "dropout": 0.1},
        "train": {"total_steps": 6, "batch_size": 8, "ckpt_every": 3, "sample_every": 0, "log_every": 2,
                  "num_sample_images": 2, "device": "cpu", "ema": "power", "ema_snapshot_every": 2}}))
    return ["train", "--config", str(cfg), "--autoencoder", str(ae), "--data-dir", str(data), "--out", str(out),
            "--set", f"data.cache_dir={tmp / 'cache'}", "--no-progress", *extra]


@pytest.fixture(scope="module")
def power_run(request, tmp_path_factory, tiny_autoencoder, fake_fmnist):
    tmp = module_dir(request, tmp_path_factory, "power")
    out = tmp / "run"
    assert main(power_train_args(tmp, tiny_autoencoder, fake_fmnist, out)) == 0
    return {"tmp": tmp, "out": out, "ae": tiny_autoencoder, "data": fake_fmnist}


def step_file(run: Path, step: int, name: str) -> dict[str, torch.Tensor]:
    return read_tensors(run / "checkpoints" / f"step_{step:09d}" / name)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_power_run_writes_profiles_and_snapshots(power_run):
    out = power_run["out"]
    state = json.loads((out / "checkpoints" / "step_000000006" / "state.json").read_text())
    assert state["ema_stds"] == [0.05, 0.1]
    ema, others = step_file(out, 6, "ema.safetensors"), step_file(out, 6, "ema_profiles.safetensors")
    assert set(others) == {f"1.{k}" for k in ema}
    assert not same(ema, {k[2:]: v for k, v in others.items()})  # two profiles, two averages
    snaps = [(s, std) for s, std, _ in list_snapshots(out)]  # every 2 steps and at the end, never rotated
    assert snaps == [(s, std) for s in (2, 4, 6) for std in (0.05, 0.1)]
    assert same(read_tensors(out / "ema_snapshots" / "step_000000006_std_0.05.safetensors"), ema)
    assert same(posthoc_ema(out, 0.05), ema)  # the reconstruction of a tracked profile is that profile
    assert whole_without(out, "ema_profiles.safetensors") == "ema_profiles.safetensors missing"


def whole_without(run: Path, name: str):
    """whole() of a copy of the newest checkpoint without `name`."""
    src = run / "checkpoints" / "step_000000006"
    dst = run.parent / "damaged" / "step_000000006"
    shutil.rmtree(dst.parent, ignore_errors=True)
    shutil.copytree(src, dst)
    (dst / name).unlink()
    return whole(dst)


def test_power_run_resumes_bit_for_bit(power_run, tmp_path):
    """6 steps straight == 3 steps, a crash, --resume, 3 steps: student, every profile and every snapshot."""
    straight = power_run["out"]
    out = crashed_copy(straight, tmp_path / "resumed", 6, 3)
    for later in (4, 6):  # the snapshots the crash came before
        for std in (0.05, 0.1):
            (out / "ema_snapshots" / snapshot_name(later, std)).unlink()
    assert main(power_train_args(power_run["tmp"], power_run["ae"], power_run["data"], out, "--resume")) == 0
    for name in ("model.safetensors", "ema.safetensors", "ema_profiles.safetensors"):
        assert same(step_file(straight, 6, name), step_file(out, 6, name)), name
    for (s, std, p), (s2, std2, q) in zip(list_snapshots(straight), list_snapshots(out), strict=True):
        assert (s, std) == (s2, std2) and same(read_tensors(p), read_tensors(q)), p.name


def test_branch_of_a_power_run_carries_every_profile(power_run, tmp_path, capsys):
    """A branch without a change reproduces the source's step 6, profiles included, and records their stds."""
    new = tmp_path / "branch"
    assert main(["train", "--branch-from", str(power_run["out"] / "checkpoints" / "step_000000003"), "--out", str(new),
                 "--no-progress"]) == 0
    for name in ("model.safetensors", "ema.safetensors", "ema_profiles.safetensors"):
        assert same(step_file(power_run["out"], 6, name), step_file(new, 6, name)), name
    assert json.loads((new / "checkpoints" / "step_000000003" / "state.json").read_text())["ema_stds"] == [0.05, 0.1]


def expect_error(capsys, argv: list[str], needle: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ilct: error:"), err
    assert needle in err[0], err[0]


@pytest.mark.parametrize("sets, needle", [
    (["train.ema=power", "train.ema_stds=[]"], "train.ema_stds must list 1..16"),
    (["train.ema=power", "train.ema_stds=[0.05, 0.3]"], "train.ema_stds must each be in (0, 1/sqrt(12)"),
    (["train.ema=power", "train.ema_stds=[0, 0.1]"], "train.ema_stds must each be in"),
    (["train.ema=power", "train.ema_stds=[0.1, 0.1]"], "must not repeat"),
    (["train.ema=power", "train.ema_stds=fast"], "train.ema_stds must be a list of numbers"),
    (["train.ema=power", "train.ema_snapshot_every=-1"], "train.ema_snapshot_every must be in"),
    (["train.ema=ewma"], "train.ema must be one of constant, power"),
    (["train.ema_stds=[0.2]"], "train.ema_stds applies to train.ema=power"),
])
def test_bad_ema_settings_are_one_line_and_exit_2(capsys, tmp_path, tiny_autoencoder, sets, needle):
    argv = ["train", "--config", "fmnist-ilct", "--out", str(tmp_path / "x"), "--autoencoder", str(tiny_autoencoder)]
    expect_error(capsys, [*argv, *[a for s in sets for a in ("--set", s)]], needle)
    assert not (tmp_path / "x").exists()


def test_a_branch_cannot_turn_a_constant_ema_into_profiles(power_run, tmp_path, capsys):
    """A constant-EMA checkpoint holds no profiles: a branch to train.ema=power is one line, nothing written."""
    constant = tmp_path / "constant"
    args = power_train_args(tmp_path, power_run["ae"], power_run["data"], constant, "--set", "train.ema=constant",
                            "--set", "train.ema_snapshot_every=0", "--set", "train.total_steps=3")
    assert main(args) == 0
    capsys.readouterr()
    expect_error(capsys, ["train", "--branch-from", str(constant), "--out", str(tmp_path / "b"), "--set", "train.ema=power",
                          "--set", "train.total_steps=6", "--no-progress"], "holds a constant EMA")
    assert not (tmp_path / "b").exists()


def test_a_rollback_restores_every_profile(power_run, tmp_path, monkeypatch):
    """train.max_nonfinite NaN steps in a row roll the run back to its last checkpoint, the profiles too: step 4
    trains, steps 5 and 6 are NaN, the run goes back to step 3 with half the lr and trains 4..6 again. That equals
    a branch from step 3 with half the lr, bit for bit (a profile left with step 4's first update would differ)."""
    faults._fired.clear()
    monkeypatch.setenv("ILCT_FAULT_NAN_STEPS", "4,5")  # 0-based step indices: steps 5 and 6
    out = tmp_path / "rolled"
    assert main(power_train_args(tmp_path, power_run["ae"], power_run["data"], out, "--set", "train.max_nonfinite=2")) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    rollback = [r for r in log if r.get("event") == "rollback"]
    assert [r["step"] for r in rollback] == [3]
    monkeypatch.delenv("ILCT_FAULT_NAN_STEPS")
    branch = tmp_path / "half_lr"
    lr = load_config(str(power_run["out"] / "config.yaml")).train.lr
    assert rollback[0]["lr"] == pytest.approx(lr / 2)
    assert main(["train", "--branch-from", str(power_run["out"] / "checkpoints" / "step_000000003"), "--out", str(branch),
                 "--set", f"train.lr={lr / 2!r}", "--no-progress"]) == 0
    for name in ("model.safetensors", "ema.safetensors", "ema_profiles.safetensors"):
        assert same(step_file(out, 6, name), step_file(branch, 6, name)), name
