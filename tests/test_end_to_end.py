"""A seconds-long run of the whole path through the CLI: train, checkpoint, resume, sample, decode."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import crashed_copy, module_dir
from ilct.runs.checkpoint import latest_checkpoint, list_checkpoints, read_tensors
from ilct.cli import main


def tiny_config(tmp: Path, **train) -> Path:
    cfg = {
        "base": "fmnist-ilct",
        "model": {"arch": "DiT-T/4", "dropout": 0.1},
        "train": {"total_steps": 6, "batch_size": 8, "ckpt_every": 3, "sample_every": 3, "log_every": 2,
                  "num_sample_images": 4, "device": "cpu", **train},
    }
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def train_args(cfg: Path, ae: Path, data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(cfg), "--autoencoder", str(ae), "--data-dir", str(data), "--out", str(out),
            "--set", f"data.cache_dir={cache}", "--no-progress", *extra]


@pytest.fixture(scope="module")
def trained_run(request, tmp_path_factory, tiny_autoencoder, fake_fmnist):
    tmp = module_dir(request, tmp_path_factory, "run")
    cfg = tiny_config(tmp)
    out = tmp / "run"
    assert main(train_args(cfg, tiny_autoencoder, fake_fmnist, out, tmp / "cache")) == 0
    return {"tmp": tmp, "cfg": cfg, "out": out, "ae": tiny_autoencoder, "data": fake_fmnist, "cache": tmp / "cache"}


def test_run_directory_contents(trained_run):
    out = trained_run["out"]
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"]["in_channels"] == 4 and cfg["model"]["input_size"] == 8  # resolved from the latents
    assert cfg["method"]["metric"] == "cauchy"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4, 6]
    assert all(np.isfinite(r["loss"]) for r in log) and {"N", "c", "consistency", "diffusion"} <= set(log[0])
    assert [p.name for p in list_checkpoints(out)] == ["step_000000003", "step_000000006"]
    assert latest_checkpoint(out).name == "step_000000006"
    files = {p.name for p in latest_checkpoint(out).iterdir()}
    assert files == {"model.safetensors", "ema.safetensors", "optimizer.safetensors", "optimizer.json",
                     "rng.safetensors", "state.json"}
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_000000003.png", "step_000000006.png"]
    assert (out / "latent_stats.safetensors").is_file()
    ema, model = read_tensors(latest_checkpoint(out) / "ema.safetensors"), read_tensors(latest_checkpoint(out) / "model.safetensors")
    assert any(not torch.equal(ema[k], model[k]) for k in model)  # the EMA is a separate model


def test_resume_reproduces_the_straight_run(trained_run, tmp_path):
    """6 steps straight == 3 steps + resume + 3 steps, bit for bit on the CPU."""
    out = crashed_copy(trained_run["out"], tmp_path / "resumed", 6, 3)
    assert main(train_args(trained_run["cfg"], trained_run["ae"], trained_run["data"], out, trained_run["cache"], "--resume")) == 0
    a = read_tensors(trained_run["out"] / "checkpoints" / "step_000000006" / "model.safetensors")
    b = read_tensors(out / "checkpoints" / "step_000000006" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_without_config_flag(trained_run, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(trained_run["out"], out)
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0  # already finished: no-op


def test_sample_png_and_npz(trained_run, tmp_path, capsys):
    png, npz = tmp_path / "s.png", tmp_path / "s.npz"
    rc = main(["sample", "--run", str(trained_run["out"]), "--steps", "2", "--n", "5", "--seed", "3",
               "--out", str(png), "--npz", str(npz), "--device", "cpu", "--no-progress", "--scale", "1"])
    assert rc == 0
    images = np.load(npz)["images"]
    assert images.shape == (5, 32, 32, 1) and images.dtype == np.uint8
    assert Image.open(png).size == (3 * 34 + 2, 2 * 34 + 2)
    # the same seed gives the same images whatever the batch size
    npz2 = tmp_path / "s2.npz"
    main(["sample", "--run", str(trained_run["out"]), "--steps", "2", "--n", "5", "--seed", "3", "--batch-size", "2",
          "--out", str(tmp_path / "s2.png"), "--npz", str(npz2), "--device", "cpu", "--no-progress"])
    assert np.array_equal(np.load(npz2)["images"], images)
    out = capsys.readouterr().out
    assert "2 step(s)" in out


def test_schedule_json(capsys):
    assert main(["schedule", "--config", "ilct", "--total-steps", "700", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["objective"] == "consistency" and "s0 = 10, s1 = 640" in report["summary"]
    rows = report["stages"]
    assert [r["N"] for r in rows] == [11, 21, 41, 81, 161, 321, 641]
    assert set(rows[0]) == {"start_step", "end_step", "N", "c", "lr_scale"} and {r["lr_scale"] for r in rows} == {1.0}
    assert rows[0]["c"] == pytest.approx(0.03456) and rows[1]["c"] == pytest.approx(0.0136353, rel=1e-5)
    assert rows[-1]["end_step"] == 700
    # consistency.lr_last_stage: the lr's multiplier in the last stage only, in the rows and the summary
    assert main(["schedule", "--config", "fmnist-ilct", "--latent-shape", "4x8x8", "--json",
                 "--set", "consistency.lr_last_stage=0.5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(r["N"], r["start_step"], r["lr_scale"]) for r in report["stages"]] == [
        (11, 0, 1.0), (21, 600, 1.0), (41, 1200, 1.0), (81, 1800, 1.0), (161, 2400, 0.5)]
    assert "lr x 0.5 from N = 161" in report["summary"]


def test_schedule_says_what_the_objective_uses(capsys):
    """MeanFlow has no consistency curriculum: `schedule` says so (and gives alpha(k) when AlphaFlow's is on)."""
    assert main(["schedule", "--config", "fmnist-meanflow", "--latent-shape", "4x8x8"]) == 0
    out = capsys.readouterr().out
    assert "no consistency curriculum" in out and "N " not in out and "s1" not in out
    assert main(["schedule", "--config", "fmnist-meanflow", "--latent-shape", "4x8x8", "--total-steps", "100",
                 "--set", "meanflow.alpha_curriculum=true", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["stages"]
    assert rows[0] == {"step": 0, "alpha": 1.0} and rows[-1]["alpha"] == 0.0 and len(rows) == 11
    assert main(["schedule", "--config", "fmnist-ilct", "--latent-shape", "4x8x8"]) == 0
    assert "objective consistency" in capsys.readouterr().out


# --------------------------------------------------------------------------- bad input


def digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def expect_error(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ilct: error:"), err
    assert needle in err[0], err[0]


def test_bad_settings(capsys, tmp_path, trained_run):
    base = ["train", "--config", "fmnist-ilct", "--out", str(tmp_path / "x"), "--autoencoder", str(trained_run["ae"])]
    expect_error(capsys, base + ["--set", "train.lr=-1"], "train.lr")
    expect_error(capsys, base + ["--set", "consistency.s1=5"], "consistency.s1")
    expect_error(capsys, base + ["--set", "method.metric=huber"], "method.metric")
    expect_error(capsys, ["train", "--config", "nope", "--out", str(tmp_path / "x")], "unknown preset")
    expect_error(capsys, base + ["--data-dir", str(tmp_path / "missing")], "not found")
    expect_error(capsys, ["schedule", "--config", "ict", "--total-steps", "0"], "total-steps")
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_existing_run_is_never_overwritten(capsys, trained_run):
    before = digest(trained_run["out"])
    expect_error(capsys, train_args(trained_run["cfg"], trained_run["ae"], trained_run["data"], trained_run["out"],
                                    trained_run["cache"]), "already holds a run")
    expect_error(capsys, train_args(trained_run["cfg"], trained_run["ae"], trained_run["data"], trained_run["out"],
                                    trained_run["cache"], "--resume", "--set", "train.lr=0.5"), "train.lr")
    expect_error(capsys, ["autoencoder", "--out", str(trained_run["ae"]), "--data-dir", str(trained_run["data"])],
                 "already holds an autoencoder")
    assert digest(trained_run["out"]) == before


def test_checkpoint_from_another_model_size(capsys, trained_run, tmp_path):
    other = tmp_path / "other"
    cfg = tiny_config(tmp_path, total_steps=2)
    assert main(train_args(cfg, trained_run["ae"], trained_run["data"], other, trained_run["cache"],
                           "--set", "model.arch=DiT-T/2")) == 0
    png = tmp_path / "never.png"
    theirs = ["sample", "--run", str(trained_run["out"]), "--checkpoint", str(latest_checkpoint(other)),
              "--out", str(png), "--no-progress"]
    expect_error(capsys, theirs, "is not a checkpoint of")  # another run's: refused unless asked for
    expect_error(capsys, theirs + ["--allow-other-checkpoint"], "holds a 'DiT-T/2' model")  # state.json's arch
    state = json.loads((latest_checkpoint(other) / "state.json").read_text())
    (latest_checkpoint(other) / "state.json").write_text(json.dumps({k: v for k, v in state.items() if k != "arch"}))
    expect_error(capsys, theirs + ["--allow-other-checkpoint"], "does not match")  # no arch recorded: the shapes
    assert not png.exists()
    # a damaged weights file is a clear error too
    broken = tmp_path / "broken"
    shutil.copytree(latest_checkpoint(trained_run["out"]), broken)
    (broken / "ema.safetensors").write_bytes(b"not a safetensors file")
    expect_error(capsys, ["sample", "--run", str(trained_run["out"]), "--checkpoint", str(broken),
                          "--out", str(png), "--no-progress", "--allow-other-checkpoint"], "cannot read")
    expect_error(capsys, ["sample", "--run", str(tmp_path), "--out", str(png)], "not a run directory")
    expect_error(capsys, ["sample", "--run", str(trained_run["out"]), "--steps", "2", "--tau", "90",
                          "--out", str(png)], "--tau")


def test_bf16_autocast_runs_on_cpu(trained_run, tmp_path):
    out = tmp_path / "bf16"
    cfg = tiny_config(tmp_path, total_steps=2, precision="bf16")
    assert main(train_args(cfg, trained_run["ae"], trained_run["data"], out, trained_run["cache"])) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert np.isfinite(log[-1]["loss"])


def test_console_entry_point_exit_code(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "ilct", "train", "--config", "fmnist-ilct", "--out", str(tmp_path / "r"),
                           "--set", "train.lr=-1"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "ilct: error: config: train.lr must be in (0, 10], got -1.0"
    assert not (tmp_path / "r").exists()
    help_ = subprocess.run([sys.executable, "-m", "ilct", "train", "--help"], capture_output=True, text=True)
    assert help_.returncode == 0 and "--resume" in help_.stdout


@pytest.mark.parametrize("world, code, left", [("2", 0, "os._exit 0"), ("2", 2, "exit 2"), ("1", 0, "exit 0"),
                                               (None, 0, "exit 0"), ("x", 0, "exit 0"), ("4", 130, "exit 130")])
def test_a_clean_torchrun_rank_leaves_without_interpreter_teardown(monkeypatch, world, code, left):
    """ilct.cli.leave (both entry points end there): only a rank of a multi-rank job that returned 0 skips the
    teardown (os._exit), every other outcome is an ordinary exit with its status."""
    import ilct.cli as cli

    def fake_exit(status):
        raise RuntimeError(f"os._exit {status}")

    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    if world is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", world)
    with pytest.raises((RuntimeError, SystemExit)) as e:
        cli.leave(code)
    got = str(e.value) if isinstance(e.value, RuntimeError) else f"exit {e.value.code}"
    assert got == left


def test_console_script_is_cli_console():
    """The installed `ilct` script goes through leave(), as `python -m ilct` does."""
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "ilct"]
    assert script.value == "ilct.cli:console"


def test_sigterm_checkpoints_and_exits_zero(trained_run, tmp_path):
    """Preemption: SIGTERM finishes the current step, writes a checkpoint at that step and exits 0."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "pre"
    cfg = tiny_config(tmp_path, total_steps=100000, log_every=1, ckpt_every=100000, sample_every=0)
    cmd = [sys.executable, "-m", "ilct", *train_args(cfg, trained_run["ae"], trained_run["data"], out, trained_run["cache"])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "log.jsonl").is_file() and (out / "log.jsonl").read_text().count("\n") >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "stopped by signal" in stdout
    ckpt = latest_checkpoint(out)
    step = json.loads((ckpt / "state.json").read_text())["step"]
    assert 2 <= step < 100000


def test_grids_are_written_at_sample_steps_that_are_not_log_or_checkpoint_steps(tmp_path, tiny_autoencoder, fake_fmnist):
    cfg = tiny_config(tmp_path, log_every=4, ckpt_every=100, sample_every=3)
    out = tmp_path / "run"
    assert main(train_args(cfg, tiny_autoencoder, fake_fmnist, out, tmp_path / "cache")) == 0
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_000000003.png", "step_000000006.png"]
