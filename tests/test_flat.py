"""ilct.training.flat: parameters as views of one aligned flat buffer, values and state-dict keys unchanged."""

from __future__ import annotations

import copy

import pytest
import torch

from ilct.training import flat


def net() -> torch.nn.Module:
    torch.manual_seed(0)  # odd sizes (5x7, 7, 3): the views need padding to stay aligned
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.GELU(), torch.nn.Linear(7, 3))


def test_layout_golden():
    assert flat.layout([35, 7, 21, 3]) == ([0, 48, 64, 96], 112)
    assert flat.layout([16, 16]) == ([0, 16], 32)
    assert flat.layout([]) == ([], 0)


def test_flatten_keeps_values_keys_and_autograd():
    a = net()
    b = copy.deepcopy(a)
    buf = flat.flatten_(b)
    assert buf.numel() == 112 and buf.dtype == torch.float32
    assert list(a.state_dict()) == list(b.state_dict())
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
        assert isinstance(q, torch.nn.Parameter) and q.requires_grad
        assert q.untyped_storage().data_ptr() == buf.untyped_storage().data_ptr()
        assert q.storage_offset() % flat.ALIGN == 0
    x = torch.randn(4, 5)
    a(x).sum().backward()
    b(x).sum().backward()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p.grad, q.grad)
    gaps = torch.ones(112, dtype=torch.bool)
    for o, p in zip(flat.layout([p.numel() for p in b.parameters()])[0], b.parameters()):
        gaps[o:o + p.numel()] = False
    assert gaps.sum() == 112 - 35 - 7 - 21 - 3 and (buf[gaps] == 0).all()


def test_flat_buffer_finds_the_buffer_only_for_flat_views():
    m = net()
    assert flat.flat_buffer(list(m.parameters())) is None
    assert flat.module_buffer(m) is None
    buf = flat.flatten_(m)
    found = flat.flat_buffer(list(m.parameters()))
    assert found is not None and found.data_ptr() == buf.data_ptr() and found.shape == buf.shape
    assert flat.module_buffer(m).data_ptr() == buf.data_ptr()
    found[0] = 42.0  # the buffer is the weights
    assert m[0].weight[0, 0].item() == 42.0
    params = list(m.parameters())
    assert flat.flat_buffer(params[:1] + params[2:]) is None  # a gap where a tensor is left out
    assert flat.flat_buffer(list(m.parameters())[::-1]) is None
    copied = copy.deepcopy(m)  # a copy is no longer flat, and the cache notices
    assert flat.module_buffer(copied) is None


def test_flatten_refuses_mixed_dtypes_and_empty_modules():
    m = net()
    m[2].to(torch.float64)
    with pytest.raises(ValueError, match="one dtype"):
        flat.flatten_(m)
    with pytest.raises(ValueError, match="no parameters"):
        flat.flatten_(torch.nn.GELU())
