"""torchrun with two gloo ranks on the CPU: identical replicas, equal to one process with the same global batch,
and a resume with the same world size that reproduces the run; the same as two nodes (two torchrun processes
meeting at a c10d rendezvous on 127.0.0.1), a node that lacks the latents stopping every rank in one line, and
streamed latents (data.reader=stream) of which each node holds only its own shards."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml

from conftest import crashed_copy, encode_fake
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
    with launcher_env() as env:
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                               f"--nproc_per_node={ranks}", "-m", "ilct", *argv],
                              env=env, capture_output=True, text=True, timeout=300)


@contextmanager
def launcher_env(**extra: str) -> Iterator[dict[str, str]]:
    """The launchers' environment: one thread a rank, and a TMPDIR removed afterwards (torchrun leaves a
    torchelastic_* log folder in TMPDIR on every launch: a full run of the tests left 18 in /tmp)."""
    with tempfile.TemporaryDirectory(prefix="ilct-torchrun-") as tmp:
        yield {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": tmp, **extra}


def test_two_gloo_ranks_match_one_process_and_resume(tmp_path, tiny_autoencoder, fake_fmnist, capsys):
    cfg = config(tmp_path, metric="cauchy", adaptive_c=True, nsln=True)
    cache = tmp_path / "cache"
    # the 2-rank run draws its global batch in 2 groups (train.draw_groups resolves to the world size)
    assert main(args(cfg, tiny_autoencoder, fake_fmnist, tmp_path / "one", cache) + ["--set", "train.draw_groups=2"]) == 0
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(argv: list[str], cwd: list[Path] | None = None) -> list[subprocess.CompletedProcess]:
    """Two torchrun launchers, one process each, as two nodes of one job (the README's multi-node command with
    --nnodes=2 --nproc-per-node=1), meeting at a c10d rendezvous on 127.0.0.1."""
    with launcher_env(PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src")) as env:
        port = free_port()
        procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
                                   f"--node-rank={node}", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                                   "--rdzv-id=ilct-test", "-m", "ilct", *argv], env=env, text=True,
                                  cwd=cwd[node] if cwd else None, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for node in range(2)]
        done = []
        for p in procs:
            out, err = p.communicate(timeout=300)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
        return done


def test_two_nodes_match_one_process_and_resume_bit_for_bit(tmp_path, tiny_autoencoder, fake_fmnist):
    cfg = config(tmp_path, metric="cauchy", adaptive_c=True)
    cache = tmp_path / "cache"
    assert main(args(cfg, tiny_autoencoder, fake_fmnist, tmp_path / "one", cache) + ["--set", "train.draw_groups=2"]) == 0
    for proc in two_nodes(args(cfg, tiny_autoencoder, fake_fmnist, tmp_path / "two", cache)):
        assert proc.returncode == 0, proc.stderr[-2000:]
    two = latest_checkpoint(tmp_path / "two")
    state = read_json(two / "state.json")
    assert state["world_size"] == 2 and state["replica_digests"][0] == state["replica_digests"][1]
    one = read_tensors(latest_checkpoint(tmp_path / "one") / "model.safetensors")
    ddp = read_tensors(two / "model.safetensors")
    for k in one:
        torch.testing.assert_close(ddp[k], one[k], atol=2e-5, rtol=1e-4)
    # a crash after the middle checkpoint, resumed by the two nodes: the uninterrupted run, bit for bit
    resumed = crashed_copy(tmp_path / "two", tmp_path / "resumed", 6, 3)
    for proc in two_nodes(args(cfg, tiny_autoencoder, fake_fmnist, resumed, cache) + ["--resume"]):
        assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("model", "ema", "optimizer"):
        a = read_tensors(two / f"{name}.safetensors")
        b = read_tensors(latest_checkpoint(resumed) / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_a_node_without_the_latents_stops_every_rank_in_one_line(tmp_path, tiny_autoencoder, fake_fmnist):
    from conftest import encode_fake

    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for n in nodes:
        n.mkdir()
    encode_fake(nodes[0] / "lat", tiny_autoencoder, fake_fmnist)  # node 1's disk has no latents
    cfg = config(tmp_path)
    argv = ["train", "--config", str(cfg), "--autoencoder", str(tiny_autoencoder), "--out", str(tmp_path / "run"),
            "--set", "data.latents=lat", "--no-progress"]
    procs = two_nodes(argv, cwd=nodes)
    assert all(p.returncode != 0 for p in procs)
    for p in procs:
        lines = [line for line in p.stderr.splitlines() if line.startswith("ilct: error:")]
        assert len(lines) == 1 and "rank 1 of 2" in lines[0] and "lat" in lines[0], p.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_encode_on_two_ranks_gives_the_one_process_latents_and_resumes(tmp_path, tiny_autoencoder, fake_fmnist):
    from conftest import encode_fake

    one = encode_fake(tmp_path / "one", tiny_autoencoder, fake_fmnist, "--shard-size", "64")
    argv = ["encode", "--data", f"fashion_mnist:{fake_fmnist}", "--autoencoder", f"builtin:{tiny_autoencoder}",
            "--out", str(tmp_path / "two"), "--no-progress", "--device", "cpu", "--shard-size", "64"]
    proc = torchrun(argv)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("latents of shape") == 1  # rank 0 reports
    shards = sorted(p.name for p in one.iterdir() if p.suffix == ".npy")
    assert len(shards) == 8  # 256 images in 4 shards: two per rank
    for name in shards + ["latent_stats.safetensors" if (one / "latent_stats.safetensors").exists() else "stats.safetensors"]:
        assert (one / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    meta_one, meta_two = (json.loads((d / "meta.json").read_text()) for d in (one, tmp_path / "two"))
    assert meta_one == meta_two and not list((tmp_path / "two").glob(".shard_*.json"))
    # an encode stopped after rank 1 finished its shards: the two ranks resume, rank 1 encodes nothing again
    partial = tmp_path / ".three.partial"
    shutil.copytree(tmp_path / "two", partial)
    meta = json.loads((partial / "meta.json").read_text())
    meta["complete"], meta["count"] = False, None
    for k, rec in enumerate(meta["shards"]):
        if k % 2 == 1:  # rank 1's: recorded in their own files, as ranks do
            (partial / f".shard_{k:05d}.json").write_text(json.dumps(rec))
        else:
            (partial / rec["file"]).unlink()
        meta["shards"][k] = {key: rec[key] for key in ("file", "labels", "start", "stop")}
    (partial / "meta.json").write_text(json.dumps(meta))
    (partial / "stats.safetensors").unlink(missing_ok=True)
    before = {p.name: p.stat().st_mtime_ns for p in partial.glob("shard_*.npy")}
    proc = torchrun([*argv[:6], str(tmp_path / "three"), *argv[7:]])
    assert proc.returncode == 0, proc.stderr[-2000:]
    three = tmp_path / "three"
    assert all((three / n).stat().st_mtime_ns == t for n, t in before.items())  # rank 1's shards kept as they were
    for name in shards:
        assert (one / name).read_bytes() == (three / name).read_bytes(), name
    assert json.loads((three / "meta.json").read_text()) == meta_one


def test_two_nodes_each_with_only_its_own_shards_stream_as_one_process(tmp_path, tiny_autoencoder, fake_fmnist):
    """data.reader=stream (docs/streaming.md): two nodes, each with a local latent directory that holds only
    meta.json, the statistics and its own draw group's shards, train as one process with two draw groups."""
    from test_stream import config as stream_config, train_args

    latents = encode_fake(tmp_path / "lat", tiny_autoencoder, fake_fmnist, "--limit", "64", "--shard-size", "10")
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for node, shards in zip(nodes, ([0, 2, 4, 6], [1, 3, 5])):
        (node / "lat").mkdir(parents=True)
        for name in ["meta.json", "stats.safetensors"] + [f"{kind}_{s:05d}.npy" for s in shards for kind in ("shard", "labels")]:
            shutil.copy(latents / name, node / "lat" / name)
    cfg = stream_config(tmp_path, Path("lat"))  # relative: each node's own disk
    steps = ["--set", "train.total_steps=6"]
    assert main(train_args(cfg, tiny_autoencoder, tmp_path / "one") + steps + ["--set", f"data.latents={latents}",
                                                                            "--set", "train.draw_groups=2"]) == 0
    for proc in two_nodes(train_args(cfg, tiny_autoencoder, tmp_path / "two") + steps, cwd=nodes):
        assert proc.returncode == 0, proc.stderr[-2000:]
    two = latest_checkpoint(tmp_path / "two")
    assert read_json(two / "state.json")["world_size"] == 2
    one = read_tensors(latest_checkpoint(tmp_path / "one") / "model.safetensors")
    ddp = read_tensors(two / "model.safetensors")
    for k in one:
        torch.testing.assert_close(ddp[k], one[k], atol=2e-5, rtol=1e-4)
    assert read_json(tmp_path / "one" / "checkpoints" / "step_000000005" / "state.json")["reader"]["groups"] == [[0, 20], [0, 20]]


def _record_teardown(monkeypatch) -> list[str]:
    from ilct.training import distributed

    calls: list[str] = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: calls.append("destroy"))
    return calls


def test_ranks_wait_for_each_other_before_teardown_only_after_a_clean_finish(monkeypatch):
    # a rank that tore gloo down while another still had a collective in flight aborted at exit ("terminate
    # called without an active exception"); after an error no rank may wait for one that will never arrive
    from ilct.training.distributed import Dist, shutdown

    calls = _record_teardown(monkeypatch)
    shutdown(Dist(rank=1, world=2), clean=True)
    assert calls == ["barrier", "destroy"]
    calls.clear()
    shutdown(Dist(rank=1, world=2), clean=False)
    assert calls == ["destroy"]
    calls.clear()
    shutdown(Dist(grouped=True), clean=True)  # one process with a group of its own: nobody to wait for
    assert calls == ["destroy"]


def test_train_leaves_the_group_cleanly_only_when_it_finished(tmp_path, tiny_autoencoder, fake_fmnist, monkeypatch):
    from ilct.training import distributed

    seen: list[bool] = []
    monkeypatch.setattr(distributed, "shutdown", lambda d, clean=False: seen.append(clean))
    cfg = config(tmp_path)
    base = args(cfg, tiny_autoencoder, fake_fmnist, tmp_path / "run", tmp_path / "cache")
    assert main(base + ["--set", "train.total_steps=2"]) == 0
    assert seen == [True]
    assert main(base + ["--set", "train.total_steps=2"]) == 2  # the folder holds a run: refused, not finished
    assert seen == [True, False]


@pytest.mark.parametrize("env, says", [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0' must be >= 1"),
    ({"WORLD_SIZE": "2"}, "RANK is not set"),
    ({"WORLD_SIZE": "2", "RANK": "x"}, "RANK='x' is not an integer"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 must be below WORLD_SIZE=2"),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "-1"}, "LOCAL_RANK='-1' must be >= 0"),
])
def test_bad_torchrun_variables_are_one_clear_error(monkeypatch, env, says):
    from ilct.errors import IlctError
    from ilct.training import distributed

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(IlctError, match=re.escape(says)):
        distributed.init(torch.device("cpu"))


def test_train_with_a_bad_world_size_exits_2_and_keeps_the_run(tmp_path, tiny_autoencoder, fake_fmnist, monkeypatch,
                                                                capsys):
    cfg = config(tmp_path)
    out = tmp_path / "run"
    base = args(cfg, tiny_autoencoder, fake_fmnist, out, tmp_path / "cache") + ["--set", "train.total_steps=3"]
    monkeypatch.setenv("WORLD_SIZE", "abc")
    assert main(base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "WORLD_SIZE='abc' is not an integer" in err[0], err
    assert not out.exists()
    monkeypatch.delenv("WORLD_SIZE")
    assert main(base) == 0
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    monkeypatch.setenv("WORLD_SIZE", "abc")
    capsys.readouterr()
    assert main(base[:-2] + ["--set", "train.total_steps=6", "--resume"]) == 2
    assert "WORLD_SIZE='abc'" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
