"""Warm start (`train.init_from`, ilct.training.warmstart): a new run, of any objective, starts from another run's EMA
backbone weights; bad sources are refused in one line before anything is written."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

from conftest import crashed_copy, module_dir
from ilct.training.build import build_student
from ilct.runs.checkpoint import latest_checkpoint, read_tensors
from ilct.cli import main
from ilct.config import config_from_yaml_file
from test_end_to_end import expect_error, tiny_config, train_args


@pytest.fixture(scope="module")
def edm_run(request, tmp_path_factory, tiny_autoencoder, fake_fmnist):
    tmp = module_dir(request, tmp_path_factory, "edm")
    out = tmp / "edm"
    cfg = tiny_config(tmp, total_steps=2, sample_every=0, ckpt_every=2)
    assert main(train_args(cfg, tiny_autoencoder, fake_fmnist, out, tmp / "cache", "--set", "train.objective=edm")) == 0
    return {"tmp": tmp, "out": out, "ae": tiny_autoencoder, "data": fake_fmnist, "cache": tmp / "cache"}


def source_backbone(run):
    ema = read_tensors(latest_checkpoint(run) / "ema.safetensors")
    return {k[len("net."):]: v for k, v in ema.items() if k.startswith("net.")}


def test_a_consistency_run_starts_from_an_edm_run_and_trains(edm_run, tmp_path, capsys):
    out = tmp_path / "ict"
    cfg = tiny_config(tmp_path, total_steps=4, sample_every=0, ckpt_every=2)
    argv = train_args(cfg, edm_run["ae"], edm_run["data"], out, edm_run["cache"], "--set", f"train.init_from={edm_run['out']}")
    assert main(argv) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warm start")]
    assert len(printed) == 1 and "kept at their initial values: none; not used: none" in printed[0]
    saved = config_from_yaml_file(out / "config.yaml")
    assert saved.train.init_from == str(edm_run["out"].resolve())  # recorded, absolute
    # the student the run was built with holds the source's EMA backbone, tensor for tensor
    model, ema, _ = build_student(saved, torch.device("cpu"), quiet=True)
    source = source_backbone(edm_run["out"])
    for name, net in (("model", model.net), ("ema", ema.net)):
        own = net.state_dict()
        assert own.keys() == source.keys() and all(torch.equal(own[k], source[k]) for k in own), name
    # a resume does not read the source again: the run goes on from its own checkpoint, bit for bit
    moved = edm_run["tmp"] / "edm-moved"
    crashed = crashed_copy(out, tmp_path / "crashed", 4, 2)
    edm_run["out"].rename(moved)
    try:
        assert main(train_args(cfg, edm_run["ae"], edm_run["data"], crashed, edm_run["cache"], "--resume",
                               "--set", f"train.init_from={edm_run['out']}")) == 0
    finally:
        moved.rename(edm_run["out"])
    a, b = (read_tensors(latest_checkpoint(r) / "model.safetensors") for r in (out, crashed))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_meanflow_run_keeps_its_second_time_embedder_at_init(edm_run, tmp_path, capsys):
    from ilct.config import load_config

    sets = ["model.arch=DiT-T/4", "model.dropout=0.1", "model.in_channels=4", "model.input_size=8",
            f"train.init_from={edm_run['out']}"]
    torch.manual_seed(0)
    build_student(load_config("fmnist-meanflow", sets), torch.device("cpu"))
    line = capsys.readouterr().out.strip()  # the source has NsLN q/k norms (no gain), this one does not
    assert "kept at their initial values: t2_embedder (4 tensors), blocks.*.attn (12 tensors); not used: none" in line
    cfg = load_config("fmnist-meanflow", sets + ["method.nsln=true"])
    torch.manual_seed(0)
    model, _, _ = build_student(cfg, torch.device("cpu"))
    line = capsys.readouterr().out.strip()
    assert "82 of 86 backbone tensors loaded; kept at their initial values: t2_embedder (4 tensors); not used: none" in line
    torch.manual_seed(0)
    fresh, _, _ = build_student(cfg, torch.device("cpu"), init=False)
    source, own, init = source_backbone(edm_run["out"]), model.net.state_dict(), fresh.net.state_dict()
    assert all(torch.equal(own[k], source[k]) for k in source)
    assert all(torch.equal(own[k], init[k]) for k in own if k.startswith("t2_embedder."))


def test_bad_sources_are_one_line_and_write_nothing(edm_run, tmp_path, capsys):
    cfg = tiny_config(tmp_path, total_steps=2)
    out = tmp_path / "new"

    def refused(source, needle, *extra):
        expect_error(capsys, train_args(cfg, edm_run["ae"], edm_run["data"], out, edm_run["cache"],
                                        "--set", f"train.init_from={source}", *extra), needle)
        assert not (out / "config.yaml").exists()

    refused(tmp_path, "is neither a run folder")
    empty = tmp_path / "empty"
    shutil.copytree(edm_run["out"], empty)
    shutil.rmtree(empty / "checkpoints")
    refused(empty, "has no whole checkpoint")
    refused(edm_run["out"], "trained a DiT-T/4, this run a DiT-T/2: the backbones do not fit", "--set", "model.arch=DiT-T/2")
    tampered = tmp_path / "tampered"
    shutil.copytree(edm_run["out"], tampered)
    ema_file = latest_checkpoint(tampered) / "ema.safetensors"
    ema = read_tensors(ema_file)
    ema["net.x_embedder.bias"] = torch.zeros(7)
    save_file(ema, str(ema_file))
    refused(tampered, "backbone does not fit this run's: 'x_embedder.bias' has shape (7,)")
