"""Exact OT coupling (METHOD.md section 4, technique 3), against brute force and scipy's contract."""

import itertools

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ilct.objectives.consistency.coupling import ot_cost, ot_couple, ot_permutation


def total_cost(x, z, perm):
    return ot_cost(x, z)[torch.arange(len(x)), perm].sum().item()


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=1, max_value=24), st.integers(min_value=0, max_value=10_000))
def test_permutation_not_worse_than_identity(b, seed):
    g = torch.Generator().manual_seed(seed)
    x, z = torch.randn(b, 3, 2, 2, generator=g), torch.randn(b, 3, 2, 2, generator=g)
    perm = ot_permutation(x, z)
    assert sorted(perm.tolist()) == list(range(b))  # a permutation
    assert total_cost(x, z, perm) <= total_cost(x, z, torch.arange(b)) + 1e-4


def test_matches_brute_force_optimum():
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        x, z = torch.randn(6, 2, 2, 2, generator=g), torch.randn(6, 2, 2, 2, generator=g)
        best = min(total_cost(x, z, torch.tensor(p)) for p in itertools.permutations(range(6)))
        assert abs(total_cost(x, z, ot_permutation(x, z)) - best) < 1e-4


def test_couple_reorders_noise_only():
    x = torch.tensor([[0.0], [10.0], [20.0]]).view(3, 1, 1, 1)
    z = torch.tensor([[19.0], [1.0], [11.0]]).view(3, 1, 1, 1)
    assert ot_couple(x, z).flatten().tolist() == [1.0, 11.0, 19.0]
