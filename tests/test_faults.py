"""Fault-injection suite: kill -9 at random instants (some inside checkpoint writes), NaN
injection, a full disk, and bad input. It writes docs/reliability.json and docs/reliability.md.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import crashed_copy, encode_fake, second_autoencoder
from reliability_report import record
from ilct.runs import faults
from ilct.runs.checkpoint import latest_checkpoint, read_json, read_tensors
from ilct.cli import main

SEED = 0
KILLS = 20
REPORT: dict = {}


@pytest.fixture(scope="module", autouse=True)
def write_report():
    yield
    if REPORT:
        REPORT["seed"] = SEED
        record(REPORT)


def tiny_config(tmp: Path, **train) -> Path:
    cfg = {
        "base": "fmnist-ilct",
        "model": {"arch": "DiT-T/4", "dropout": 0.1},
        "train": {"total_steps": 60, "batch_size": 8, "ckpt_every": 4, "sample_every": 0, "log_every": 1,
                  "num_sample_images": 2, "device": "cpu", "keep_checkpoints": 2, **train},
    }
    path = tmp / f"tiny_{abs(hash(json.dumps(train, sort_keys=True)))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def base_args(cfg, ae, data, out, cache):
    return ["train", "--config", str(cfg), "--autoencoder", str(ae), "--data-dir", str(data), "--out", str(out),
            "--set", f"data.cache_dir={cache}", "--no-progress"]


def checkpoint_is_whole(run: Path) -> bool:
    """The newest checkpoint `latest_checkpoint` picks loads completely (or there is none yet)."""
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        return not (run / "checkpoints").exists() or not any(p.name.startswith("step_") for p in (run / "checkpoints").iterdir())
    for name in ("model", "ema", "optimizer", "rng"):
        tensors = read_tensors(ckpt / f"{name}.safetensors")
        if name != "rng" and not all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point()):
            return False
    return "step" in read_json(ckpt / "state.json") and "param_groups" in read_json(ckpt / "optimizer.json")


def test_kill9_at_random_instants(tmp_path, tiny_autoencoder, fake_fmnist):
    rng = random.Random(SEED)
    cfg = tiny_config(tmp_path, total_steps=400)
    out, cache = tmp_path / "run", tmp_path / "cache"
    # warm the latent cache so every process reaches the loop quickly
    assert main(base_args(tiny_config(tmp_path, total_steps=1), tiny_autoencoder, fake_fmnist, tmp_path / "warm", cache)) == 0
    env = {**os.environ, "ILCT_FAULT_CHECKPOINT_DELAY": "0.04", "OMP_NUM_THREADS": "1"}
    survived, inside_write, last_step = 0, 0, 0
    for kill in range(KILLS):
        args = base_args(cfg, tiny_autoencoder, fake_fmnist, out, cache) + (["--resume"] if kill else [])
        proc = subprocess.Popen([sys.executable, "-m", "ilct", *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        log = out / "log.jsonl"
        start_lines = log.read_text().count("\n") if log.is_file() else 0
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:  # wait until this process trains
            if log.is_file() and log.read_text().count("\n") > start_lines:
                break
            time.sleep(0.02)
        if kill % 4 == 3:  # wait for a checkpoint write in progress, then kill inside it
            while time.time() < deadline and proc.poll() is None and not list((out / "checkpoints").glob(".tmp_step_*")):
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.1))  # each checkpoint write lasts >= 6 x 0.04 s here
            inside_write += int(bool(list((out / "checkpoints").glob(".tmp_step_*"))))
        else:
            time.sleep(rng.uniform(0.0, 0.6))
        was_running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        err = proc.stderr.read()
        assert was_running, f"kill {kill}: the process ended early: {err[-500:]}"
        ckpt = latest_checkpoint(out)
        step = read_json(ckpt / "state.json")["step"] if ckpt else 0
        if checkpoint_is_whole(out) and step >= last_step:
            survived += 1
        last_step = step
    # the run resumes from its last checkpoint and finishes
    final = subprocess.run([sys.executable, "-m", "ilct", *base_args(cfg, tiny_autoencoder, fake_fmnist, out, cache),
                            "--resume"], env={**env, "ILCT_FAULT_CHECKPOINT_DELAY": "0"}, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr[-1000:]
    assert read_json(latest_checkpoint(out) / "state.json")["step"] == 400
    assert not list((out / "checkpoints").glob(".tmp_step_*"))
    REPORT.update({"kills_tried": KILLS, "kills_survived": survived, "kills_inside_checkpoint_write": inside_write,
                   "run_finished_after_kills": True, "checkpoint_writes": "background" if cfg_async(cfg) else "foreground"})
    assert survived == KILLS
    assert inside_write >= 1


def cfg_async(cfg: Path) -> bool:
    """Whether a test config's run writes its checkpoints in the background (train.async_checkpoint)."""
    from ilct.config import load_config

    return load_config(str(cfg)).train.async_checkpoint


def _nan_run(tmp_path, name, nan_steps, ae, data, **train):
    faults._fired.clear()
    os.environ["ILCT_FAULT_NAN_STEPS"] = nan_steps
    try:
        cfg = tiny_config(tmp_path, total_steps=16, max_nonfinite=3, **train)
        rc = main(base_args(cfg, ae, data, tmp_path / name, tmp_path / "cache"))
    finally:
        del os.environ["ILCT_FAULT_NAN_STEPS"]
    log = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
    return rc, log


def test_nan_injection(tmp_path, capsys, tiny_autoencoder, fake_fmnist):
    survived = 0
    # an isolated NaN step is skipped and counted
    rc, log = _nan_run(tmp_path, "one", "5", tiny_autoencoder, fake_fmnist)
    assert rc == 0 and sum(r.get("event") == "nonfinite" for r in log) == 1 and log[-1]["nonfinite_total"] == 1
    survived += rc == 0
    # three in a row: roll back to the last checkpoint (step 8), halve the learning rate, finish
    rc, log = _nan_run(tmp_path, "three", "9,10,11", tiny_autoencoder, fake_fmnist)
    rollback = [r for r in log if r.get("event") == "rollback"]
    assert rc == 0 and len(rollback) == 1 and rollback[0]["step"] == 8 and rollback[0]["lr"] == pytest.approx(5e-4)
    state = read_json(latest_checkpoint(tmp_path / "three") / "state.json")
    assert state["step"] == 16 and state["lr_halved"] is True
    survived += rc == 0
    # persistent NaN: one rollback, then a clear stop naming the step; the checkpoint stays intact
    capsys.readouterr()
    rc, log = _nan_run(tmp_path, "always", "9+", tiny_autoencoder, fake_fmnist)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "up to step 12" in err[0] and "already halved" in err[0]
    assert checkpoint_is_whole(tmp_path / "always")
    assert read_json(latest_checkpoint(tmp_path / "always") / "state.json")["step"] == 8
    REPORT.update({"nan_injections": 2, "nan_survived": survived, "nan_persistent_runs": 1, "nan_persistent_stopped_cleanly": 1})
    assert survived == 2


def digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_bad_inputs_exit_2_and_change_nothing(tmp_path, capsys, monkeypatch, tiny_autoencoder, fake_fmnist):
    cache = tmp_path / "cache"
    run = tmp_path / "run"
    cfg = tiny_config(tmp_path, total_steps=8)
    assert main(base_args(cfg, tiny_autoencoder, fake_fmnist, run, cache)) == 0
    other = tmp_path / "other"
    assert main(base_args(cfg, tiny_autoencoder, fake_fmnist, other, cache) + ["--set", "model.arch=DiT-T/2"]) == 0
    lat = tmp_path / "lat"
    encode_fake(lat, tiny_autoencoder, fake_fmnist)
    other_ae = tmp_path / "other_ae"
    second_autoencoder(other_ae, fake_fmnist, seed=9)
    (tmp_path / "empty").mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for k in range(4):
        (corrupt / f"{k}.png").write_bytes(os.urandom(64))
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "x_encoder.pth").write_bytes(b"not torch")
    (weights / "x_decoder.pth").write_bytes(b"not torch")
    broken = tmp_path / "broken_ckpt"
    shutil.copytree(latest_checkpoint(run), broken)
    (broken / "ema.safetensors").write_bytes(b"\x00" * 10)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train: {lr: [\n")
    png = str(tmp_path / "x.png")
    fresh = str(tmp_path / "fresh")
    train = lambda *a: base_args(cfg, tiny_autoencoder, fake_fmnist, fresh, cache)[:-1] + list(a)  # noqa: E731
    cases = {
        "missing data directory": train("--data-dir", str(tmp_path / "nope")),
        "unknown preset": ["train", "--config", "celeba-xxl", "--out", fresh],
        "negative learning rate": train("--set", "train.lr=-1e-4"),
        "s1 < s0": train("--set", "consistency.s1=4"),
        "unknown metric": train("--set", "method.metric=huber"),
        "wrong type": train("--set", "train.batch_size=many"),
        "invalid YAML file": ["train", "--config", str(bad_yaml), "--out", fresh],
        "output directory holds another run": base_args(cfg, tiny_autoencoder, fake_fmnist, run, cache),
        "resume with other settings": base_args(cfg, tiny_autoencoder, fake_fmnist, run, cache) + ["--resume", "--set", "train.lr=0.1"],
        "checkpoint from another model size": ["sample", "--run", str(run), "--checkpoint", str(latest_checkpoint(other)), "--out", png],
        "corrupt checkpoint file": ["sample", "--run", str(run), "--checkpoint", str(broken), "--out", png],
        "not a run directory": ["sample", "--run", str(tmp_path / "empty"), "--out", png],
        "empty image folder": ["encode", "--data", f"image_folder:{tmp_path / 'empty'}", "--autoencoder", f"builtin:{tiny_autoencoder}", "--out", fresh],
        "folder of corrupt files": ["encode", "--data", f"image_folder:{corrupt}", "--autoencoder", f"builtin:{tiny_autoencoder}", "--out", fresh],
        "wrong channel count": ["encode", "--data", f"image_folder:{tmp_path}", "--autoencoder", f"builtin:{tiny_autoencoder}", "--out", fresh],
        "wrong weights file": ["encode", "--data", "fashion_mnist", "--autoencoder", f"taesd:{weights}", "--out", fresh],
        "latents from another autoencoder": base_args(cfg, other_ae, fake_fmnist, fresh, cache)[:-1] + ["--set", f"data.latents={lat}"],
        "autoencoder directory in use": ["autoencoder", "--out", str(tiny_autoencoder), "--data-dir", str(fake_fmnist)],
    }
    # the channel-count case needs at least one readable RGB image in tmp_path
    from PIL import Image

    Image.new("RGB", (40, 40), (200, 10, 10)).save(tmp_path / "red.png")
    before = {p: digest(p) for p in (run, other, lat, tiny_autoencoder)}
    clean, names = 0, []
    for name, argv in cases.items():
        capsys.readouterr()
        rc = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        ok = rc == 2 and len(err) == 1 and err[0].startswith("ilct: error:")
        assert ok, (name, rc, err)
        clean += ok
        names.append(name)
    # a full disk while saving: a clear error, the previous checkpoint intact
    import ilct.runs.checkpoint as checkpoint_module

    resumable = crashed_copy(run, tmp_path / "disk", 8, 4)
    snapshot = digest(resumable / "checkpoints" / "step_000000004")

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "save_tensors", full_disk)
    capsys.readouterr()
    rc = main(base_args(cfg, tiny_autoencoder, fake_fmnist, resumable, cache) + ["--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "No space left" in err[0] and "intact" in err[0]
    assert digest(resumable / "checkpoints" / "step_000000004") == snapshot
    assert latest_checkpoint(resumable).name == "step_000000004"
    assert not list((resumable / "checkpoints").glob(".tmp_step_*"))
    clean += 1
    names.append("full disk while saving a checkpoint")
    assert {p: digest(p) for p in before} == before  # nothing was overwritten
    assert not Path(png).exists()
    REPORT.update({"bad_inputs_basic_tried": len(names), "bad_inputs_basic_clean": clean, "bad_input_cases": names})


def test_a_background_save_runs_beside_training_and_a_kill_inside_it_keeps_the_last_checkpoint(
        tmp_path, tiny_autoencoder, fake_fmnist):
    cfg = tiny_config(tmp_path, total_steps=400)
    out, cache = tmp_path / "run", tmp_path / "cache"
    env = {**os.environ, "ILCT_FAULT_CHECKPOINT_DELAY": "0.3", "OMP_NUM_THREADS": "1"}  # each write takes >= 2 s
    proc = subprocess.Popen([sys.executable, "-m", "ilct", *base_args(cfg, tiny_autoencoder, fake_fmnist, out, cache)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, tmp = time.time() + 120, []
        while time.time() < deadline and proc.poll() is None:  # the second checkpoint's write in flight
            tmp = list((out / "checkpoints").glob(".tmp_step_000000008_*"))
            if tmp:
                break
            time.sleep(0.01)
        assert tmp, proc.stderr.read()[-1000:] if proc.poll() is not None else "no background write seen"
        time.sleep(0.8)  # training goes on while the writer sleeps between files
        steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
        assert tmp[0].exists() and max(steps) > 8, steps[-3:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert latest_checkpoint(out).name == "step_000000004" and checkpoint_is_whole(out)
    REPORT.update({"background_save_kills": 1, "background_save_steps_trained_during_the_write": max(steps) - 8})
    final = subprocess.run([sys.executable, "-m", "ilct", *base_args(cfg, tiny_autoencoder, fake_fmnist, out, cache),
                            "--resume"], env={**env, "ILCT_FAULT_CHECKPOINT_DELAY": "0"}, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr[-1000:]
    assert read_json(latest_checkpoint(out) / "state.json")["step"] == 400
    assert not list((out / "checkpoints").glob(".tmp_step_*"))  # the killed write's folder was cleared
    REPORT["background_save_kills_survived"] = 1


def test_background_and_foreground_checkpoints_are_the_same_bytes(tmp_path, tiny_autoencoder, fake_fmnist):
    cache = tmp_path / "cache"
    for mode in ("true", "false"):
        cfg = tiny_config(tmp_path, total_steps=8, async_checkpoint=mode == "true")
        assert main(base_args(cfg, tiny_autoencoder, fake_fmnist, tmp_path / mode, cache)) == 0
    for step in ("step_000000004", "step_000000008"):
        for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors", "optimizer.json", "state.json"):
            a = (tmp_path / "true" / "checkpoints" / step / name).read_bytes()
            assert a == (tmp_path / "false" / "checkpoints" / step / name).read_bytes(), (step, name)
