"""Run folders made before the restructuring of issue 35 keep loading: a MeanFlow run (its `meanflow:` section is
now owned by the objective and registered with the schema) written by the code at 06ad837, with its autoencoder.

The fixture (tests/data/run_before_issue35) holds everything that run wrote except its 66 MB of weights:
config.yaml (paths replaced by @AE@, @DATA@, @CACHE@), latent_stats.safetensors, log.jsonl, and its step-4
checkpoint's state.json, optimizer.json and rng.safetensors; weights_manifest.json lists the names, shapes and
dtypes of the weights it saved (model, EMA, optimizer moments). The test checks that today's network has exactly
those, writes weights of that layout, then samples the run and resumes it to its last step.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ilct.cli import main
from ilct.config import config_from_yaml_file
from ilct.models import build_model
from ilct.runs.checkpoint import latest_checkpoint

FIXTURE = Path(__file__).with_name("data") / "run_before_issue35"


def old_run(tmp: Path, data: Path) -> Path:
    shutil.copytree(FIXTURE, tmp / "old")
    run = tmp / "old" / "run"
    text = (run / "config.yaml").read_text()
    for key, value in (("@AE@", tmp / "old" / "autoencoder"), ("@DATA@", data), ("@CACHE@", tmp / "cache")):
        text = text.replace(key, str(value))
    (run / "config.yaml").write_text(text)
    return run


def test_a_run_folder_made_before_the_restructuring_samples_and_resumes(tmp_path, fake_fmnist, capsys):
    run = old_run(tmp_path, fake_fmnist)
    cfg = config_from_yaml_file(run / "config.yaml")
    assert cfg.train.objective == "meanflow" and cfg.meanflow.time_scale == 100.0
    manifest = json.loads((FIXTURE / "weights_manifest.json").read_text())
    model = build_model(cfg)
    state = model.state_dict()
    assert {k: [list(v.shape), str(v.dtype)] for k, v in state.items()} == manifest["model"] == manifest["ema"]
    ckpt = run / "checkpoints" / "step_000000004"
    save_file({k: v.contiguous() for k, v in state.items()}, str(ckpt / "model.safetensors"))
    save_file({k: v.contiguous() for k, v in state.items()}, str(ckpt / "ema.safetensors"))
    dtypes = {"torch.float32": torch.float32}
    save_file({k: torch.zeros(shape, dtype=dtypes[dt]) for k, (shape, dt) in manifest["optimizer"].items()},
              str(ckpt / "optimizer.safetensors"))
    png = tmp_path / "old.png"
    assert main(["sample", "--run", str(run), "--n", "4", "--steps", "2", "--out", str(png), "--no-progress"]) == 0
    assert png.is_file() and "(step 4)" in capsys.readouterr().out
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert latest_checkpoint(run).name == "step_000000006"
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert steps == [1, 2, 3, 4, 5, 6]
