"""Class conditioning: label dropout, classifier-free guidance, the CLI, labels from the data."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import yaml

from conftest import assert_guidance_interpolates, conditioned_dit
from ilct.cli import main
from ilct.config import load_config
from ilct.nets.dit import LabelEmbedder


def test_label_dropout_replaces_labels_by_the_null_class_only_in_training():
    emb = LabelEmbedder(10, 8, dropout_prob=0.25)
    torch.manual_seed(0)
    y = torch.randint(0, 10, (20000,))
    table = emb.table.weight.detach()
    out = emb(y, train=True).detach()
    null = (out == table[10]).all(dim=1)
    assert 0.23 < null.float().mean() < 0.27
    assert torch.equal(out[~null], table[y[~null]])  # the others keep their own label
    assert torch.equal(emb(y, train=False).detach(), table[y])  # never at sampling time
    assert not (LabelEmbedder(10, 8, 0.0)(y, train=True).detach() == table[10]).all(dim=1).any()


def test_guidance_zero_and_one_are_the_unconditional_and_conditional_models():
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    assert_guidance_interpolates(conditioned_dit(num_classes=10), y, torch.full_like(y, 10), 10, 3.0)


def test_class_preset_differs_from_fmnist_ilct_only_in_the_labels():
    a, b = load_config("fmnist-ilct-class").to_dict(), load_config("fmnist-ilct").to_dict()
    diff = {(s, k) for s in a for k in a[s] if a[s][k] != b[s][k]}
    assert diff == {("model", "num_classes")}
    assert load_config("folder-ilct-class").model.num_classes == -1


def test_train_and_sample_a_class_conditional_run(tmp_path, tiny_autoencoder, fake_fmnist, capsys):
    cfg = tmp_path / "cond.yaml"
    cfg.write_text(yaml.safe_dump({
        "base": "fmnist-ilct-class", "model": {"arch": "DiT-T/4", "num_classes": -1},
        "train": {"total_steps": 4, "batch_size": 8, "ckpt_every": 100, "sample_every": 0, "log_every": 2,
                  "num_sample_images": 2, "device": "cpu"}}))
    run = tmp_path / "run"
    args = ["train", "--config", str(cfg), "--autoencoder", str(tiny_autoencoder), "--data-dir", str(fake_fmnist),
            "--out", str(run), "--set", f"data.cache_dir={tmp_path / 'cache'}", "--no-progress"]
    assert main(args) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    labels = np.load(next((tmp_path / "cache").rglob("labels_00000.npy")))
    assert saved["model"]["num_classes"] == int(labels.max()) + 1  # -1 resolved from the data
    out = tmp_path / "g.png"
    assert main(["sample", "--run", str(run), "--class", "3", "--guidance", "2", "--n", "4", "--out", str(out),
                 "--npz", str(tmp_path / "g.npz"), "--no-progress"]) == 0
    assert "class 3, guidance 2" in capsys.readouterr().out
    w2 = np.load(tmp_path / "g.npz")["images"]
    assert main(["sample", "--run", str(run), "--class", "3", "--guidance", "0", "--n", "4", "--out", str(out),
                 "--npz", str(tmp_path / "u.npz"), "--no-progress"]) == 0
    assert main(["sample", "--run", str(run), "--n", "4", "--out", str(out), "--npz", str(tmp_path / "n.npz"),
                 "--no-progress"]) == 0
    assert np.array_equal(np.load(tmp_path / "u.npz")["images"], np.load(tmp_path / "n.npz")["images"])  # w = 0: unconditional
    assert w2.shape == (4, 32, 32, 1)
    capsys.readouterr()
    for bad in (["--class", "99"], ["--guidance", "2"], ["--class", "1", "--guidance", "-1"]):
        assert main(["sample", "--run", str(run), "--n", "2", "--out", str(out), *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("ilct: error:")


def test_class_on_an_unconditional_run_is_refused(tmp_path, tiny_autoencoder, fake_fmnist, capsys):
    cfg = tmp_path / "u.yaml"
    cfg.write_text(yaml.safe_dump({"base": "fmnist-ilct", "model": {"arch": "DiT-T/4"},
                                   "train": {"total_steps": 1, "batch_size": 4, "sample_every": 0, "device": "cpu",
                                             "num_sample_images": 2}}))
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--autoencoder", str(tiny_autoencoder), "--data-dir", str(fake_fmnist),
                 "--out", str(run), "--set", f"data.cache_dir={tmp_path / 'cache'}", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["sample", "--run", str(run), "--class", "1", "--out", str(tmp_path / "x.png")]) == 2
    assert "not class-conditional" in capsys.readouterr().err
