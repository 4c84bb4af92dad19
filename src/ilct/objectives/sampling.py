"""Sampling pieces every objective shares: classifier-free guidance of a conditional model, and the check of
what a sampling request asks of a run (class labels, a prompt, a guidance weight). Per-sample noise: ilct.seeds.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ilct.errors import IlctError
from ilct.limits import MAX_GUIDANCE
from ilct.nets.embedders import null_condition


def check_request(cfg, labels, has_text: bool, guidance: float) -> None:
    """What a sampling request asks of the run: class labels (one, or one per sample) only from a
    class-conditional run and in 0..K-1; text only from a text-conditional one; a guidance weight >= 0, and
    other than 1 only with a condition. Raises IlctError (for `ilct sample` and `generate` alike)."""
    K, T = cfg.model.num_classes, cfg.model.text_dim
    if labels is not None:
        if K <= 0:
            raise IlctError("class labels (--class) given, but the run is not class-conditional (model.num_classes = 0)")
        y = np.asarray(labels)
        if y.size == 0 or not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= K:
            raise IlctError(f"class labels (--class) must lie in 0..{K - 1}, got {labels}")
    if has_text and T <= 0:
        raise IlctError("a prompt (--prompt) given, but the run is not text-conditional (model.text_dim = 0)")
    if not (math.isfinite(guidance) and 0 <= guidance <= MAX_GUIDANCE):
        raise IlctError(f"the guidance weight (--guidance) must lie in 0..{MAX_GUIDANCE:g}, got {guidance}")
    if guidance != 1.0 and labels is None and not has_text:
        raise IlctError("a guidance weight (--guidance) needs a condition: --class or --prompt")


def guided(model, labels: torch.Tensor, w: float, null_label: int):
    """Classifier-free guidance of a conditional f: x, sigma -> f_u + w (f_c - f_u).

    f_c = f(x, sigma, y), f_u = f(x, sigma, null) (y: class labels, caption embeddings or packed caption conditions,
    whose null is all zeros); w = 1 is the conditional model,
    w = 0 the unconditional one. Both evaluations share one batched forward.
    """
    if w == 1.0:
        return lambda x, sigma, _labels=None: model(x, sigma, labels)
    null = null_condition(labels, null_label)  # the null class, or (caption embeddings) the zero vector

    def f(x: torch.Tensor, sigma: torch.Tensor, _labels=None) -> torch.Tensor:
        if w == 0.0:
            return model(x, sigma, null)
        out = model(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([labels, null]))
        f_c, f_u = out.chunk(2)
        return f_u + w * (f_c - f_u)

    return f
