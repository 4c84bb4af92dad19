"""Latent outlier analysis (the paper's Figure 1 and METHOD.md section 2).

Statistics of a set of values: the fractions beyond Tukey's inner fences
(Q1 - 1.5 IQR, Q3 + 1.5 IQR) and outer fences (3 IQR), the excess kurtosis
(0 for a Gaussian), and the largest value in standard deviations. They are
computed per channel and for all channels pooled, under two normalizations:
per channel (a global affine map per channel, which is how a pixel-space model
sees pixels; the paper's Figure 1 box plots) and per element (C x H x W, the
normalization ilct's training applies to latents). Per-element normalization
of pixels is dominated by near-constant background pixels (a rare non-zero
value at a border position becomes dozens of standard deviations), so compare
pixels per channel. Also: the temporal-difference residuals of a trained run at a
chosen number of levels N. `analyze_latents` puts them together for a latent directory
(`ilct analyze`): a JSON report and a box plot.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from ilct.data import load_dataset
from ilct.data.clips import subset
from ilct.errors import IlctError
from ilct.io.files import write_text
from ilct.objectives.consistency.loss import student_teacher
from ilct.objectives.consistency.losses import consistency_loss, diffusion_loss, diffusion_mask, squared_residual
from ilct.objectives.consistency.schedule import karras_sigmas, lambda_weight, level_probabilities, sample_levels


def tukey_fractions(values: np.ndarray) -> dict[str, float]:
    """Fractions of values beyond the inner (1.5 IQR) and outer (3 IQR) fences."""
    v = np.asarray(values, np.float64).ravel()
    q1, q3 = np.percentile(v, [25, 75])
    iqr = q3 - q1
    inner = np.mean((v < q1 - 1.5 * iqr) | (v > q3 + 1.5 * iqr))
    outer = np.mean((v < q1 - 3.0 * iqr) | (v > q3 + 3.0 * iqr))
    return {"q1": float(q1), "q3": float(q3), "beyond_inner": float(inner), "beyond_outer": float(outer)}


def excess_kurtosis(values: np.ndarray) -> float:
    """E[(x - mu)^4] / sigma^4 - 3 (0 for a Gaussian, 3 for a Laplace distribution)."""
    v = np.asarray(values, np.float64).ravel()
    d = v - v.mean()
    var = np.mean(d * d)
    if var == 0:
        return 0.0
    return float(np.mean(d**4) / var**2 - 3.0)


def summarize(values: np.ndarray) -> dict[str, float]:
    v = np.asarray(values, np.float64).ravel()
    std = v.std()
    return {
        **tukey_fractions(v),
        "excess_kurtosis": excess_kurtosis(v),
        "max_abs_in_std": float(np.abs(v - v.mean()).max() / std) if std > 0 else 0.0,
        "count": int(v.size),
    }


def normalize(x: np.ndarray, mode: str) -> np.ndarray:
    """(x - mean) / std with statistics per element (over samples, as ilct normalizes latents)
    or per channel (over samples and positions: (H, W), or (T, H, W) for clips)."""
    x = np.asarray(x, np.float64)
    axes = (0,) if mode == "element" else (0, *range(2, x.ndim))
    std = x.std(axes, keepdims=True)
    return (x - x.mean(axes, keepdims=True)) / np.where(std > 0, std, 1.0)


def channel_report(x: np.ndarray) -> dict:
    """x: (N, C, H, W), or clips (N, C, T, H, W). Statistics pooled and per channel, under both normalizations."""
    out: dict = {"shape": list(x.shape[1:])}
    for mode in ("channel", "element"):
        z = normalize(x, mode)
        out[f"per_{mode}"] = {"all": summarize(z), "channels": [summarize(z[:, c]) for c in range(z.shape[1])]}
    return out


def box_plot(reports: dict[str, np.ndarray], path: str | Path, title: str = "") -> None:
    """Per-channel box plots after per-channel normalization (whiskers at 1.5 IQR, outliers drawn),
    one panel per named array."""
    try:  # optional: pip install 'ilct[analysis]'
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise IlctError("figures need matplotlib: pip install 'ilct[analysis]'") from None
    fig, axes = plt.subplots(1, len(reports), figsize=(5 * len(reports), 3.6), squeeze=False)
    for ax, (name, x) in zip(axes[0], reports.items()):
        z = normalize(x, "channel")
        C = z.shape[1]
        sel = np.linspace(0, C - 1, min(C, 16)).round().astype(int)  # at most 16 boxes per panel
        data = [z[:, c].ravel()[:: max(1, z[:, c].size // 20000)] for c in sel]
        ax.boxplot(data, whis=1.5, flierprops={"markersize": 1.5, "alpha": 0.3})
        ax.set_xticks(range(1, len(sel) + 1), [str(c) for c in sel], fontsize=7)
        ax.set_xlabel("channel")
        ax.set_ylabel("normalized value (std units)")
        ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)  # written aside, then renamed: an existing figure is replaced atomically
    os.replace(tmp, path)
    plt.close(fig)


@torch.no_grad()
def td_residuals(run, latents: torch.Tensor, N: int, n: int = 512, seed: int = 0) -> dict:
    """Temporal-difference residuals f(x + sigma_i z, sigma_i) - f(x + sigma_{i+1} z, sigma_{i+1})
    of a run's EMA model at N levels, levels drawn as in training. `rms_per_sample` gives the quartiles of
    sqrt(r), r the per-sample mean of the squared residual: the scale to hold against the metric's c."""
    cons = run.cfg.consistency
    g = torch.Generator().manual_seed(seed)
    device = next(run.model.parameters()).device
    idx = torch.randint(0, latents.shape[0], (n,), generator=g)
    x = run.stats.normalize(latents[idx], cons.sigma_data).to(device)
    z = torch.randn(x.shape, generator=g).to(device)
    sigmas = karras_sigmas(N, cons.sigma_min, cons.sigma_max, cons.rho)
    i = sample_levels(level_probabilities(sigmas, cons.p_mean, cons.p_std).float(), n, g)
    s = sigmas.float().to(device)
    si, sn = s[i], s[i + 1]
    view = (-1, *[1] * (x.ndim - 1))  # (n, C, [T,] H, W)
    d = run.model(x + si.view(view) * z, si) - run.model(x + sn.view(view) * z, sn)
    r = d.pow(2).flatten(1).mean(1)  # the metric's r (ilct.objectives.consistency.losses): per-sample mean of d^2
    rms = r.sqrt().double().cpu().numpy()  # sqrt(r), the scale the metric's c is set against
    q1, med, q3 = np.percentile(rms, [25, 50, 75])
    return {"N": N, "samples": n, "residual": summarize(d.cpu().numpy()),
            "r_per_sample": summarize(r.cpu().numpy()),
            "rms_per_sample": {"q1": float(q1), "median": float(med), "q3": float(q3), "mean": float(rms.mean())}}


def write_report(report: dict, path: str | Path) -> None:
    write_text(path, json.dumps(report, indent=2))  # atomic


def _pixels(lat, idx: np.ndarray) -> np.ndarray | None:
    """The images (or clips) behind the latents at `idx`, read from the dataset the latent directory records
    (flipped copies, whose indices run past the end, are left out); None when it records none."""
    spec = dict(lat.meta.get("data") or {})
    if not spec:
        return None
    limit = spec.pop("limit", None)
    data = load_dataset(**spec)
    data = subset(data, limit) if limit else data
    return data.batch_indices(idx[idx < len(data)]).numpy()


def analyze_latents(lat, n: int, seed: int, out: Path, name: str, pixels: bool = True, run=None,
                    levels: tuple[int, ...] | list[int] = (), made_by: dict | None = None) -> dict:
    """Outlier statistics of n latents of the latent directory `lat` (ilct.latents.LatentDir) drawn without
    replacement (seed), of their pixels when `pixels` and the directory records its dataset, and, given a
    trained `run` (ilct.runs.opened.open_run) of the same autoencoder, its TD residuals at each N in `levels`.
    Writes the report (led by `made_by`: the command, machine and date) to out/NAME.json and the box plots to
    out/NAME_boxplot.png; returns the report."""
    n = min(n, len(lat))
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(lat), n, replace=False))
    latents = lat.gather(idx)
    arrays = {"latents": latents.numpy()}
    report: dict = {**(made_by or {}), "latents": str(lat.path), "autoencoder": lat.meta.get("autoencoder"), "dataset": lat.meta["dataset"],
                    "n": n, "latent": channel_report(arrays["latents"])}
    values = _pixels(lat, idx) if pixels else None
    if values is not None:
        arrays["pixels"] = values
        report["pixel"] = channel_report(values)
    if run is not None:
        lat.check_autoencoder(run.autoencoder)
        report["td"] = [td_residuals(run, latents, N, n=min(512, n), seed=seed) for N in levels]
    write_report(report, Path(out) / f"{name}.json")
    box_plot({f"{k} ({name})": v for k, v in (("pixels", arrays.get("pixels")), ("latents", arrays["latents"])) if v is not None},
             Path(out) / f"{name}_boxplot.png", title=f"{lat.meta.get('autoencoder', '')} on {lat.meta['dataset']}")
    return report


def level_gradients(model, cfg, x: torch.Tensor, z: torch.Tensor, N: int, c: float, metric: str) -> list[dict]:
    """Where the gradient of a consistency-training step comes from, level by level, at N levels: for every
    level i, the norm of the parameter gradient of the batch-mean consistency term lambda_i d(student, sg
    teacher) with `metric` and `c`, and of lambda_diff x the diffusion term where technique 2 selects i, all
    on the same (normalized) latents x and noise z. Multiplied by P(i) it is level i's expected share of a
    training step's gradient (as norms, not vectors). `model` is the student (the trained weights, not the EMA)."""
    cons, method = cfg.consistency, cfg.method
    sigmas = karras_sigmas(N, cons.sigma_min, cons.sigma_max, cons.rho)
    probs = level_probabilities(sigmas, cons.p_mean, cons.p_std)
    params = [p for p in model.parameters() if p.requires_grad]
    view = (-1, *[1] * (x.ndim - 1))
    rows = []
    for i in range(N - 1):
        si = torch.full((x.shape[0],), float(sigmas[i]), device=x.device)
        sn = torch.full((x.shape[0],), float(sigmas[i + 1]), device=x.device)
        student, teacher = student_teacher(model, x + si.view(view) * z, si, x + sn.view(view) * z, sn)
        r = squared_residual(student.detach(), teacher)
        lam = lambda_weight(si, sn)
        terms = {"consistency": consistency_loss(student, teacher, lam, metric, c).mean()}
        mask = diffusion_mask(torch.full((x.shape[0],), i), N, method.diffusion_fraction)
        if method.diffusion_loss and bool(mask.all()):
            terms["diffusion"] = method.lambda_diff * diffusion_loss(student, x, si, mask.to(x.device), cons.sigma_data)
        row = {"i": i, "sigma": float(sigmas[i]), "p": float(probs[i]), "lambda": float(lam[0]),
               "sqrt_r_median": float(r.sqrt().median())}
        for k, (name, term) in enumerate(terms.items()):
            grads = torch.autograd.grad(term, params, retain_graph=k + 1 < len(terms), allow_unused=True)
            row[f"grad_{name}"] = float(torch.sqrt(sum(g.pow(2).sum() for g in grads if g is not None)))
        row.setdefault("grad_diffusion", 0.0)
        rows.append(row)
    return rows


def gradient_shares(rows: list[dict], fraction: float = 0.75) -> dict:
    """Summary of level_gradients: each term's expected norm sum_i P(i) |g_i|, and the share of the consistency
    term's that comes from the finest levels (i >= floor(fraction x N), the lowest sigmas)."""
    N = len(rows) + 1
    finest = [r for r in rows if r["i"] >= math.floor(fraction * N)]
    total = {k: sum(r["p"] * r[f"grad_{k}"] for r in rows) for k in ("consistency", "diffusion")}
    fine = sum(r["p"] * r["grad_consistency"] for r in finest)
    return {"N": N, "expected_grad": total, "finest_fraction": fraction,
            "finest_share_of_consistency": fine / total["consistency"] if total["consistency"] else 0.0,
            "finest_probability": sum(r["p"] for r in finest)}
