"""One consistency-training loss evaluation (METHOD.md sections 3-4, Pair .. Loss).

    x, z           data latents and (optionally OT-coupled) noise
    i ~ P(i)       level indices, 0..N-2
    student        f(x + sigma_i z, sigma_i)              (gradient flows)
    teacher        sg f(x + sigma_{i+1} z, sigma_{i+1})   (same weights, same dropout masks)
    loss           mean_b lambda_i d(student, teacher)
                   + lambda_diff * mean_{b: i >= floor(0.75 N)} w(sigma_i) mean((student - x)^2)
"""

from __future__ import annotations


import torch

from ilct.objectives.base import LossTerms
from ilct.objectives.consistency.losses import consistency_loss, diffusion_loss, diffusion_mask
from ilct.objectives.consistency.schedule import lambda_weight
from ilct.schema import MethodConfig



def student_teacher(model, x_student, sigma_student, x_teacher, sigma_teacher, labels=None):
    """Both passes with identical dropout (and label-dropout) randomness.

    The RNG state is captured before the teacher's no-grad pass and restored
    before the student's, on the CPU and on the device in use.
    """
    cuda = x_student.is_cuda
    cpu_state = torch.get_rng_state()
    dev_state = torch.cuda.get_rng_state(x_student.device) if cuda else None
    with torch.no_grad():
        # a copy: under CUDA graphs (torch.compile mode reduce-overhead) the output buffer of the
        # no-grad graph may be reused before the loss reads it
        teacher = model(x_teacher, sigma_teacher, labels).clone()
    torch.set_rng_state(cpu_state)
    if cuda:
        torch.cuda.set_rng_state(dev_state, x_student.device)
    student = model(x_student, sigma_student, labels)
    return student, teacher


def consistency_training_loss(
    model,
    x: torch.Tensor,
    z: torch.Tensor,
    i: torch.Tensor,
    sigmas: torch.Tensor,
    N: int,
    c: float,
    method: MethodConfig,  # the metric, the diffusion-loss switch, lambda_diff and its level fraction
    sigma_data: float = 0.5,
    labels: torch.Tensor | None = None,
) -> LossTerms:
    sigma_i, sigma_next = sigmas[i], sigmas[i + 1]  # (B,), sigma_i > sigma_{i+1}
    s_i = sigma_i.reshape(-1, *([1] * (x.ndim - 1)))
    s_next = sigma_next.reshape(-1, *([1] * (x.ndim - 1)))
    student, teacher = student_teacher(model, x + s_i * z, sigma_i, x + s_next * z, sigma_next, labels)
    per_sample = consistency_loss(student, teacher, lambda_weight(sigma_i, sigma_next), method.metric, c)
    cons = per_sample.mean()
    if method.diffusion_loss:
        diff = diffusion_loss(student, x, sigma_i, diffusion_mask(i, N, method.diffusion_fraction), sigma_data)
        loss = cons + method.lambda_diff * diff
    else:
        diff = torch.zeros((), device=x.device)
        loss = cons
    return LossTerms(loss, cons.detach(), diff.detach())
