"""The assembled loss: teacher/student pairing, shared dropout, technique switches."""

import torch

from ilct.config import MethodConfig
from ilct.objectives.consistency.loss import consistency_training_loss, student_teacher
from ilct.objectives.consistency.precond import ConsistencyModel
from ilct.objectives.consistency.schedule import karras_sigmas
from ilct.nets.dit import build_dit


def make_model(dropout=0.5):
    torch.manual_seed(0)
    net = build_dit("DiT-T/4", 8, 4, dropout=dropout)
    for p in net.parameters():  # leave adaLN-Zero so dropout shows in the output
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.05)
    return ConsistencyModel(net).train()


def test_student_and_teacher_share_dropout_masks():
    model = make_model(0.5)
    x = torch.randn(4, 4, 8, 8)
    s = torch.full((4,), 1.0)
    student, teacher = student_teacher(model, x, s, x, s)
    assert torch.equal(student.detach(), teacher)  # same input + same masks -> same output
    a = model(x, s)
    b = model(x, s)
    assert not torch.equal(a, b)  # and dropout really is random between calls
    assert student.requires_grad and not teacher.requires_grad


def test_loss_terms_and_switches():
    model = make_model(0.0)
    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(16, 4, 8, 8, generator=g) * 0.5, torch.randn(16, 4, 8, 8, generator=g)
    sig = karras_sigmas(11).float()
    i = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 8, 7, 6, 5, 4])
    off = consistency_training_loss(model, x, z, i, sig, 11, 0.00864, MethodConfig("pseudo_huber", diffusion_loss=False))
    assert off.diffusion.item() == 0.0 and torch.isfinite(off.loss)
    on = consistency_training_loss(model, x, z, i, sig, 11, 0.00864, MethodConfig("pseudo_huber", diffusion_loss=True))
    assert on.diffusion.item() > 0
    assert abs(on.loss.item() - (off.consistency.item() + 5.0 * on.diffusion.item())) < 1e-5
    on.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.dim() > 1)
