"""torchrun with two gloo ranks on the CPU: identical replicas, equal to one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ilct.checkpoint import latest_checkpoint, read_json, read_tensors
from ilct.cli import main


def config(tmp: Path, **method) -> Path:
    cfg = {
        "base": "fmnist-ict",  # OT off: with several ranks the coupling is solved per rank (ilct.batches)
        "model": {"arch": "DiT-T/4"},
        "method": method,
        "train": {"total_steps": 5, "batch_size": 8, "ckpt_every": 100, "sample_every": 0, "log_every": 1,
                  "num_sample_images": 2, "device": "cpu"},
    }
    path = tmp / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def args(cfg, ae, data, out, cache):
    return ["train", "--config", str(cfg), "--autoencoder", str(ae), "--data-dir", str(data), "--out", str(out),
            "--set", f"data.cache_dir={cache}", "--no-progress"]


def test_two_gloo_ranks_match_one_process(tmp_path, tiny_autoencoder, fake_fmnist):
    cfg = config(tmp_path, metric="cauchy", adaptive_c=True, nsln=True)
    cache = tmp_path / "cache"
    assert main(args(cfg, tiny_autoencoder, fake_fmnist, tmp_path / "one", cache)) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "ilct", *args(cfg, tiny_autoencoder, fake_fmnist, tmp_path / "two", cache)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = latest_checkpoint(tmp_path / "two")
    state = read_json(two / "state.json")
    assert state["world_size"] == 2 and len(state["replica_digests"]) == 2
    assert state["replica_digests"][0] == state["replica_digests"][1]  # both ranks hold the same weights
    one = read_tensors(latest_checkpoint(tmp_path / "one") / "model.safetensors")
    ddp = read_tensors(two / "model.safetensors")
    assert one.keys() == ddp.keys()
    moved = 0.0
    for k in one:
        torch.testing.assert_close(ddp[k], one[k], atol=2e-5, rtol=1e-4)
    init = read_tensors(latest_checkpoint(tmp_path / "one") / "ema.safetensors")
    moved = max(float((one[k] - init[k]).abs().max()) for k in one)
    assert moved > 1e-4  # the runs trained: the comparison is not between untouched weights
    log_one = (tmp_path / "one" / "log.jsonl").read_text().splitlines()
    log_two = (tmp_path / "two" / "log.jsonl").read_text().splitlines()
    assert len(log_one) == len(log_two) == 5  # only rank 0 writes the log


def test_batch_that_does_not_split_is_refused(tmp_path, tiny_autoencoder, fake_fmnist):
    cfg = config(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3",
                           "-m", "ilct", *args(cfg, tiny_autoencoder, fake_fmnist, tmp_path / "three", tmp_path / "cache")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "does not split over 3 ranks" in proc.stderr
