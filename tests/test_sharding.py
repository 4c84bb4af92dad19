"""train.sharding=fsdp (FSDP2, ilct.training.sharding) on gloo ranks on the CPU: two sharded ranks equal one
unsharded process for a consistency objective (the paper's ilct preset) and for MeanFlow through its JVP; a
sharded checkpoint written by 2 ranks resumes at 1 and at 4 ranks (the moments resharded) and reproduces the
uninterrupted run; its whole weights sample with `ilct sample`; bad settings are one line.

What needs a device and is not tested here: NCCL, bf16 under sharding, memory and speed at scale."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from conftest import crashed_copy, module_dir
from ilct.cli import main
from ilct.runs.checkpoint import latest_checkpoint, read_json, read_tensors
from ilct.schema import CHOICES
from ilct.training.sharding import SHARDINGS
from test_distributed import torchrun
from test_end_to_end import expect_error, train_args

# torch's forward-mode AD loads its decompositions through torch.jit.script on first use (torch 2.13)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

FSDP = ["--set", "train.sharding=fsdp"]
CLOSE = dict(atol=2e-5, rtol=1e-4)  # as tests/test_distributed.py: two ranks sum their gradients in another order


def config(tmp: Path, preset: str, **train) -> Path:
    cfg = {"base": preset, "model": {"arch": "DiT-T/4", "dropout": 0.0},
           "train": {"total_steps": 4, "batch_size": 8, "ckpt_every": 2, "sample_every": 0, "log_every": 1,
                     "num_sample_images": 2, "device": "cpu", **train}}
    path = tmp / f"{preset}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def assert_same_weights(a: Path, b: Path, names=("model", "ema"), **tol) -> None:
    for name in names:
        x, y = read_tensors(a / f"{name}.safetensors"), read_tensors(b / f"{name}.safetensors")
        assert x.keys() == y.keys(), name
        for k in x:
            torch.testing.assert_close(y[k], x[k], **(tol or CLOSE), msg=lambda m: f"{name} {k}: {m}")


@pytest.fixture(scope="module")
def ilct_runs(request, tmp_path_factory, tiny_autoencoder, fake_fmnist):
    """fmnist-ilct for 4 steps: one unsharded process drawing its batch in 2 groups as 2 ranks do, and 2 sharded
    gloo ranks. Two of its techniques are per rank by nature and off here, as in tests/test_distributed.py: the OT
    coupling (solved per rank) and the diffusion loss (a mean over each rank's samples at the high levels, so
    W ranks differ from one process whenever their counts differ; at 4 ranks DDP and FSDP both move 2.7e-4 away
    from one process with it on, and agree with each other to 1.5e-9)."""
    tmp = module_dir(request, tmp_path_factory, "shard")
    cfg = config(tmp, "fmnist-ilct")
    args = lambda out, *extra: train_args(cfg, tiny_autoencoder, fake_fmnist, out, tmp / "cache",  # noqa: E731
                                          "--set", "method.ot_coupling=false", "--set", "method.diffusion_loss=false",
                                          *extra)
    assert main(args(tmp / "one", "--set", "train.draw_groups=2")) == 0
    proc = torchrun(args(tmp / "two", *FSDP))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"tmp": tmp, "args": args}


def test_two_sharded_ranks_equal_one_process(ilct_runs):
    tmp = ilct_runs["tmp"]
    two = latest_checkpoint(tmp / "two")
    assert two.name == "step_000000004"
    assert (two / "optimizer" / ".metadata").is_file() and not (two / "optimizer.safetensors").exists()
    assert not list((tmp / "two" / "checkpoints").glob(".sharded_step_*"))  # the staging folders were moved in
    state = read_json(two / "state.json")
    assert state["world_size"] == 2 and len(set(state["replica_digests"])) == 1
    assert_same_weights(latest_checkpoint(tmp / "one"), two)
    first = read_tensors(tmp / "two" / "checkpoints" / "step_000000002" / "model.safetensors")
    last = read_tensors(two / "model.safetensors")
    assert max(float((last[k] - first[k]).abs().max()) for k in last) > 1e-4  # steps 3-4 moved the weights


def test_sharded_checkpoint_resumes_at_one_and_four_ranks(ilct_runs):
    """A crash after step 2 of the 2-rank run, resumed by one process and by 4 ranks (the moments resharded by
    torch.distributed.checkpoint): each reproduces the uninterrupted run within the tolerance."""
    tmp, args = ilct_runs["tmp"], ilct_runs["args"]
    two = latest_checkpoint(tmp / "two")
    one = crashed_copy(tmp / "two", tmp / "at1", 4, 2)
    assert main(args(one, "--resume", *FSDP)) == 0  # (a run-time key: --config's value unless given again)
    assert latest_checkpoint(one).name == "step_000000004"
    assert read_json(latest_checkpoint(one) / "state.json")["world_size"] == 1
    assert_same_weights(two, latest_checkpoint(one), ("model", "ema"))
    four = crashed_copy(tmp / "two", tmp / "at4", 4, 2)
    proc = torchrun(args(four, "--resume", *FSDP), ranks=4)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "written by 2 rank(s) and this run has 4" in proc.stderr
    assert read_json(latest_checkpoint(four) / "state.json")["world_size"] == 4
    assert_same_weights(two, latest_checkpoint(four), ("model", "ema"))


def test_whole_weights_sample_export_and_what_sharding_refuses_is_one_line(ilct_runs, capsys):
    tmp, args = ilct_runs["tmp"], ilct_runs["args"]
    png = tmp / "samples.png"
    assert main(["sample", "--run", str(tmp / "two"), "--steps", "1", "--n", "2", "--out", str(png), "--device", "cpu",
                 "--no-progress"]) == 0
    assert png.is_file()
    assert main(["export", "--run", str(tmp / "two"), "--out", str(tmp / "exported")]) == 0
    assert main(["sample", "--model", str(tmp / "exported"), "--steps", "1", "--n", "2", "--out", str(tmp / "e.png"),
                 "--device", "cpu", "--no-progress"]) == 0
    plain = crashed_copy(tmp / "two", tmp / "plain", 4, 2)
    expect_error(capsys, args(plain, "--resume", "--set", "train.sharding=none"), "resume with --set train.sharding=fsdp")
    expect_error(capsys, ["train", "--branch-from", str(tmp / "one"), "--out", str(tmp / "branch"), *FSDP, "--no-progress"],
                 "--branch-from is not supported with train.sharding=fsdp")
    assert not (tmp / "branch").exists()


def test_an_unsharded_checkpoint_resumes_sharded(ilct_runs):
    """train.sharding is a run-time key: the unsharded run's checkpoint of step 2 resumed by one sharded process
    (its moments cut on loading) ends where the unsharded run ended."""
    tmp, args = ilct_runs["tmp"], ilct_runs["args"]
    resumed = crashed_copy(tmp / "one", tmp / "one_fsdp", 4, 2)
    assert main(args(resumed, "--resume", *FSDP)) == 0
    assert (latest_checkpoint(resumed) / "optimizer" / ".metadata").is_file()
    assert_same_weights(latest_checkpoint(tmp / "one"), latest_checkpoint(resumed), ("model", "ema"))


def test_meanflow_jvp_through_two_sharded_ranks_equals_one_process(tmp_path, tiny_autoencoder, fake_fmnist):
    """MeanFlow's target by its JVP (meanflow.derivative=jvp, torch.func.jvp) through the sharded model, with labels,
    label dropout and guidance (fmnist-meanflow-class), and the power-function EMA's two profiles sharded too."""
    cfg = config(tmp_path, "fmnist-meanflow-class", total_steps=2, ckpt_every=2, ema="power")
    args = lambda out, *extra: train_args(cfg, tiny_autoencoder, fake_fmnist, out, tmp_path / "cache",  # noqa: E731
                                          "--set", "method.ot_coupling=false", *extra)
    assert main(args(tmp_path / "one", "--set", "train.draw_groups=2")) == 0
    proc = torchrun(args(tmp_path / "two", *FSDP))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = latest_checkpoint(tmp_path / "one"), latest_checkpoint(tmp_path / "two")
    assert read_json(b / "state.json")["ema_stds"] == [0.05, 0.10]
    assert_same_weights(a, b, ("model", "ema", "ema_profiles"))
    snaps = sorted(p.name for p in (tmp_path / "two" / "ema_snapshots").iterdir())
    assert snaps == sorted(p.name for p in (tmp_path / "one" / "ema_snapshots").iterdir()) and snaps


def test_bad_sharding_settings_are_one_line(tmp_path, tiny_autoencoder, fake_fmnist, capsys):
    assert set(SHARDINGS) == set(CHOICES["train.sharding"])
    cfg = config(tmp_path, "fmnist-ilct")
    args = lambda *extra: train_args(cfg, tiny_autoencoder, fake_fmnist, tmp_path / "x", tmp_path / "cache", *extra)  # noqa: E731
    expect_error(capsys, args("--set", "train.sharding=zero"), "train.sharding must be one of none, fsdp")
    expect_error(capsys, args(*FSDP, "--set", "train.compile=true"), "train.compile is not supported with train.sharding=fsdp")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("preset,sets", [("fmnist-meanflow", ["meanflow.derivative=finite_difference"]),
                                         ("fmnist-ict", ["train.objective=edm"]),
                                         ("fmnist-ict", ["train.grad_clip=0.01", "train.precision=bf16"])],
                         ids=["meanflow-fd", "edm", "clip-bf16"])
def test_one_sharded_process_equals_unsharded(tmp_path, tiny_autoencoder, fake_fmnist, preset, sets):
    """One process with a process group of its own, for the objectives the 2-rank tests leave out (MeanFlow's
    fallback that needs no JVP, meanflow.derivative=finite_difference, and the EDM reference) and for gradient
    clipping (the norm of sharded gradients) under bf16 autocast (on the CPU: a GPU's bf16 kernels are untested)."""
    cfg = config(tmp_path, preset, total_steps=2, ckpt_every=2)
    extra = [x for kv in sets for x in ("--set", kv)]
    args = lambda out, *more: train_args(cfg, tiny_autoencoder, fake_fmnist, out, tmp_path / "cache", *extra, *more)  # noqa: E731
    assert main(args(tmp_path / "plain")) == 0
    assert main(args(tmp_path / "sharded", *FSDP)) == 0
    assert (latest_checkpoint(tmp_path / "sharded") / "optimizer" / ".metadata").is_file()
    assert_same_weights(latest_checkpoint(tmp_path / "plain"), latest_checkpoint(tmp_path / "sharded"))
