"""Per-step batches: a function of (seed, step), the same global batch split over ranks, prefetched."""

import pytest
import torch

from ilct.training.batches import BatchMaker, Prefetcher, step_seed
from ilct.config import load_config
from ilct.objectives.consistency.coupling import ot_permutation
from ilct.objectives import make_objective

DATA = torch.randn(50, 2, 4, 4, generator=torch.Generator().manual_seed(0))


def maker(rank=0, world=1, ot=False, edm=False, batch=8, labels=None):
    cfg = load_config("fmnist-ict", ["train.total_steps=1000", "consistency.s0=10", "consistency.s1=160", f"train.objective={'edm' if edm else 'consistency'}"])
    return BatchMaker(DATA.__getitem__, len(DATA), (2, 4, 4), labels, batch, 7, make_objective(cfg).draw, ot, rank, world)


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
    m.gather = broken
    p = Prefetcher(m, 0, 3, torch.device("cpu"), workers=workers)
    try:
        with pytest.raises(OSError, match="disk gone"):
            p.get(0)
    finally:
        p.close()
