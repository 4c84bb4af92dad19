"""Per-step batches: a function of (seed, step), the same global batch split over ranks, prefetched."""

import pytest
import torch

from ilct.training.batches import BatchMaker, Prefetcher, group_seed, step_seed
from ilct.config import load_config
from ilct.objectives.consistency.coupling import ot_permutation
from ilct.objectives import make_objective

DATA = torch.randn(50, 2, 4, 4, generator=torch.Generator().manual_seed(0))


def maker(rank=0, world=1, ot=False, edm=False, batch=8, labels=None, groups=1, draw=None):
    cfg = load_config("fmnist-ict", ["train.total_steps=1000", "consistency.s0=10", "consistency.s1=160", f"train.objective={'edm' if edm else 'consistency'}"])
    return BatchMaker(DATA.__getitem__, len(DATA), (2, 4, 4), labels, batch, 7, draw or make_objective(cfg).draw, ot, rank,
                      world, groups)


def test_step_seed_is_a_function_of_its_arguments():
    assert step_seed(0, 5) == step_seed(0, 5)
    seeds = {step_seed(s, k, r) for s in range(3) for k in range(50) for r in range(3)}
    assert len(seeds) == 3 * 50 * 3
    assert all(0 <= s < 2**63 for s in seeds)


def test_a_batch_depends_only_on_the_step():
    a, b = maker().make(3), maker().make(3)
    assert torch.equal(a.x, b.x) and torch.equal(a.z, b.z) and torch.equal(a.draw, b.draw)
    assert not torch.equal(maker().make(4).z, a.z)
    assert a.draw.max() < 11 and a.draw.min() >= 0  # N = s0 + 1 = 11 levels at step 3: i in 0..N-2
    e = maker(edm=True).make(3)
    assert e.draw.dtype == torch.float32 and e.draw.shape == (8,)  # EDM: u ~ N(0, 1)


def test_ranks_split_the_global_batch():
    full = maker().make(11)
    parts = [maker(rank=r, world=2).make(11) for r in range(2)]
    assert torch.equal(torch.cat([p.x for p in parts]), full.x)
    assert torch.equal(torch.cat([p.z for p in parts]), full.z)
    assert torch.equal(torch.cat([p.draw for p in parts]), full.draw)


def test_ot_pairs_each_local_batch_optimally():
    for rank in range(2):
        raw = maker(rank=rank, world=2).make(2)
        b = maker(rank=rank, world=2, ot=True).make(2)
        assert torch.equal(b.x, raw.x)
        assert torch.equal(b.z, raw.z[ot_permutation(raw.x, raw.z)])  # a reordering of this rank's own draws


def test_labels_follow_the_data():
    labels = torch.arange(50)
    b = maker(labels=labels).make(1)
    assert torch.equal(DATA[b.y], b.x)


@pytest.mark.parametrize("workers", [0, 1])
def test_prefetcher_yields_the_makers_batches_in_order(workers):
    m = maker(ot=True)
    p = Prefetcher(m, 5, 9, torch.device("cpu"), depth=2, workers=workers)
    try:
        for k in range(5, 9):
            b = p.get(k)
            assert torch.equal(b.z, m.make(k).z) and torch.equal(b.draw, m.make(k).draw)
        with pytest.raises(RuntimeError):
            p.get(3)
    finally:
        p.close()


@pytest.mark.parametrize("workers", [0, 1])
def test_prefetcher_passes_errors_on(workers):
    def broken(idx):
        raise OSError("disk gone")

    m = maker()
    m.reader.gather = broken
    p = Prefetcher(m, 0, 3, torch.device("cpu"), workers=workers)
    try:
        with pytest.raises(OSError, match="disk gone"):
            p.get(0)
    finally:
        p.close()


def test_one_draw_group_is_the_undivided_batch_of_seed_and_step():
    g = torch.Generator().manual_seed(step_seed(7, 5))
    idx = torch.randint(0, len(DATA), (8,), generator=g)
    z = torch.randn((8, 2, 4, 4), generator=g)
    b = maker().make(5)
    assert torch.equal(b.x, DATA[idx]) and torch.equal(b.z, z) and group_seed(7, 5, 0) == step_seed(7, 5)


@pytest.mark.parametrize("groups", [2, 4, 8])
def test_draw_groups_give_one_global_batch_at_every_world_size_that_divides_them(groups):
    full = maker(batch=16, groups=groups).make(9)
    for world in (w for w in (1, 2, 4, 8) if groups % w == 0 or w % groups == 0):
        parts = [maker(rank=r, world=world, batch=16, groups=groups).make(9) for r in range(world)]
        for key in ("x", "z", "draw"):
            assert torch.equal(torch.cat([getattr(p, key) for p in parts]), getattr(full, key)), (world, key)
    assert not torch.equal(full.z, maker(batch=16).make(9).z)  # another stream than the undivided batch


def test_a_rank_draws_only_the_groups_of_its_slice():
    sizes = []

    def draw(k, n, g):
        sizes.append(n)
        return torch.randint(0, 10, (n,), generator=g)

    maker(rank=3, world=4, batch=64, groups=4, draw=draw).make(0)
    assert sizes == [16]  # one group of 64 / 4, not the global batch
    sizes.clear()
    maker(rank=1, world=4, batch=64, groups=2, draw=draw).make(0)
    assert sizes == [32]  # the one group its slice lies in
    sizes.clear()
    maker(rank=1, world=2, batch=64, groups=1, draw=draw).make(0)
    assert sizes == [64]  # one group: the whole batch, as before groups
    with pytest.raises(ValueError, match="draw groups"):
        maker(batch=12, groups=5)
