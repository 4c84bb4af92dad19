"""`generate`: decoded samples of a model, images (n, H, W, C) or clips (n, T, H, W, C) as uint8, in batches.

The objective samples normalized latents (its own sampler, conditioned through its own guidance); the run's
statistics undo the normalization and the autoencoder decodes. Sample j depends only on (seed, j).
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from ilct.schema import latent_shape
from ilct.data.images import to_uint8
from ilct.nets.embedders import text_condition_shape
from ilct.objectives import make_objective
from ilct.objectives.sampling import check_request


@torch.no_grad()
def generate(
    model,
    autoencoder,
    stats,
    cfg,
    n: int,
    steps: int = 1,
    seed: int = 0,
    batch_size: int = 256,
    sigmas: list[float] | None = None,
    progress: bool = False,
    labels: np.ndarray | list[int] | int | None = None,
    guidance: float = 1.0,
    text: torch.Tensor | None = None,
) -> np.ndarray:
    """n decoded samples as uint8 (n, H, W, C), or clips (n, T, H, W, C) for a clip run (model.frames > 0; the
    autoencoder takes clips, ilct.models.run_autoencoder); sample j depends only on (seed, j).

    For a class-conditional model, `labels` (one class for all, or one per sample)
    with classifier-free guidance weight `guidance`; None draws unconditionally (the null class).
    For a text-conditional one, `text`: caption conditions (ilct.nets.text.TextEncoder.condition: pooled
    embeddings, or packed with their tokens when model.text_tokens > 0), one for all samples or one per
    sample, with the same guidance; None draws unconditionally (the null caption).
    """
    cons = cfg.consistency
    objective = make_objective(cfg)  # how `steps` (and `sigmas`) are sampled: consistency steps, Heun steps, ...
    shape = latent_shape(cfg)  # (C, H, W), or (C, T, H, W) for clips
    device = next(model.parameters()).device
    check_request(cfg, labels, text is not None, guidance)
    K, T = cfg.model.num_classes, cfg.model.text_dim
    if K > 0:  # the null class K draws unconditionally
        y_all = np.full(n, K, dtype=np.int64) if labels is None else np.array(np.broadcast_to(np.asarray(labels, np.int64), (n,)))
    if T > 0:
        cond = text_condition_shape(T, cfg.model.text_tokens)  # (T,), or (1 + L, T + 1) with the caption's tokens
        e = torch.zeros(1, *cond) if text is None else torch.as_tensor(text, dtype=torch.float32).reshape(-1, *cond)
        if e.shape[0] not in (1, n):
            raise ValueError(f"text: one embedding or one per sample ({n}), got {e.shape[0]}")
        e_all = e.expand(n, *cond)
    out = []
    for start in tqdm(range(0, n, batch_size), desc=f"sample {steps}-step", disable=not progress, dynamic_ncols=True):
        idx = range(start, min(start + batch_size, n))
        f = model
        if K > 0:
            y = torch.from_numpy(np.ascontiguousarray(y_all[start:start + len(idx)])).to(device)
            f = objective.condition(model, y, guidance if labels is not None else 1.0, K)
        elif T > 0:
            y = e_all[start:start + len(idx)].contiguous().to(device)
            f = objective.condition(model, y, guidance if text is not None else 1.0, 0)
        x0 = objective.sample(f, seed, idx, shape, steps, sigmas, device)  # generated, normalized latents
        out.append(to_uint8(autoencoder.decode(stats.denormalize(x0, cons.sigma_data).to(device))))
    return np.concatenate(out)
