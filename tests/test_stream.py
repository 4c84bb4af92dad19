"""The stream reader (data.reader=stream, ilct.training.stream): a seeded order of each draw group's own shards,
every sample once per epoch, a window of shards in memory at a time, and a run resumed in the middle of an
epoch that sees exactly the samples the uninterrupted run saw (its checkpoints bit for bit)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import crashed_copy, encode_fake, module_dir
from ilct.cli import main
from ilct.errors import IlctError
from ilct.latents import LatentDir, LatentShards
from ilct.runs.checkpoint import latest_checkpoint, read_json, read_tensors
from ilct.training.batches import BatchMaker, Prefetcher
from ilct.training.stream import StreamReader, epoch_order, group_shards, open_stream

N, SHARD = 64, 10  # 64 latents in 7 shards: six of 10 and one of 4


@pytest.fixture(scope="module")
def latents(request, tmp_path_factory, tiny_autoencoder, fake_fmnist) -> Path:
    out = module_dir(request, tmp_path_factory, "stream") / "lat"
    return encode_fake(out, tiny_autoencoder, fake_fmnist, "--limit", str(N), "--shard-size", str(SHARD))


def reader(path, seed=3, groups=1, n=8, window=2, classes=0) -> StreamReader:
    return StreamReader(LatentShards(path), lambda raw: raw, seed, groups, n, window, classes)


def epoch_indices(r: StreamReader, group: int, epoch: int) -> np.ndarray:
    """The latent indices the group reads in one epoch (its L_g samples, n per step)."""
    steps = r.length[group] // r.n
    assert r.length[group] % r.n == 0
    return np.concatenate([r.indices(k, group, 0, r.n) for k in range(epoch * steps, (epoch + 1) * steps)])


def test_every_sample_once_per_epoch_in_an_order_of_the_seed(latents):
    r = reader(latents)
    first, second = epoch_indices(r, 0, 0), epoch_indices(r, 0, 1)
    assert sorted(first) == sorted(second) == list(range(N))  # every latent once per epoch
    assert not np.array_equal(first, second)  # a new order each epoch
    assert np.array_equal(first, epoch_indices(reader(latents), 0, 0))  # a function of the seed
    assert not np.array_equal(first, epoch_indices(reader(latents, seed=4), 0, 0))
    assert not np.array_equal(first, epoch_indices(reader(latents, window=3), 0, 0))  # windows shuffle differently
    assert np.array_equal(reader(latents, n=5).indices(3, 0, 0, 5), first[15:20])  # crossing windows, as one sequence
    assert epoch_order(3, 0, 0, [0, 1, 2, 3, 4, 5, 6]) != epoch_order(3, 1, 0, [0, 1, 2, 3, 4, 5, 6])


def test_held_out_latents_are_never_read_and_the_others_once_per_epoch(latents):
    keep = np.arange(N) % 3 != 0  # data.caption_holdout: a bool per latent
    whole = LatentDir(latents)
    r = StreamReader(LatentShards(latents), lambda raw: raw, 3, 1, 7, 2, keep=keep)
    assert r.n_data == r.length[0] == 42
    first = epoch_indices(r, 0, 0)
    assert sorted(first) == list(np.flatnonzero(keep))
    x, _ = r.take(2, 0, 7, torch.Generator(), 0, 7)
    assert torch.equal(x, whole.gather(first[14:21]))


def test_draw_groups_read_disjoint_shards_that_cover_the_set(latents):
    r = reader(latents, groups=2, n=4)  # group 0: shards 0, 2, 4, 6 (34 latents); group 1: shards 1, 3, 5 (30)
    starts = LatentShards(latents).starts
    owner = lambda i: int(np.searchsorted(starts, i, side="right")) - 1  # noqa: E731
    seen = []
    for g in range(2):
        idx = np.concatenate([r.indices(k, g, 0, 4) for k in range(40)])[: r.length[g]]  # one epoch of the group
        assert {owner(i) % 2 for i in idx} == {g} and len(set(idx)) == r.length[g]
        seen.append(set(idx))
    assert r.length == [34, 30] and seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(N))
    assert group_shards(7, 2, 1) == [1, 3, 5]


def test_take_gives_the_latents_and_labels_of_its_indices_within_the_window_bound(latents):
    whole = LatentDir(latents)
    r = reader(latents, window=2, classes=10)
    read = []
    real = r.shards.read
    r.shards.read = lambda k: (read.append(k), real(k))[1]
    for k in range(16):  # two epochs, 8 samples a step
        x, y = r.take(k, 0, 8, torch.Generator(), 0, 8)
        idx = r.indices(k, 0, 0, 8)
        assert torch.equal(x, whole.gather(idx)) and torch.equal(y, whole.labels[idx])
    assert r.most_held == 2  # never more than data.stream_window shards in memory
    assert sorted(read) == sorted(list(range(7)) * 2)  # each shard read once per epoch (its 4 windows in turn)


def test_ranks_read_their_own_shards_and_together_make_the_one_process_batch(latents):
    def makers(world):
        out = []
        for rank in range(world):
            shards = LatentShards(latents)
            out.append(BatchMaker(None, N, (4, 8, 8), None, 8, 5, lambda k, n, g: torch.rand(n, generator=g), False,
                                  rank, world, 2, open_stream(shards, lambda raw: raw, 5, 2, 4, 2, range(rank, rank + 1))))
        return out

    one = BatchMaker(None, N, (4, 8, 8), None, 8, 5, lambda k, n, g: torch.rand(n, generator=g), False, 0, 1, 2,
                     open_stream(LatentShards(latents), lambda raw: raw, 5, 2, 4, 2, range(2)))
    two = makers(2)
    read = [set(), set()]
    for rank, m in enumerate(two):
        real = m.reader.shards.read
        m.reader.shards.read = lambda k, real=real, rank=rank: (read[rank].add(k), real(k))[1]
    for k in range(12):
        full, parts = one.make(k), [m.make(k) for m in two]
        for key in ("x", "z", "draw"):
            assert torch.equal(torch.cat([getattr(p, key) for p in parts]), getattr(full, key)), (k, key)
    assert read == [{0, 2, 4, 6}, {1, 3, 5}]  # each rank reads only its own group's shards


def test_a_reader_started_mid_epoch_gives_the_batches_of_one_that_ran_from_the_start(latents):
    def maker():
        return BatchMaker(None, N, (4, 8, 8), None, 8, 5, lambda k, n, g: torch.rand(n, generator=g), False,
                          reader=reader(latents, seed=5, window=3))

    ran, fresh = maker(), maker()
    for k in range(11):
        ran.make(k)
    for k in range(11, 16):
        a, b = ran.make(k), fresh.make(k)
        assert torch.equal(a.x, b.x) and torch.equal(a.z, b.z)
    assert ran.reader.state(11) == {"kind": "stream", "window": 3, "groups": [[1, 24]]}  # 88 = 64 + 24


def config(tmp: Path, lat: Path) -> Path:
    cfg = {"base": "fmnist-ict", "model": {"arch": "DiT-T/4"},
           "data": {"latents": str(lat), "reader": "stream", "stream_window": 3},
           "train": {"total_steps": 12, "batch_size": 8, "ckpt_every": 5, "sample_every": 0, "log_every": 4,
                     "num_sample_images": 2, "device": "cpu", "keep_checkpoints": 5}}
    path = tmp / "stream.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def train_args(cfg: Path, ae: Path, out: Path) -> list[str]:
    return ["train", "--config", str(cfg), "--autoencoder", str(ae), "--out", str(out), "--no-progress"]


def test_a_run_resumed_mid_epoch_sees_the_samples_of_the_uninterrupted_run(tmp_path, latents, tiny_autoencoder):
    cfg = config(tmp_path, latents)
    assert main(train_args(cfg, tiny_autoencoder, tmp_path / "whole")) == 0
    ckpts = tmp_path / "whole" / "checkpoints"
    # 8 samples a step, 64 an epoch: step 5 is mid-epoch 0, step 10 mid-epoch 1
    assert read_json(ckpts / "step_000000005" / "state.json")["reader"] == {"kind": "stream", "window": 3,
                                                                            "groups": [[0, 40]]}
    assert read_json(ckpts / "step_000000010" / "state.json")["reader"]["groups"] == [[1, 16]]
    resumed = crashed_copy(tmp_path / "whole", tmp_path / "resumed", 12, 5)
    shutil.rmtree(resumed / "checkpoints" / "step_000000010")
    assert main(train_args(cfg, tiny_autoencoder, resumed) + ["--resume"]) == 0
    for name in ("model", "ema", "optimizer"):
        a = read_tensors(latest_checkpoint(tmp_path / "whole") / f"{name}.safetensors")
        b = read_tensors(latest_checkpoint(resumed) / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    memory = tmp_path / "memory"  # the other reader draws other samples (with replacement): other weights
    assert main(train_args(cfg, tiny_autoencoder, memory) + ["--set", "data.reader=memory", "--set",
                                                            "data.stream_window=8", "--set", "train.total_steps=5"]) == 0
    a = read_tensors(ckpts / "step_000000005" / "model.safetensors")
    b = read_tensors(latest_checkpoint(memory) / "model.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("change, message", [
    (["data.reader=disk"], "data.reader must be one of memory, stream, got 'disk'"),
    (["data.stream_window=0"], "data.stream_window must be in 1..65536"),
    (["data.reader=memory"], "data.stream_window applies to data.reader=stream, not memory"),
    (["data.latents="], "data.reader=stream reads a latent directory shard by shard: set data.latents"),
    (["model.num_classes=-1"], "model.num_classes=-1 reads every label before training"),
    (["train.draw_groups=8"], "holds 7 shard(s), fewer than the 8 draw groups"),
])
def test_bad_settings_are_one_line_and_nothing_is_written(tmp_path, latents, tiny_autoencoder, capsys, change, message):
    out = tmp_path / "run"
    argv = train_args(config(tmp_path, latents), tiny_autoencoder, out)
    assert main(argv + [x for c in change for x in ("--set", c)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("damage, message", [
    (lambda lat: (lat / "shard_00003.npy").unlink(), "shard 'shard_00003.npy' is missing"),
    (lambda lat: (lat / "labels_00005.npy").write_bytes(b"\x93NUMPY garbage"), "cannot read"),
    (lambda lat: (lat / "shard_00002.npy").write_bytes((lat / "shard_00002.npy").read_bytes()[:-64]), "cannot read"),
])
def test_a_missing_or_damaged_shard_is_one_line_before_anything_is_written(tmp_path, latents, tiny_autoencoder, capsys,
                                                                           damage, message):
    lat = tmp_path / "lat"
    shutil.copytree(latents, lat)
    damage(lat)
    out = tmp_path / "run"
    assert main(train_args(config(tmp_path, lat), tiny_autoencoder, out)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_shard_that_goes_bad_after_the_start_is_an_error_when_it_is_read(tmp_path, latents):
    lat = tmp_path / "lat"
    shutil.copytree(latents, lat)
    r = reader(lat)
    r.take(0, 0, 8, torch.Generator(), 0, 8)
    a = np.load(lat / "shard_00001.npy")
    a[0, 0, 0, 0] = np.nan
    np.save(lat / "shard_00001.npy", a)
    with pytest.raises(IlctError, match="shard_00001.npy holds latents that are not finite"):
        for k in range(16):
            r.take(k, 0, 8, torch.Generator(), 0, 8)


def test_an_error_in_the_prefetch_worker_is_one_line(tmp_path, latents):
    lat = tmp_path / "lat"
    shutil.copytree(latents, lat)
    maker = BatchMaker(None, N, (4, 8, 8), None, 8, 5, lambda k, n, g: torch.rand(n, generator=g), False,
                       reader=reader(lat, seed=5))
    (lat / "shard_00004.npy").unlink()  # gone after the start-up check (a node's disk failing)
    p = Prefetcher(maker, 0, 16, torch.device("cpu"), depth=2, workers=1)  # as on a GPU: a DataLoader worker
    try:
        with pytest.raises(IlctError) as e:
            for k in range(16):
                p.get(k)
        assert str(e.value).startswith(f"{lat}: shard 'shard_00004.npy' is missing") and "\n" not in str(e.value)
    finally:
        p.close()


def test_two_sharded_ranks_streaming_equal_one_process(tmp_path, latents, tiny_autoencoder):
    # the stream and FSDP2 together: each rank streams its own draw group's shards into its shard of the model
    from test_distributed import torchrun

    cfg = config(tmp_path, latents)
    short = ["--set", "train.total_steps=4", "--set", "train.ckpt_every=4", "--set", "model.dropout=0.0"]
    assert main(train_args(cfg, tiny_autoencoder, tmp_path / "one") + short + ["--set", "train.draw_groups=2"]) == 0
    proc = torchrun(train_args(cfg, tiny_autoencoder, tmp_path / "two") + short + ["--set", "train.sharding=fsdp"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = latest_checkpoint(tmp_path / "one"), latest_checkpoint(tmp_path / "two")
    assert read_json(two / "state.json")["reader"]["groups"] == [[0, 16], [0, 16]]  # 4 steps of 4 per group
    for name in ("model", "ema"):
        a, b = read_tensors(one / f"{name}.safetensors"), read_tensors(two / f"{name}.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=2e-5, rtol=1e-4)
