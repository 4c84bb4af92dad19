"""torchrun with two gloo ranks on the CPU: identical replicas, equal to one process with the same global batch,
and a resume with the same world size that reproduces the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from conftest import crashed_copy
from ilct.runs.checkpoint import latest_checkpoint, read_json, read_tensors
from ilct.cli import main


def config(tmp: Path, **method) -> Path:
    cfg = {
        "base": "fmnist-ict",  # OT off: with several ranks the coupling is solved per rank (ilct.training.batches)
        "model": {"arch": "DiT-T/4"},
        "method": method,
        "train": {"total_steps": 6, "batch_size": 8, "ckpt_every": 3, "sample_every": 0, "log_every": 1,
                  "num_sample_images": 2, "device": "cpu"},
    }
    path = tmp / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def args(cfg, ae, data, out, cache):
    return ["train", "--config", str(cfg), "--autoencoder", str(ae), "--data-dir", str(data), "--out", str(out),
            "--set", f"data.cache_dir={cache}", "--no-progress"]


def torchrun(argv: list[str], ranks: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                           "-m", "ilct", *argv], env=env, capture_output=True, text=True, timeout=300)


def test_two_gloo_ranks_match_one_process_and_resume(tmp_path, tiny_autoencoder, fake_fmnist, capsys):
    cfg = config(tmp_path, metric="cauchy", adaptive_c=True, nsln=True)
    cache = tmp_path / "cache"
    assert main(args(cfg, tiny_autoencoder, fake_fmnist, tmp_path / "one", cache)) == 0
    proc = torchrun(args(cfg, tiny_autoencoder, fake_fmnist, tmp_path / "two", cache))
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = latest_checkpoint(tmp_path / "two")
    assert two.name == "step_000000006"
    state = read_json(two / "state.json")
    assert state["world_size"] == 2 and len(state["replica_digests"]) == 2
    assert state["replica_digests"][0] == state["replica_digests"][1]  # both ranks hold the same weights
    one = read_tensors(latest_checkpoint(tmp_path / "one") / "model.safetensors")
    ddp = read_tensors(two / "model.safetensors")
    assert one.keys() == ddp.keys()
    for k in one:
        torch.testing.assert_close(ddp[k], one[k], atol=2e-5, rtol=1e-4)
    first = read_tensors(tmp_path / "one" / "checkpoints" / "step_000000003" / "model.safetensors")
    assert max(float((one[k] - first[k]).abs().max()) for k in one) > 1e-4  # steps 4-6 moved the weights
    log_one = (tmp_path / "one" / "log.jsonl").read_text().splitlines()
    log_two = (tmp_path / "two" / "log.jsonl").read_text().splitlines()
    assert len(log_one) == len(log_two) == 6  # only rank 0 writes the log

    # a crash after step 3, resumed by 2 ranks: the uninterrupted run, bit for bit
    resumed = crashed_copy(tmp_path / "two", tmp_path / "resumed", 6, 3)
    proc = torchrun(args(cfg, tiny_autoencoder, fake_fmnist, resumed, cache) + ["--resume"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "does not reproduce" not in proc.stderr
    for name in ("model", "ema", "optimizer"):
        a = read_tensors(two / f"{name}.safetensors")
        b = read_tensors(latest_checkpoint(resumed) / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name

    # ... resumed by one process: it trains on, and says it is not a reproduction
    single = crashed_copy(tmp_path / "two", tmp_path / "single", 6, 3)
    capsys.readouterr()
    assert main(args(cfg, tiny_autoencoder, fake_fmnist, single, cache) + ["--resume"]) == 0
    assert "written by 2 rank(s) and this run has 1" in capsys.readouterr().err
    assert latest_checkpoint(single).name == "step_000000006"
    assert read_json(latest_checkpoint(single) / "state.json")["world_size"] == 1


def test_batch_that_does_not_split_is_refused(tmp_path, tiny_autoencoder, fake_fmnist):
    cfg = config(tmp_path)
    proc = torchrun(args(cfg, tiny_autoencoder, fake_fmnist, tmp_path / "three", tmp_path / "cache"), ranks=3)
    assert proc.returncode != 0
    assert "does not split over 3 ranks" in proc.stderr
