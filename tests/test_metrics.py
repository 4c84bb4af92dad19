"""Frechet distance against closed forms, precision/recall on constructed point sets, extractors."""

import lzma
import numpy as np
import pytest
import torch
from scipy import linalg

from ilct.errors import IlctError
from conftest import REAL_FMNIST
from ilct.metrics.features import (PACKAGED, PACKAGED_META, FashionClassifier, FashionFeatures, TorchScriptFeatures,
                                   load_fashion_features, to_gray32)
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


def test_the_packaged_classifier_is_the_recorded_one():
    extract = load_fashion_features()
    assert extract.fingerprint() == "fmnist-cls-aa048943a97fb07e" == extract.meta["fingerprint"]
    assert 0.92 < extract.meta["test_accuracy"] < 0.93
    assert all(p.dtype == torch.float32 for p in extract.model.parameters())  # float16 on disk only


@pytest.mark.skipif(not REAL_FMNIST.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_the_packaged_classifier_classifies_real_test_images():
    from ilct.data.fashion_mnist import load_fashion_mnist

    test = load_fashion_mnist(REAL_FMNIST, "test")
    images = (test.batch(0, 1000).permute(0, 2, 3, 1).numpy() * 127.5 + 127.5).round().clip(0, 255).astype(np.uint8)
    assert (load_fashion_features().predict(images) == test.labels[:1000]).mean() > 0.9


def test_a_damaged_or_replaced_classifier_file_is_refused(tmp_path):
    meta = tmp_path / "c.json"
    meta.write_bytes(PACKAGED_META.read_bytes())
    cut = tmp_path / "cut.safetensors.xz"
    cut.write_bytes(PACKAGED.read_bytes()[:1000])
    not_xz = tmp_path / "plain.safetensors.xz"
    not_xz.write_bytes(b"not xz at all")
    for bad in (cut, not_xz, tmp_path / "missing.xz"):
        with pytest.raises(IlctError, match="cannot be read.*reinstall ilct"):
            load_fashion_features(bad, meta)
    from safetensors.torch import save

    other = tmp_path / "other.safetensors.xz"
    other.write_bytes(lzma.compress(save(FashionClassifier().state_dict())))  # readable, but not the recorded weights
    with pytest.raises(IlctError, match="is damaged.*fmnist-cls-aa048943a97fb07e"):
        load_fashion_features(other, meta)


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
    # no return_features argument: a generic feature network, called plainly on input resized here, and it says so
    assert not extract.return_features and "plain call" in extract.name and "resized here to 64x64" in extract.name
    assert not extract.fingerprint().endswith("-pool3")
    with pytest.raises(IlctError, match="not found"):
        TorchScriptFeatures(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(IlctError, match="not a TorchScript"):
        TorchScriptFeatures(tmp_path / "junk.pt")


class FakeInception(torch.nn.Module):
    """Stands in for inception-2015-12-05.pt: pool features only with return_features=True.

    Features (N, 2048): [max of x, min of x, H, W, 0...]; the plain call: (N, 1008) "probabilities".
    """

    def forward(self, x, return_features: bool = False):
        n = x.shape[0]
        if return_features:
            f = torch.zeros(n, 2048)
            f[:, 0] = x.flatten(1).amax(1)
            f[:, 1] = x.flatten(1).amin(1)
            f[:, 2] = float(x.shape[2])
            f[:, 3] = float(x.shape[3])
            return f
        return torch.softmax(torch.zeros(n, 1008), dim=1)


def test_inception_detector_is_called_for_features_on_0_to_255_input_at_its_own_size(tmp_path):
    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.script(FakeInception()).save(str(path))
    extract = TorchScriptFeatures(path)
    assert extract.return_features
    assert "return_features=True" in extract.name and "own resize" in extract.name
    assert extract.name.startswith("inception-2015-12-05.pt")
    images = np.zeros((3, 32, 32, 1), np.uint8)
    images[0, 0, 0] = 255
    images[1, 5, 7] = 17
    f = extract(images, batch_size=2)
    assert f.shape == (3, 2048)  # the pool features, not the (N, 1008) probabilities
    assert f[:, 0].tolist() == [255.0, 17.0, 0.0] and f[:, 1].tolist() == [0.0, 0.0, 0.0]  # 0..255, not [-1, 1]
    assert f[:, 2].tolist() == [32.0] * 3 and f[:, 3].tolist() == [32.0] * 3  # no resize here: the detector's own
    assert extract.fingerprint().endswith("-pool3")  # reference features cached per protocol
    with pytest.raises(ValueError, match="uint8"):
        extract(np.zeros((1, 8, 8, 3), np.float32))
