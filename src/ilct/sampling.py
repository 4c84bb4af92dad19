"""One-step and multistep consistency sampling (METHOD.md section 5).

Noise is drawn per sample from its own generator, seeded by (seed, index), so
the same seed gives the same images whatever the batch size.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ilct.consistency.schedule import karras_sigmas
from ilct.limits import MAX_GUIDANCE
from ilct.nets.embedders import null_condition, text_condition_shape

# The 2-step tau: the authors' value, index 22 of a 40-level Karras grid (1.382 for sigma in [0.002, 80]).
# Measured on the fmnist presets' ADM-T (the demo sweep's fifth round, docs/stability.md): val FID 850 at
# 1.382 and 858 at 2.0 against 1,065 at 0.2. With DiT-T/2 0.2 had scored best by less (1,782 against 1,844,
# docs/results.md) and was the default from 2026-11-29 to 2026-11-30; `--tau 0.2` gives it.
TWO_STEP_GRID, TWO_STEP_INDEX = 40, 22


def default_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> list[float]:
    """The sigmas f is evaluated at: [sigma_max] for 1 step, [sigma_max, tau] for 2 steps
    (tau: the authors' value, index 22 of a 40-level Karras grid over [sigma_min, sigma_max]),
    and for more steps the interior points of a Karras grid with steps + 1 levels."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if steps == 1:
        return [sigma_max]
    if steps == 2:
        return [sigma_max, float(karras_sigmas(TWO_STEP_GRID, sigma_min, sigma_max, rho)[TWO_STEP_INDEX])]
    return [float(s) for s in karras_sigmas(steps + 1, sigma_min, sigma_max, rho)[:-1]]


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit seed for sample `index` of a draw with base `seed`."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def check_request(cfg, labels, has_text: bool, guidance: float) -> None:
    """What a sampling request asks of the run: class labels (one, or one per sample) only from a
    class-conditional run and in 0..K-1; text only from a text-conditional one; a guidance weight >= 0, and
    other than 1 only with a condition. Raises IlctError (for `ilct sample` and `generate` alike)."""
    from ilct.errors import IlctError

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


def per_sample_noise(seed: int, indices: range | list[int], shape: tuple[int, ...], draws: int) -> list[torch.Tensor]:
    """draws x (B, *shape) standard normal tensors; sample j's come from its own generator."""
    per = []
    for j in indices:
        g = torch.Generator().manual_seed(sample_seed(seed, j))
        per.append(torch.randn((draws, *shape), generator=g))
    stacked = torch.stack(per, dim=1)  # (draws, B, *shape)
    return list(stacked.unbind(0))


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


@torch.no_grad()
def consistency_sample(model, noise: list[torch.Tensor], sigmas: list[float], sigma_min: float = 0.002, labels=None,
                       device: torch.device | None = None) -> torch.Tensor:
    """Algorithm 1 of the consistency-model paper.

        x = sigma_0 z_0;                    x0 = f(x, sigma_0)
        for each further tau:  x = x0 + sqrt(tau^2 - sigma_min^2) z_k;  x0 = f(x, tau)
    """
    if len(noise) < len(sigmas):
        raise ValueError("need one noise draw per evaluation")
    for a, b in zip(sigmas[:-1], sigmas[1:]):
        if not b < a:
            raise ValueError(f"sigmas must decrease, got {sigmas}")
    if sigmas[-1] <= sigma_min:
        raise ValueError(f"intermediate sigmas must exceed sigma_min={sigma_min}")
    device = device if device is not None else next(model.parameters()).device
    B = noise[0].shape[0]
    x = sigmas[0] * noise[0].to(device)
    x0 = model(x, torch.full((B,), sigmas[0], device=device), labels)
    for k, tau in enumerate(sigmas[1:], start=1):
        x = x0 + math.sqrt(tau**2 - sigma_min**2) * noise[k].to(device)
        x0 = model(x, torch.full((B,), tau, device=device), labels)
    return x0


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
    autoencoder takes clips, ilct.run.run_autoencoder); sample j depends only on (seed, j).

    For a class-conditional model, `labels` (one class for all, or one per sample)
    with classifier-free guidance weight `guidance`; None draws unconditionally (the null class).
    For a text-conditional one, `text`: caption conditions (ilct.text.TextEncoder.condition: pooled
    embeddings, or packed with their tokens when model.text_tokens > 0), one for all samples or one per
    sample, with the same guidance; None draws unconditionally (the null caption).
    """
    from tqdm import tqdm

    from ilct.data.images import to_uint8

    from ilct.config import latent_shape
    from ilct.objectives import make_objective

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
