"""train.fid_every: FID on the training split during training, the best step checkpointed and named in
best.json, never deleted by the rotation; `ilct eval --split test` for the final number."""

from __future__ import annotations

import json

import pytest
import torch

import ilct.metrics.monitor as monitor
from conftest import module_dir
from ilct.cli import main
from test_end_to_end import tiny_config, train_args
from test_eval import PoolDetector


@pytest.fixture(scope="module")
def detector(request, tmp_path_factory):
    path = module_dir(request, tmp_path_factory, "det") / "inception-2015-12-05.pt"
    torch.jit.script(PoolDetector()).save(str(path))
    return path


def fid_args(tmp, ae, data, out, det, *extra):
    cfg = tiny_config(tmp, ckpt_every=100, keep_checkpoints=1)
    return train_args(cfg, ae, data, out, tmp / "cache", *sets("train.fid_every=2", "train.fid_n=10",
                      "train.fid_features=inception", f"train.fid_inception_weights={det}"), *extra)


def sets(*values):
    return [a for v in values for a in ("--set", v)]


def events(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if '"fid"' in line]


def test_best_step_is_checkpointed_named_and_kept(tmp_path, tiny_autoencoder, fake_fmnist, detector, monkeypatch):
    fids = iter([5.0, 1.0, 3.0])  # steps 2, 4, 6: the best is step 4
    monkeypatch.setattr(monitor, "frechet_distance", lambda *a, **k: next(fids))
    out = tmp_path / "run"
    assert main(fid_args(tmp_path, tiny_autoencoder, fake_fmnist, out, detector)) == 0
    log = events(out)
    assert [(e["step"], e["fid"], e["best_step"], e["new_best"]) for e in log] == [
        (2, 5.0, 2, True), (4, 1.0, 4, True), (6, 3.0, 4, False)]
    assert all(e["nfe"] == 1 and e["n"] == 10 and "train" in e["reference"] for e in log)
    best = json.loads((out / "best.json").read_text())
    assert best["step"] == 4 and best["fid"] == 1.0 and best["checkpoint"] == "checkpoints/step_000000004"
    # keep_checkpoints=1 keeps the newest (the end) and the best, nothing else
    kept = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert kept == ["step_000000004", "step_000000006"]
    assert main(["sample", "--run", str(out), "--checkpoint", str(out / best["checkpoint"]), "--n", "2",
                 "--out", str(tmp_path / "best.png"), "--device", "cpu", "--no-progress"]) == 0


def test_fid_is_measured_on_the_real_features(tmp_path, tiny_autoencoder, fake_fmnist, detector):
    out = tmp_path / "run"
    assert main(fid_args(tmp_path, tiny_autoencoder, fake_fmnist, out, detector)) == 0
    log = events(out)
    assert [e["step"] for e in log] == [2, 4, 6] and all(e["fid"] > 0 for e in log)
    best = min(log, key=lambda e: e["fid"])
    assert json.loads((out / "best.json").read_text())["step"] == best["step"]


def test_resume_continues_the_best_and_force_forgets_it(tmp_path, tiny_autoencoder, fake_fmnist, detector, monkeypatch):
    out = tmp_path / "run"
    fids = iter([2.0, 4.0, 3.0])
    monkeypatch.setattr(monitor, "frechet_distance", lambda *a, **k: next(fids))
    assert main(fid_args(tmp_path, tiny_autoencoder, fake_fmnist, out, detector)) == 0
    assert json.loads((out / "best.json").read_text())["step"] == 2
    before = (out / "best.json").read_text()
    assert main(fid_args(tmp_path, tiny_autoencoder, fake_fmnist, out, detector, "--resume")) == 0  # finished
    assert (out / "best.json").read_text() == before
    # --force starts over: the old best.json is not this run's
    fids = iter([9.0, 8.0, 7.0])
    monkeypatch.setattr(monitor, "frechet_distance", lambda *a, **k: next(fids))
    assert main(fid_args(tmp_path, tiny_autoencoder, fake_fmnist, out, detector, "--force")) == 0
    assert json.loads((out / "best.json").read_text())["step"] == 6


def test_read_best_survives_damage(tmp_path):
    assert monitor.read_best(tmp_path) is None
    for text in ("{", '{"step": 0, "fid": 1}', '{"step": 3, "fid": NaN}', '{"step": "x"}', "[]"):
        (tmp_path / "best.json").write_text(text)
        assert monitor.read_best(tmp_path) is None
    (tmp_path / "best.json").write_text('{"step": 3, "fid": 1.5}')
    assert monitor.read_best(tmp_path) == monitor.Best(3, 1.5)


@pytest.mark.parametrize("setting,needle", [
    ("train.fid_n=5", "train.fid_n"),
    ("train.fid_features=clip", "train.fid_features"),
    ("train.fid_every=-1", "train.fid_every"),
])
def test_bad_fid_settings_are_one_line(tmp_path, tiny_autoencoder, fake_fmnist, capsys, setting, needle):
    out = tmp_path / "run"
    assert main(train_args(tiny_config(tmp_path), tiny_autoencoder, fake_fmnist, out, tmp_path / "cache",
                           *sets("train.fid_every=2", setting))) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_inception_monitor_needs_its_weights(tmp_path, tiny_autoencoder, fake_fmnist, capsys):
    assert main(train_args(tiny_config(tmp_path), tiny_autoencoder, fake_fmnist, tmp_path / "run", tmp_path / "cache",
                           *sets("train.fid_every=2", "train.fid_features=inception"))) == 2
    assert "train.fid_inception_weights" in capsys.readouterr().err


def test_eval_split_test_uses_the_test_images(tmp_path, tiny_autoencoder, fake_fmnist, detector):
    out = tmp_path / "run"
    assert main(train_args(tiny_config(tmp_path), tiny_autoencoder, fake_fmnist, out, tmp_path / "cache")) == 0
    res = {}
    for split in ("train", "test", "val"):
        j = tmp_path / f"{split}.json"
        assert main(["eval", "--run", str(out), "--n", "10", "--steps", "1", "--features", "inception",
                     "--inception-weights", str(detector), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu",
                     "--no-progress", "--split", split, "--json", str(j)]) == 0
        res[split] = json.loads(j.read_text())
    assert res["train"]["split"] == "train" and res["test"]["split"] == "test" and res["val"]["split"] == "val"
    assert res["val"]["reference"] == "fashion_mnist/val@32 (21 images)"  # the last 256 // 12
    assert res["train"]["reference"] != res["test"]["reference"]
    assert res["train"]["fid"]["1"] != res["test"]["fid"]["1"]  # same samples, other real images
