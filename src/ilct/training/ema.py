"""The EMA of the weights that sampling reads: the constant one and EDM2's power-function EMA, with its snapshots
and the post-hoc reconstruction of any EMA length after training.

train.ema=constant:  theta_ema <- beta theta_ema + (1 - beta) theta,  beta = train.ema_decay (iCT's 0.9999).

train.ema=power (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models",
section 3.1 and appendix C): after step t the EMA is the average of the weights theta_1..theta_t weighted by the
power function p(tau) = (gamma + 1) tau^gamma / t^(gamma + 1) (the weight of step u is the integral of p over
[u - 1, u]), which the update

    beta_t = (1 - 1/t)^(gamma + 1)                                   (eq. 127; t = 1 copies the weights)

keeps exactly. Its width is the relative std sigma_rel of p, a fraction of the training time t:

    sigma_rel = sqrt(gamma + 1) / ((gamma + 2) sqrt(gamma + 3))       (eq. 123)

and gamma of sigma_rel is the largest real root of
gamma^3 + 7 gamma^2 + (16 - sigma_rel^-2) gamma + (12 - sigma_rel^-2) = 0 (eq. 126). Time t counts optimizer
steps from 1; EDM2 counts images (t = k B after step k with batch B), which at a fixed batch size gives the same
beta_t. A run tracks a few profiles (train.ema_stds, EDM2's 0.05 and 0.10); the first is the checkpoints'
`ema.safetensors`. Snapshots of every profile, saved every train.ema_snapshot_every steps into RUN/ema_snapshots/,
let `posthoc_ema` build the EMA of any sigma_rel after training: the least-squares combination of the snapshots'
profiles that is closest (in L2 over tau) to the wanted profile at the newest snapshot (appendix C.2, Algorithm 3).

The maths functions are pure (float64 numpy); `save_snapshots`, `list_snapshots` and `posthoc_ema` read and write
the run folder.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ilct.errors import IlctError
from ilct.io.files import read_tensors, save_tensors
from ilct.runs.folder import EMA_SNAPSHOTS_DIR
from ilct.schema import SIGMA_REL_MAX, Config  # SIGMA_REL_MAX = 1/sqrt(12): gamma = 0, the plain average of every step

# --------------------------------------------------------------------------- the maths (pure)


def exp_to_std(gamma: float | np.ndarray) -> float | np.ndarray:
    """sigma_rel of the power-function profile of exponent gamma (eq. 123)."""
    gamma = np.float64(gamma)
    return np.sqrt(gamma + 1) / ((gamma + 2) * np.sqrt(gamma + 3))


@functools.lru_cache(maxsize=256)
def _std_to_exp(sigma_rel: float) -> float:
    s = sigma_rel ** -2
    roots = np.roots([1.0, 7.0, 16.0 - s, 12.0 - s])  # eq. 126
    return float(roots[np.abs(roots.imag) < 1e-9].real.max())


def std_to_exp(sigma_rel: float | np.ndarray) -> float | np.ndarray:
    """The exponent gamma of relative std sigma_rel: the largest real root of eq. 126 (Algorithm 2)."""
    if np.ndim(sigma_rel) == 0:
        return _std_to_exp(float(sigma_rel))
    std = np.asarray(sigma_rel, dtype=np.float64)
    return np.array([_std_to_exp(float(s)) for s in std.ravel()]).reshape(std.shape)


def power_beta(sigma_rel: float, t: int) -> float:
    """beta_t of the power-function EMA after step t (counted from 1): (1 - 1/t)^(gamma + 1) (eq. 127)."""
    return (1.0 - 1.0 / t) ** (std_to_exp(sigma_rel) + 1.0)


def correlation(a_t, a_std, b_t, b_std) -> np.ndarray:
    """<p_a, p_b>: the integral over tau of two power-function profiles, p_a ending at time a_t with relative
    std a_std (and p_b). Both are zero after their end, so the integral runs to t_min = min(a_t, b_t); with
    t_max the later end and gamma_late its profile's exponent (eq. 151):

        (gamma_a + 1)(gamma_b + 1) / ((gamma_a + gamma_b + 1) t_max) * (t_min / t_max)^gamma_late
    """
    a_t, b_t = np.float64(a_t), np.float64(b_t)
    ga, gb = std_to_exp(a_std), std_to_exp(b_std)
    t_min, t_max = np.minimum(a_t, b_t), np.maximum(a_t, b_t)
    gamma_late = np.where(a_t < b_t, gb, ga)
    return (ga + 1) * (gb + 1) / ((ga + gb + 1) * t_max) * (t_min / t_max) ** gamma_late


def solve_coefficients(in_t: Sequence[float], in_std: Sequence[float], out_t: float,
                       out_std: Sequence[float]) -> np.ndarray:
    """(inputs, outputs) coefficients x: the profile sum_i x_i p_i of the input snapshots (their times and
    stds) closest in L2 to each wanted profile (out_t, out_std): the normal equations A x = b with
    A_ij = <p_i, p_j>, b_i = <p_i, p_out> (Algorithm 3); each column then sums to 1 (the weights' average)."""
    in_t, in_std = np.float64(in_t).reshape(-1, 1), np.float64(in_std).reshape(-1, 1)
    out_std = np.float64(out_std).reshape(1, -1)
    A = correlation(in_t, in_std, in_t.T, in_std.T)
    b = correlation(in_t, in_std, np.full_like(out_std, out_t), out_std)
    x = np.linalg.solve(A, b)
    return x / x.sum(axis=0, keepdims=True)


def check_sigma_rel(sigma_rel: float, what: str = "sigma_rel") -> None:
    """IlctError unless sigma_rel is a relative std a power-function EMA has: in (0, 1/sqrt(12)]."""
    if not (isinstance(sigma_rel, (int, float)) and 0 < sigma_rel <= SIGMA_REL_MAX):
        raise IlctError(f"{what} must be in (0, 1/sqrt(12) = {SIGMA_REL_MAX:.6f}] (a power-function EMA's relative "
                        f"std; 1/sqrt(12) is the plain average of every step), got {sigma_rel!r}")


# --------------------------------------------------------------------------- checkpoints and snapshots


def checkpoint_record(cfg: Config) -> dict[str, list[float]]:
    """What a checkpoint's state.json records of the EMA: train.ema=power, its profiles' stds (the first is
    ema.safetensors, the others ema_profiles.safetensors: ilct.runs.checkpoint); nothing for the constant EMA."""
    return {"ema_stds": list(cfg.train.ema_stds)} if cfg.train.ema == "power" else {}


SNAPSHOT = re.compile(r"^step_(\d{9})_std_(\d+(?:\.\d+)?(?:e-?\d+)?)\.safetensors$")


def snapshot_name(step: int, sigma_rel: float) -> str:
    """step_000001000_std_0.05.safetensors: the step and sigma_rel as written in the config (repr of the float)."""
    return f"step_{step:09d}_std_{float(sigma_rel)!r}.safetensors"


def save_snapshots(run_dir: Path, step: int, profiles: Sequence[torch.nn.Module | dict[str, torch.Tensor]],
                   stds: Sequence[float]) -> None:
    """Every profile's weights at `step` (modules, or their state dicts: a sharded run's gathered ones) into
    RUN/ema_snapshots/, one file each, written atomically (never rotated: post-hoc reconstruction needs them all).
    The step and sigma_rel are also in each file's metadata."""
    folder = run_dir / EMA_SNAPSHOTS_DIR
    try:
        for module, std in zip(profiles, stds, strict=True):
            state = module if isinstance(module, dict) else module.state_dict()
            save_tensors(state, folder / snapshot_name(step, std),
                         metadata={"step": str(step), "sigma_rel": repr(float(std))})
    except OSError as e:
        raise IlctError(f"cannot write an EMA snapshot into {folder}: {e.strerror or e}") from None


def list_snapshots(run_dir: Path) -> list[tuple[int, float, Path]]:
    """(step, sigma_rel, file) of the run's EMA snapshots (files of the run's own, links left out), by step."""
    folder = Path(run_dir) / EMA_SNAPSHOTS_DIR
    if not folder.is_dir() or folder.is_symlink():
        return []
    found = []
    for p in folder.iterdir():
        m = SNAPSHOT.match(p.name)
        if m and p.is_file() and not p.is_symlink() and int(m.group(1)) > 0:
            found.append((int(m.group(1)), float(m.group(2)), p))
    return sorted(found, key=lambda s: (s[0], s[1]))


def posthoc_ema(run_dir: str | Path, sigma_rel: float) -> dict[str, torch.Tensor]:
    """The power-function EMA of relative std `sigma_rel` at the run's newest snapshot, synthesized from every
    snapshot of its profiles (solve_coefficients): a state dict with the keys of the checkpoints' ema.safetensors.
    Tensors that are the same in every snapshot (buffers) are copied. IlctError for a run without snapshots,
    a sigma_rel out of range, or snapshots that do not fit together or hold values that are not finite."""
    run_dir = Path(run_dir)
    check_sigma_rel(sigma_rel, "the EMA's sigma_rel")
    snaps = list_snapshots(run_dir)
    if not snaps:
        raise IlctError(f"{run_dir} holds no EMA snapshots ({EMA_SNAPSHOTS_DIR}/): a post-hoc EMA needs a run "
                        "trained with train.ema=power")
    steps, stds = [s for s, _, _ in snaps], [std for _, std, _ in snaps]
    for _, std, path in snaps:
        check_sigma_rel(std, f"{path}: its sigma_rel")
    try:
        coef = solve_coefficients(steps, stds, steps[-1], [sigma_rel])[:, 0]
    except np.linalg.LinAlgError:
        raise IlctError(f"{run_dir / EMA_SNAPSHOTS_DIR}: the snapshots' profiles are not independent "
                        "(two of the same step and sigma_rel?)") from None
    total: dict[str, torch.Tensor] = {}  # float64 sums
    base: dict[str, torch.Tensor] | None = None
    varies: set[str] = set()
    for (_, _, path), c in zip(snaps, coef):
        state = read_tensors(path)
        if base is None:
            base = state
        elif state.keys() != base.keys() or any(v.shape != base[k].shape for k, v in state.items()):
            raise IlctError(f"{path} does not fit the run's other snapshots (other weight names or shapes)")
        else:
            varies |= {k for k, v in state.items() if not torch.equal(v, base[k])}
        for k, v in state.items():
            if v.is_floating_point():
                total[k] = total.get(k, 0.0) + float(c) * v.double()
    out = {k: (total[k].to(v.dtype) if k in varies and v.is_floating_point() else v.clone()) for k, v in state.items()}
    bad = next((k for k, v in out.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise IlctError(f"{run_dir / EMA_SNAPSHOTS_DIR}: the post-hoc EMA's '{bad}' is not finite (a damaged snapshot?)")
    return out
