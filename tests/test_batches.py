"""Per-step batches: a function of (seed, step), the same global batch split over ranks, prefetched."""

import pytest
import torch

from ilct.batches import BatchMaker, Prefetcher, step_seed
from ilct.consistency.coupling import ot_permutation

DATA = torch.randn(50, 2, 4, 4, generator=torch.Generator().manual_seed(0))


def maker(rank=0, world=1, ot=False, edm=False, batch=8, labels=None):
    return BatchMaker(DATA.__getitem__, len(DATA), (2, 4, 4), labels, batch, 7, 1000, edm, ot,
                      10, 160, 0.002, 80.0, 7.0, -1.1, 2.0, rank, world)


def test_step_seed_is_a_function_of_its_arguments():
    assert step_seed(0, 5) == step_seed(0, 5)
    seeds = {step_seed(s, k, r) for s in range(3) for k in range(50) for r in range(3)}
    assert len(seeds) == 3 * 50 * 3
    assert all(0 <= s < 2**63 for s in seeds)


def test_a_batch_depends_only_on_the_step():
    a, b = maker().make(3), maker().make(3)
    assert torch.equal(a.x, b.x) and torch.equal(a.z, b.z) and torch.equal(a.i, b.i)
    assert not torch.equal(maker().make(4).z, a.z)
    assert a.i.max() < 11 and a.i.min() >= 0  # N = s0 + 1 = 11 levels at step 3: i in 0..N-2
    e = maker(edm=True).make(3)
    assert e.i is None and e.u.shape == (8,)


def test_ranks_split_the_global_batch():
    full = maker().make(11)
    parts = [maker(rank=r, world=2).make(11) for r in range(2)]
    assert torch.equal(torch.cat([p.x for p in parts]), full.x)
    assert torch.equal(torch.cat([p.z for p in parts]), full.z)
    assert torch.equal(torch.cat([p.i for p in parts]), full.i)


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
            assert torch.equal(b.z, m.make(k).z) and torch.equal(b.i, m.make(k).i)
        with pytest.raises(RuntimeError):
            p.get(3)
    finally:
        p.close()


@pytest.mark.parametrize("workers", [0, 1])
def test_prefetcher_passes_errors_on(workers):
    def broken(idx):
        raise OSError("disk gone")

    m = BatchMaker(broken, 10, (2, 4, 4), None, 4, 0, 100, False, False, 10, 160, 0.002, 80.0, 7.0, -1.1, 2.0)
    p = Prefetcher(m, 0, 3, torch.device("cpu"), workers=workers)
    try:
        with pytest.raises(OSError, match="disk gone"):
            p.get(0)
    finally:
        p.close()
