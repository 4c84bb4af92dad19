"""The EMA update (ilct.training.step.ema_update) and the trainables ilct train builds (ilct.training.build.build_student)."""

from __future__ import annotations

import copy

import pytest
import torch

from ilct.training import flat
from ilct.config import load_config
from ilct.models import make_ema
from ilct.training.build import build_student as make_student
from ilct.training.step import ema_update


def pair(flat_: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.GELU(), torch.nn.Linear(7, 3))
    if flat_:
        flat.flatten_(model)
    ema = make_ema(model)
    if flat_:
        flat.flatten_(ema)
    with torch.no_grad():
        for p in ema.parameters():
            p.fill_(1.0)
        for i, p in enumerate(model.parameters()):
            p.fill_(3.0 + i)
    return model, ema


@pytest.mark.parametrize("flat_", [False, True])
def test_ema_golden_values_and_a_skipped_step(flat_):
    model, ema = pair(flat_)
    assert (flat.module_buffer(ema) is not None) == flat_
    ema_update(ema, model, 0.75)  # ema + (1 - 0.75) (theta - ema) = 1 + 0.25 (3 + i - 1)
    for i, p in enumerate(ema.parameters()):
        torch.testing.assert_close(p, torch.full_like(p, 1.0 + 0.25 * (2.0 + i)), rtol=0, atol=1e-6)
    before = copy.deepcopy(ema.state_dict())
    ema_update(ema, model, 0.75, keep=torch.zeros(()))
    for k, v in ema.state_dict().items():
        assert torch.equal(v, before[k]), k
    ema_update(ema, model, 0.75, keep=torch.ones(()))
    for i, p in enumerate(ema.parameters()):
        expected = 1.0 + 0.25 * (2.0 + i)
        torch.testing.assert_close(p, torch.full_like(p, expected + 0.25 * (3.0 + i - expected)), rtol=0, atol=1e-6)
    if flat_:  # the gaps between the flat views stay zero
        buf = flat.module_buffer(ema)
        assert (buf != 0).sum() == sum(p.numel() for p in ema.parameters())


@pytest.mark.parametrize("fused", [False, True])
def test_make_student_flattens_weights_only_with_fused_optimizer(fused):
    cfg = load_config("fmnist-ilct", ["model.arch=DiT-T/4", f"train.fused_optimizer={str(fused).lower()}"])
    cfg.model.in_channels, cfg.model.input_size = 4, 8
    model, ema, opt = make_student(cfg, torch.device("cpu"))
    assert model.training and not ema.training
    assert (flat.module_buffer(model) is not None) == fused
    assert (flat.module_buffer(ema) is not None) == fused
    assert not any(p.requires_grad for p in ema.parameters())
    for p, q in zip(model.parameters(), ema.parameters()):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()
    assert opt.param_groups[0]["lr"] == cfg.train.lr
