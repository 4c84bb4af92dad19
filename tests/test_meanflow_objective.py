"""MeanFlow as a training objective (ilct.objectives.meanflow.objective; the maths are tested in test_meanflow.py):
trained, checkpointed, resumed bit-exactly and sampled through the CLI; guidance in the loss path; the
finite-difference option; OT coupling; a class-conditional run; two gloo ranks; the config section."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import conditioned_dit, crashed_copy, module_dir
from ilct.training.batches import Batch
from ilct.training.build import make_batch_maker
from ilct.runs.checkpoint import latest_checkpoint, read_tensors
from ilct.cli import main
from ilct.config import Config, config_from_yaml_file, dump_config, load_config
from ilct.errors import IlctError
from ilct.objectives.meanflow.maths import MeanFlowModel, flow_path, meanflow_loss, meanflow_target
from ilct.objectives import OBJECTIVES, MeanFlow, make_objective
from test_end_to_end import expect_error, train_args

# torch's forward-mode AD loads its decompositions through torch.jit.script on first use (torch 2.13)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def tiny_meanflow(tmp: Path, preset: str = "fmnist-meanflow", **train) -> Path:
    cfg = {"base": preset, "model": {"arch": "DiT-T/4", "dropout": 0.1},
           "train": {"total_steps": 6, "batch_size": 8, "ckpt_every": 3, "sample_every": 3, "log_every": 2,
                     "num_sample_images": 4, "device": "cpu", **train}}
    path = tmp / f"{preset}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def log_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def mf_run(request, tmp_path_factory, tiny_autoencoder, fake_fmnist):
    tmp = module_dir(request, tmp_path_factory, "mf")
    cfg = tiny_meanflow(tmp)
    out = tmp / "run"
    assert main(train_args(cfg, tiny_autoencoder, fake_fmnist, out, tmp / "cache")) == 0
    return {"tmp": tmp, "cfg": cfg, "out": out, "ae": tiny_autoencoder, "data": fake_fmnist, "cache": tmp / "cache"}


# --------------------------------------------------------------------------- the whole path


def test_trains_checkpoints_and_logs(mf_run):
    out = mf_run["out"]
    saved = config_from_yaml_file(out / "config.yaml")
    assert saved.train.objective == "meanflow" and saved.meanflow == load_config("fmnist-meanflow").meanflow
    log = log_of(out)
    assert [r["step"] for r in log] == [2, 4, 6]
    assert all(np.isfinite(r["loss"]) and r["delta_sq"] > 0 for r in log)
    assert "consistency" not in log[0] and "N" not in log[0]  # the objective names its terms
    ema = read_tensors(latest_checkpoint(out) / "ema.safetensors")
    assert any(k.startswith("net.t2_embedder.") for k in ema)  # the backbone has the second time input
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_000000003.png", "step_000000006.png"]


def test_resume_from_the_middle_is_bit_exact(mf_run, tmp_path):
    crashed = crashed_copy(mf_run["out"], tmp_path / "crashed", 6, 3)
    assert main(["train", "--out", str(crashed), "--resume", "--set", f"data.cache_dir={mf_run['cache']}",
                 "--no-progress"]) == 0
    for part in ("model", "ema", "optimizer"):
        a = read_tensors(latest_checkpoint(mf_run["out"]) / f"{part}.safetensors")
        b = read_tensors(latest_checkpoint(crashed) / f"{part}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part


def test_samples_in_1_and_2_steps(mf_run, tmp_path, capsys):
    images = {}
    for steps in (1, 2):
        npz = tmp_path / f"s{steps}.npz"
        assert main(["sample", "--run", str(mf_run["out"]), "--steps", str(steps), "--n", "3", "--out",
                     str(tmp_path / f"s{steps}.png"), "--npz", str(npz), "--device", "cpu", "--no-progress"]) == 0
        images[steps] = np.load(npz)["images"]
        assert images[steps].shape == (3, 32, 32, 1)
    printed = capsys.readouterr().out
    assert "1 step(s) at times [1.0, 0.0]" in printed and "2 step(s) at times [1.0, 0.5, 0.0]" in printed
    expect_error(capsys, ["sample", "--run", str(mf_run["out"]), "--steps", "2", "--tau", "1.0",
                          "--out", str(tmp_path / "t.png")], "--tau applies to consistency sampling")


def test_the_sampler_is_the_flow_map_from_per_sample_noise():
    cfg = load_config("fmnist-meanflow", ["model.arch=DiT-T/4", "model.in_channels=4", "model.input_size=8"])
    objective = make_objective(cfg)
    torch.manual_seed(0)
    model = MeanFlowModel(conditioned_dit(two_times=True)).eval()
    one = objective.sample(model, 5, range(2), (4, 8, 8), 1, None, torch.device("cpu"))
    from ilct.seeds import per_sample_noise

    e = per_sample_noise(5, range(2), (4, 8, 8), 1)[0]
    with torch.no_grad():
        torch.testing.assert_close(one, e - model(e, torch.zeros(2), torch.ones(2)))
    assert objective.nfe(2) == 2 and not objective.takes_tau


# --------------------------------------------------------------------------- the loss path


def conditional_objective(**meanflow) -> MeanFlow:
    sets = ["model.arch=DiT-T/4", "model.in_channels=4", "model.input_size=8", "model.num_classes=3",
            "model.class_dropout=0.5"] + [f"meanflow.{k}={v}" for k, v in meanflow.items()]
    return make_objective(load_config("fmnist-meanflow", sets))


def conditional_batch(b: int = 6) -> Batch:
    g = torch.Generator().manual_seed(7)
    draw = MeanFlow(load_config("fmnist-meanflow")).draw(0, b, g)
    draw[:, 2] = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.3, 0.7])[:b]  # samples 0, 2, 4 dropped at class_dropout 0.5
    return Batch(torch.randn(b, 4, 8, 8, generator=g), torch.randn(b, 4, 8, 8, generator=g), draw,
                 torch.tensor([0, 1, 2, 0, 1, 2])[:b])


def test_the_objective_drops_labels_and_the_backbone_does_not():
    objective = conditional_objective()
    assert objective.backbone_options() == {"two_times": True, "class_dropout": 0.0}
    y_in, y, dropped = objective.conditions(conditional_batch())
    assert dropped.tolist() == [True, False, True, False, True, False]
    assert y_in.tolist() == [3, 1, 3, 0, 3, 2] and y.tolist() == [0, 1, 2, 0, 1, 2]  # 3: the null class


def test_guidance_w_1_is_the_conditional_target_and_dropped_samples_keep_v():
    batch = conditional_batch()
    model = MeanFlowModel(conditioned_dit(num_classes=3, two_times=True)).eval()  # eval: no dropout
    r, t = batch.draw[:, 0], batch.draw[:, 1]
    z, v = flow_path(batch.x, batch.z, t)
    plain = conditional_objective()
    y_in, y, dropped = plain.conditions(batch)
    assert torch.equal(plain.velocity(model, z, t, v, y, dropped), v)
    # the loss path with w = 1: the conditional target of meanflow_target, with the dropped labels
    terms = plain.loss(model, batch, None)
    u, u_tgt = meanflow_target(lambda z_, r_, t_: model(z_, r_, t_, y_in), z, r, t, v)
    assert torch.equal(terms.loss, meanflow_loss(u, u_tgt).mean())
    # w = 2: w v + (1 - w) u(z_t, t, t | null) where the label is kept, v where it was dropped
    null = torch.full_like(y, 3)
    with torch.no_grad():
        u_null, u_cond = model(z, t, t, null), model(z, t, t, y)
    guided = conditional_objective(guidance_w=2.0).velocity(model, z, t, v, y, dropped)
    torch.testing.assert_close(guided[~dropped], (2 * v - u_null)[~dropped])
    assert torch.equal(guided[dropped], v[dropped])
    kappa = conditional_objective(guidance_kappa=0.5).velocity(model, z, t, v, y, dropped)
    torch.testing.assert_close(kappa[~dropped], (v - 0.5 * u_null + 0.5 * u_cond)[~dropped], atol=1e-6, rtol=1e-5)


def test_ot_coupling_pairs_data_and_noise():
    cfg = load_config("fmnist-meanflow", ["method.ot_coupling=true"])
    objective = make_objective(cfg)
    assert objective.couples_noise
    data = torch.randn(32, 4, 8, 8)
    coupled = make_batch_maker(cfg, objective, data.__getitem__, 32, (4, 8, 8)).make(5)
    cfg.method.ot_coupling = False
    plain = make_batch_maker(cfg, objective, data.__getitem__, 32, (4, 8, 8)).make(5)
    assert torch.equal(coupled.x, plain.x) and torch.equal(coupled.draw, plain.draw)
    assert not torch.equal(coupled.z, plain.z)
    rows = lambda z: sorted(map(tuple, z.flatten(1).tolist()))  # noqa: E731
    assert rows(coupled.z) == rows(plain.z)  # the same noise, permuted
    cost = lambda b: float((b.x - b.z).pow(2).sum())  # noqa: E731
    assert cost(coupled) < cost(plain)


# --------------------------------------------------------------------------- options and conditions


def test_finite_difference_trains(mf_run, tmp_path):
    out = tmp_path / "fd"
    cfg = tiny_meanflow(tmp_path, total_steps=2, log_every=1, sample_every=0)
    assert main(train_args(cfg, mf_run["ae"], mf_run["data"], out, mf_run["cache"],
                           "--set", "meanflow.derivative=finite_difference")) == 0
    assert config_from_yaml_file(out / "config.yaml").meanflow.derivative == "finite_difference"
    assert all(np.isfinite(r["loss"]) for r in log_of(out))


def test_class_conditional_trains_and_samples_a_class(mf_run, tmp_path, capsys):
    out = tmp_path / "cls"
    cfg = tiny_meanflow(tmp_path, "fmnist-meanflow-class", total_steps=2, log_every=1, sample_every=0)
    assert main(train_args(cfg, mf_run["ae"], mf_run["data"], out, mf_run["cache"])) == 0
    saved = config_from_yaml_file(out / "config.yaml")
    assert (saved.model.num_classes, saved.meanflow.guidance_w, saved.meanflow.guidance_kappa) == (10, 1.0, 0.5)
    assert all(np.isfinite(r["loss"]) for r in log_of(out))
    png = tmp_path / "c.png"
    assert main(["sample", "--run", str(out), "--class", "3", "--steps", "2", "--n", "2", "--out", str(png),
                 "--no-progress"]) == 0
    assert png.is_file() and "class 3, guidance 1" in capsys.readouterr().out
    # guidance is trained in: a weight at sampling time is refused in one line, and nothing is written
    expect_error(capsys, ["sample", "--run", str(out), "--class", "3", "--guidance", "2", "--out",
                          str(tmp_path / "g.png"), "--no-progress"], "has its guidance trained in")
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("override,needle", [
    ("meanflow.metric=huber", "meanflow.metric must be one of adaptive, l2, cauchy"),
    ("meanflow.derivative=vjp", "meanflow.derivative must be one of jvp, finite_difference"),
    ("meanflow.equal_fraction=1.5", "meanflow.equal_fraction"),
    ("meanflow.p_std=0", "meanflow.p_std"),
    ("meanflow.fd_eps=0", "meanflow.fd_eps"),
    ("meanflow.c=-1", "meanflow.c"),
    ("meanflow.guidance_kappa=1", "meanflow.guidance_kappa"),
    ("meanflow.two_step_m=1", "meanflow.two_step_m"),
    ("meanflow.time_scale=0", "meanflow.time_scale"),
    ("meanflow.guidance_w=2", "need a class- or text-conditional model"),
    ("method.diffusion_loss=true", "method.diffusion_loss does not apply to train.objective meanflow"),
    ("method.metric=cauchy", "method.metric does not apply"),
])
def test_config_errors_are_one_line(override, needle, capsys, tmp_path):
    expect_error(capsys, ["train", "--config", "fmnist-meanflow", "--out", str(tmp_path / "x"), "--set", override],
                 needle)
    assert not (tmp_path / "x").exists()


def test_config_section_round_trip_and_ownership(tmp_path):
    cfg = load_config("fmnist-meanflow-class", ["meanflow.metric=cauchy", "meanflow.c=0.03", "method.nsln=true"])
    dump_config(cfg, tmp_path / "c.yaml")
    assert config_from_yaml_file(tmp_path / "c.yaml") == cfg
    with pytest.raises(IlctError, match="meanflow.metric applies to train.objective meanflow, not consistency"):
        load_config("fmnist-ilct", ["meanflow.metric=cauchy"])
    with pytest.raises(IlctError, match="model.class_dropout > 0"):
        load_config("fmnist-meanflow-class", ["model.class_dropout=0"])
    assert "meanflow" in OBJECTIVES and Config().meanflow.derivative == "jvp"


def test_presets_differ_from_their_ilct_counterparts_in_the_objective_only():
    for mf, ict in (("fmnist-meanflow", "fmnist-ict"), ("emoji-meanflow", "emoji-ict"), ("meanflow", "ict")):
        a, b = load_config(mf).to_dict(), load_config(ict).to_dict()
        assert {s for s in a if a[s] != b[s]} == {"train"}
        assert {k for k in a["train"] if a["train"][k] != b["train"][k]} == {"objective"}
    a, b = load_config("fmnist-meanflow-class").to_dict(), load_config("fmnist-meanflow").to_dict()
    assert {s for s in a if a[s] != b[s]} == {"model", "meanflow"}
    assert load_config("meanflow").model.arch == "DiT-B/2"
    assert load_config("emoji-meanflow-text").model.text_dim == 384
    assert load_config("folder-meanflow-class").model.num_classes == -1


# --------------------------------------------------------------------------- two gloo ranks


def test_two_gloo_ranks_match_one_process(mf_run, tmp_path):
    # class-conditional with guidance: label dropout from the draw and the guidance forward run under DDP too;
    # two steps, because DDP rebuilds its gradient buckets in the second step's forward (docs/method.md)
    from test_distributed import torchrun

    cfg = tiny_meanflow(tmp_path, "fmnist-meanflow-class", total_steps=2, log_every=1, sample_every=0, ckpt_every=2)
    args = lambda out: train_args(cfg, mf_run["ae"], mf_run["data"], out, mf_run["cache"],  # noqa: E731
                                  "--set", "model.dropout=0.0")
    # the 2-rank run draws its global batch in 2 groups (train.draw_groups resolves to the world size)
    assert main(args(tmp_path / "one") + ["--set", "train.draw_groups=2"]) == 0
    proc = torchrun(args(tmp_path / "two"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = read_tensors(latest_checkpoint(tmp_path / "one") / "model.safetensors")
    two = read_tensors(latest_checkpoint(tmp_path / "two") / "model.safetensors")
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=2e-5, rtol=1e-4)
