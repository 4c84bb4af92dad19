"""train.tensorboard (ilct.training.tensorboard): a tiny run's events read back with TensorBoard's own reader hold
every number of log.jsonl at its step and the sample grids; without the package the option is one line and exit 2
before anything is written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import crashed_copy, module_dir
from ilct.cli import main
from ilct.training.tensorboard import GRID_TAG, scalars


def train_args(tmp: Path, ae: Path, data: Path, out: Path, *extra: str) -> list[str]:
    cfg = tmp / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({
        "base": "fmnist-ilct", "model": {"arch": "DiT-T/4", "dropout": 0.1},
        "train": {"total_steps": 6, "batch_size": 8, "ckpt_every": 3, "sample_every": 3, "log_every": 2,
                  "num_sample_images": 4, "device": "cpu", "tensorboard": True}}))
    return ["train", "--config", str(cfg), "--autoencoder", str(ae), "--data-dir", str(data), "--out", str(out),
            "--set", f"data.cache_dir={tmp / 'cache'}", "--no-progress", *extra]


def read_events(folder: Path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = event_accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


@pytest.fixture(scope="module")
def run(request, tmp_path_factory, tiny_autoencoder, fake_fmnist):
    pytest.importorskip("tensorboard")
    tmp = module_dir(request, tmp_path_factory, "tb")
    assert main(train_args(tmp, tiny_autoencoder, fake_fmnist, tmp / "run")) == 0
    return {"tmp": tmp, "out": tmp / "run", "ae": tiny_autoencoder, "data": fake_fmnist}


def test_events_hold_the_log_and_the_grids(run):
    out = run["out"]
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1  # rank 0, one writer
    events = read_events(out / "tensorboard")
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in log:
        for tag, value in scalars(record).items():
            expected.setdefault(tag, []).append((record["step"], value))
    assert {"loss", "consistency", "diffusion", "N", "c", "img_per_s", "nonfinite_total", "elapsed_s"} <= set(expected)
    assert set(events.Tags()["scalars"]) == set(expected)
    for tag, values in expected.items():
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert got == [(s, float(np.float32(v))) for s, v in values], tag  # stored as float32
    grids = events.Images(GRID_TAG)
    assert [g.step for g in grids] == [3, 6]
    png = Image.open(out / "samples" / "step_000000006.png")
    assert (grids[-1].width, grids[-1].height) == png.size


def test_a_resumed_run_replaces_the_events_after_its_checkpoint(run, tmp_path):
    """A crash after step 3's checkpoint left events of steps 4 and 6; the resumed run purges them and writes
    its own, so each step is there once. (train.tensorboard is a run-time key: it may change on --resume.)"""
    out = crashed_copy(run["out"], tmp_path / "resumed", 6, 3)
    assert main(train_args(run["tmp"], run["ae"], run["data"], out, "--resume")) == 0
    assert [e.step for e in read_events(out / "tensorboard").Scalars("loss")] == [2, 4, 6]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    last = read_events(out / "tensorboard").Scalars("loss")[-1]
    assert last.value == float(np.float32(log[-1]["loss"]))
    again = crashed_copy(run["out"], tmp_path / "off", 6, 3)
    assert main(train_args(run["tmp"], run["ae"], run["data"], again, "--resume", "--set", "train.tensorboard=false")) == 0


def test_scalars_of_event_records():
    assert scalars({"step": 4, "loss": 0.5, "N": 11, "new_best": True, "arch": "DiT"}) == {"loss": 0.5, "N": 11.0}
    assert scalars({"step": 9, "event": "rollback", "checkpoint": "step_000000008", "lr": 5e-5}) == {"rollback/lr": 5e-5}


def test_without_the_package_one_line_and_nothing_written(tmp_path, tiny_autoencoder, fake_fmnist, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` raises ImportError
    out = tmp_path / "run"
    assert main(train_args(tmp_path, tiny_autoencoder, fake_fmnist, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ilct: error: config: train.tensorboard=true needs the tensorboard"), err
    assert "pip install 'ilct[tensorboard]'" in err[0]
    assert not out.exists()
