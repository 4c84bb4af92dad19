"""Fashion-MNIST reader, latent normalization and the latent cache."""

import gzip

import numpy as np
import pytest
import torch

from conftest import REAL_FMNIST, write_idx
from ilct.autoencoders.kl import KLAutoencoder, KLAutoencoderConfig
from ilct.data.fashion_mnist import load_fashion_mnist, read_idx
from ilct.data.images import ArrayImages, to_uint8
from ilct.latents import LatentStats, cache_key, cached_latents
from ilct.errors import IlctError


def test_reader_pads_to_32_and_scales(fake_fmnist):
    ds = load_fashion_mnist(fake_fmnist, "train")
    assert ds.images.shape == (256, 32, 32, 1) and ds.labels.shape == (256,)
    assert ds.images[:, :2].max() == 0 and ds.images[:, -2:].max() == 0  # 2-pixel zero border
    x = ds.batch(0, 4)
    assert x.shape == (4, 1, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert x[:, :, 0, 0].eq(-1).all()
    assert np.array_equal(to_uint8(x), ds.images[:4])  # [-1, 1] -> uint8 round trip


def test_idx_round_trip_and_corruption(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", a)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), a)
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") * 3 + b"\x00" * 5)
    with pytest.raises(IlctError, match="truncated"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "junk.gz").write_bytes(b"definitely not gzip")
    with pytest.raises(IlctError, match="cannot read"):
        read_idx(tmp_path / "junk.gz")


def test_missing_directory_names_the_package(tmp_path):
    with pytest.raises(IlctError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IlctError, match="missing"):
        load_fashion_mnist(tmp_path / "empty")


def test_fit_and_val_partition_the_training_file(fake_fmnist, monkeypatch):
    import ilct.data.fashion_mnist as fm
    from ilct.config import load_config

    train, fit, val = (load_fashion_mnist(fake_fmnist, s) for s in ("train", "fit", "val"))
    assert len(fit) == 235 and len(val) == 21 and val.name == "fashion_mnist/val@32" != fit.name  # 256 // 12 = 21
    assert np.array_equal(np.concatenate([fit.images, val.images]), train.images)  # disjoint, nothing lost
    assert np.array_equal(np.concatenate([fit.labels, val.labels]), train.labels)
    monkeypatch.setattr(fm, "VAL_DIVISOR", 257)
    with pytest.raises(IlctError, match="too few to hold out"):
        load_fashion_mnist(fake_fmnist, "val")
    with pytest.raises(IlctError, match="unknown Fashion-MNIST split 'dev'"):
        load_fashion_mnist(fake_fmnist, "dev")
    assert load_config("fmnist-ilct", ["data.split=fit"]).data.split == "fit"
    with pytest.raises(IlctError, match="data.split"):
        load_config("emoji-ilct", ["data.split=val"])


@pytest.mark.skipif(not REAL_FMNIST.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist():
    train, test = load_fashion_mnist(REAL_FMNIST, "train"), load_fashion_mnist(REAL_FMNIST, "test")
    assert len(train) == 60_000 and len(test) == 10_000
    assert np.bincount(train.labels).tolist() == [6000] * 10
    fit, val = load_fashion_mnist(REAL_FMNIST, "fit"), load_fashion_mnist(REAL_FMNIST, "val")
    assert len(fit) == 55_000 and len(val) == 5_000 and min(np.bincount(val.labels)) > 400  # every class in val


def test_normalization_round_trip_and_moments():
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(500, 4, 8, 8, generator=g) * torch.linspace(0.1, 5, 4).view(1, 4, 1, 1) + 3
    stats = LatentStats.of(lat)
    z = stats.normalize(lat, 0.5)
    assert z.std(0).mean().item() == pytest.approx(0.5, rel=1e-3)  # data std is sigma_d
    assert z.mean(0).abs().max().item() < 1e-4
    assert torch.allclose(stats.denormalize(z, 0.5), lat, atol=1e-4)
    assert stats.mean.shape == (4, 8, 8)  # per element, not per channel


def test_cache_is_keyed_by_autoencoder_and_reused(tmp_path):
    ds = ArrayImages(np.random.default_rng(0).integers(0, 255, (40, 32, 32, 1), dtype=np.uint8),
                      np.zeros(40, dtype=np.int64), "synthetic@32")
    torch.manual_seed(0)
    ae1, ae2 = KLAutoencoder(KLAutoencoderConfig()), KLAutoencoder(KLAutoencoderConfig())
    assert cache_key(ae1, ds) != cache_key(ae2, ds)
    first = cached_latents(ae1, ds, tmp_path, progress=False)
    assert first.all().shape == (40, 4, 8, 8) and (first.path / "meta.json").is_file()
    shard = first.path / "shard_00000.npy"
    mtime = shard.stat().st_mtime_ns
    again = cached_latents(ae1, ds, tmp_path, progress=False)
    assert shard.stat().st_mtime_ns == mtime and torch.equal(again.all(), first.all())
    with torch.no_grad():
        assert torch.allclose(first.all(), ae1.encode(ds.batch(0, 40)), atol=1e-5)
    rgb = ArrayImages(np.zeros((4, 32, 32, 3), np.uint8), np.zeros(4, np.int64), "rgb@32")
    with pytest.raises(IlctError, match="channels"):
        cached_latents(ae1, rgb, tmp_path, progress=False)
