"""Frechet distance against closed forms, precision/recall on constructed point sets, extractors."""

import numpy as np
import pytest
import torch
from scipy import linalg

from ilct.errors import IlctError
from ilct.metrics.features import FashionClassifier, FashionFeatures, TorchScriptFeatures, to_gray32
from ilct.metrics.frechet import feature_stats, frechet_distance
from ilct.metrics.precision_recall import knn_radii, precision_recall


def test_frechet_closed_form_diagonal():
    # commuting (diagonal) covariances: d^2 = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 16.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expect = 1 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 4) ** 2
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expect, rel=1e-10)


def test_frechet_general_and_symmetric():
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((5, 5)), rng.standard_normal((5, 5))
    s1, s2 = A @ A.T + np.eye(5), B @ B.T + 0.5 * np.eye(5)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    r1 = linalg.sqrtm(s1).real
    expect = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(r1 @ s2 @ r1).real)
    d = frechet_distance(mu1, s1, mu2, s2)
    assert d == pytest.approx(expect, rel=1e-8)
    assert d == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)


def test_frechet_of_samples_approaches_truth():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20000, 4))
    y = rng.standard_normal((20000, 4)) * 2 + 1
    d = frechet_distance(*feature_stats(x), *feature_stats(y))
    assert d == pytest.approx(4 * 1 + 4 * (1 - 2) ** 2, rel=0.05)  # = 8
    with pytest.raises(ValueError):
        feature_stats(np.zeros((1, 3)))


def test_precision_recall_constructed():
    rng = np.random.default_rng(0)
    real = rng.standard_normal((400, 2))
    assert precision_recall(real, real.copy(), k=3) == (1.0, 1.0)
    far = real + 100.0
    assert precision_recall(real, far, k=3) == (0.0, 0.0)
    # fakes collapsed onto a small part of the real manifold: high precision, low recall
    collapsed = real[np.linalg.norm(real - np.array([1.0, 0.0]), axis=1) < 0.5]
    p, r = precision_recall(real, collapsed, k=3)
    assert p > 0.9 and r < 0.25
    # k-th neighbour radii on a line with unit spacing
    line = torch.arange(10, dtype=torch.float64).view(-1, 1)
    assert knn_radii(line, k=3).tolist() == [3, 2, 2, 2, 2, 2, 2, 2, 2, 3]  # ends: 1, 2, 3; inside: 1, 1, 2


def test_fashion_features_shape_and_gray_conversion():
    extract = FashionFeatures(FashionClassifier(), {"fingerprint": "x"})
    rgb64 = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    assert extract(rgb64).shape == (3, 256)
    gray = np.full((2, 32, 32, 1), 255, np.uint8)
    assert torch.allclose(to_gray32(gray), torch.ones(2, 1, 32, 32))
    assert to_gray32(rgb64).shape == (3, 1, 32, 32)


def test_torchscript_loader_with_a_saved_random_network(tmp_path):
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, stride=4)

        def forward(self, x):
            return self.conv(x / 255.0).mean(dim=(2, 3))

    torch.manual_seed(0)
    path = tmp_path / "inception.pt"
    torch.jit.script(Tiny()).save(str(path))
    extract = TorchScriptFeatures(path, size=64)
    feats = extract(np.zeros((4, 32, 32, 1), np.uint8))
    assert feats.shape == (4, 8) and extract.fingerprint().startswith("ts-")
    with pytest.raises(IlctError, match="not found"):
        TorchScriptFeatures(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(IlctError, match="not a TorchScript"):
        TorchScriptFeatures(tmp_path / "junk.pt")
