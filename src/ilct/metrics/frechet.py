"""Frechet distance between Gaussians fitted to features (FID when the features are Inception's).

d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64, with the standard
matrix square root (scipy.linalg.sqrtm), an eps offset when the product is
singular, and a check that the imaginary part is numerical noise.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64, unbiased) of (N, D) features."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features, got {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _sqrtm(m: np.ndarray) -> np.ndarray:
    """The principal matrix square root; SciPy >= 1.16 dropped sqrtm's `disp` (and its tuple result)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a singular product is handled by the caller's offset
        out = linalg.sqrtm(m)
    return out[0] if isinstance(out, tuple) else out


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError("mean and covariance shapes differ")
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag)):.3g} in the matrix square root")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))
