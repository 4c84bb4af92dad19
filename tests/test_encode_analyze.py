"""`ilct encode` (sharded, resumable latent directories), image folders, emoji, `ilct analyze`."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import encode_fake, second_autoencoder
from ilct.metrics.outliers import excess_kurtosis, tukey_fractions
from ilct.cli import main
from ilct.data.folder import load_image_folder
from ilct.latents import LatentDir
from ilct.latents.directory import is_complete
from ilct.errors import IlctError


def run_cli(capsys, argv):
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_encode_shards_resume_and_flip(tmp_path, capsys, tiny_autoencoder, fake_fmnist):
    out = tmp_path / "lat"
    argv = ["encode", "--data", f"fashion_mnist:{fake_fmnist}", "--autoencoder", f"builtin:{tiny_autoencoder}",
            "--out", str(out), "--shard-size", "100", "--batch-size", "32", "--flip", "--device", "cpu", "--no-progress"]
    rc, stdout, _ = run_cli(capsys, argv)
    assert rc == 0 and "512 latents of shape 4x8x8" in stdout
    lat = LatentDir(out)
    assert len(lat.meta["shards"]) == 6 and lat.count == 512
    from ilct.autoencoders import load_autoencoder
    from ilct.data import load_dataset

    ae = load_autoencoder("builtin", str(tiny_autoencoder))
    ds = load_dataset("fashion_mnist", str(fake_fmnist))
    with torch.no_grad():
        plain = ae.encode(ds.batch_indices(np.array([3, 200])))
        mirrored = ae.encode(ds.batch_indices(np.array([3])).flip(-1))
    got = lat.gather(np.array([3, 200, 256 + 3]))
    assert torch.allclose(got[:2], plain, atol=1e-5) and torch.allclose(got[2:], mirrored, atol=1e-5)
    assert torch.equal(lat.labels[:256], lat.labels[256:])
    # statistics match a direct computation
    all_ = lat.all().double()
    assert torch.allclose(lat.stats.mean.double(), all_.mean(0), atol=1e-5)
    assert torch.allclose(lat.stats.std.double(), all_.std(0), atol=1e-4)
    # resume: a missing shard is re-encoded, finished ones are left alone
    (out / "shard_00002.npy").unlink()
    meta = json.loads((out / "meta.json").read_text())
    meta["complete"] = False
    assert is_complete(out)
    (out / "meta.json").write_text(json.dumps(meta))
    assert not is_complete(out) and not is_complete(out / "missing")  # what the benchmarks test before encoding
    before = (out / "shard_00000.npy").stat().st_mtime_ns
    rc, _, _ = run_cli(capsys, argv)
    assert rc == 0 and (out / "shard_00002.npy").is_file() and is_complete(out)
    assert (out / "shard_00000.npy").stat().st_mtime_ns == before
    assert torch.allclose(LatentDir(out).all(), all_.float(), atol=1e-6)


def test_train_from_latent_dir_of_another_autoencoder(tmp_path, capsys, tiny_autoencoder, fake_fmnist):
    lat = tmp_path / "lat"
    encode_fake(lat, tiny_autoencoder, fake_fmnist)
    other = tmp_path / "other_ae"
    second_autoencoder(other, fake_fmnist, seed=5)
    capsys.readouterr()
    rc, _, err = run_cli(capsys, ["train", "--config", "fmnist-ilct", "--autoencoder", str(other), "--out", str(tmp_path / "r"),
                                  "--set", f"data.latents={lat}", "--no-progress"])
    assert rc == 2 and "encoded by another autoencoder" in err and len(err.strip().splitlines()) == 1
    # the right autoencoder trains from the latent directory
    rc, _, _ = run_cli(capsys, ["train", "--config", "fmnist-ilct", "--autoencoder", str(tiny_autoencoder),
                                "--out", str(tmp_path / "ok"), "--set", f"data.latents={lat}", "--set", "train.total_steps=2",
                                "--set", "train.batch_size=4", "--set", "model.arch=DiT-T/4", "--set", "train.device=cpu",
                                "--set", "train.num_sample_images=2", "--no-progress"])
    assert rc == 0
    # encoding into a directory that holds other latents is refused
    rc, _, err = run_cli(capsys, ["encode", "--data", f"fashion_mnist:{fake_fmnist}", "--autoencoder", f"builtin:{other}",
                                  "--out", str(lat), "--no-progress"])
    assert rc == 2 and "already holds other latents" in err


def write_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(root / cls / f"{k}.png")
    Image.fromarray(rng.integers(0, 255, (50, 50, 3), dtype=np.uint8)).save(root / "dogs" / "x.webp")
    Image.fromarray(rng.integers(0, 255, (30, 30), dtype=np.uint8)).save(root / "gray.jpg")
    (root / "cats" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "notes.txt").write_text("ignored")
    return root


def test_image_folder(tmp_path):
    ds = load_image_folder(write_folder(tmp_path / "imgs"), 16, labels_from_subfolders=True)
    assert len(ds) == 9 and ds.shape == (3, 16, 16)  # listed, not decoded: the broken file is found when read
    assert sorted(ds.labels.tolist()) == [-1, 0, 0, 0, 0, 1, 1, 1, 1]
    images, ok, bad = ds.read_at(np.arange(9))
    assert images.shape == (8, 16, 16, 3) and ok.sum() == 8
    assert [Path(b.path).name for b in bad] == ["broken.png"] and not ok[bad[0].index]
    x = ds.batch_indices(np.flatnonzero(ok))
    assert x.shape == (8, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    with pytest.raises(IlctError, match="unreadable image .*broken.png"):
        ds.images_at(np.arange(9))
    (tmp_path / "empty").mkdir()
    with pytest.raises(IlctError, match="no readable images"):
        load_image_folder(tmp_path / "empty", 16)


def test_encode_bad_inputs(tmp_path, capsys, tiny_autoencoder):
    (tmp_path / "empty").mkdir()
    cases = [
        (["--data", f"image_folder:{tmp_path / 'empty'}", "--autoencoder", f"builtin:{tiny_autoencoder}"], "no readable images"),
        (["--data", "fashion_mnist", "--autoencoder", f"taesd:{tmp_path / 'nowhere'}"], "not found"),
        (["--data", "mnist", "--autoencoder", f"builtin:{tiny_autoencoder}"], "--data"),
        (["--data", "fashion_mnist", "--autoencoder", "vqgan:x"], "--autoencoder"),
    ]
    for args, needle in cases:
        rc, _, err = run_cli(capsys, ["encode", *args, "--out", str(tmp_path / "o"), "--no-progress"])
        assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, (args, err)


def test_tukey_and_kurtosis_on_constructed_data():
    rng = np.random.default_rng(0)
    g = rng.standard_normal(400_000)
    t = tukey_fractions(g)
    assert t["beyond_inner"] == pytest.approx(0.00698, abs=0.001)  # Gaussian: 0.70% beyond 1.5 IQR
    assert t["beyond_outer"] < 5e-5  # and about 2 per million beyond 3 IQR
    assert excess_kurtosis(g) == pytest.approx(0.0, abs=0.05)
    assert excess_kurtosis(rng.laplace(size=400_000)) == pytest.approx(3.0, abs=0.15)
    spiky = np.concatenate([np.zeros(990), np.full(10, 100.0)])
    assert tukey_fractions(spiky)["beyond_outer"] == pytest.approx(0.01)


def test_analyze_writes_report_and_figure(tmp_path, capsys, tiny_autoencoder, fake_fmnist):
    pytest.importorskip("matplotlib")
    lat = tmp_path / "lat"
    encode_fake(lat, tiny_autoencoder, fake_fmnist)
    rc, stdout, _ = run_cli(capsys, ["analyze", "--latents", str(lat), "--out", str(tmp_path / "a"), "--n", "200"])
    assert rc == 0 and "beyond outer fences" in stdout
    report = json.loads((tmp_path / "a" / "lat.json").read_text())
    assert len(report["latent"]["per_element"]["channels"]) == 4 and report["pixel"]["shape"] == [1, 32, 32]
    assert set(report["latent"]) == {"shape", "per_channel", "per_element"}
    assert report["command"].startswith("ilct analyze --latents") and report["machine"] and report["date"]
    assert Image.open(tmp_path / "a" / "lat_boxplot.png").size[0] > 100


def test_emoji_taef2_end_to_end(tmp_path, capsys):
    """Real weights, real data: a few emoji through TAEF2, the full method for 2 steps, decoded samples."""
    from conftest import SHARED_WEIGHTS

    pytest.importorskip("fontTools")
    font = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
    if not SHARED_WEIGHTS.is_dir() or not font.is_file():
        pytest.skip("TAEF2 weights or the emoji font are absent")
    lat = tmp_path / "lat"
    assert main(["encode", "--data", "emoji", "--resolution", "64", "--autoencoder", f"taesd:{SHARED_WEIGHTS}",
                 "--out", str(lat), "--limit", "12", "--no-progress", "--device", "cpu"]) == 0
    assert LatentDir(lat).shape == (32, 8, 8)
    run = tmp_path / "run"
    assert main(["train", "--config", "emoji-ilct", "--autoencoder", str(SHARED_WEIGHTS), "--out", str(run),
                 "--set", f"data.latents={lat}", "--set", "train.total_steps=2", "--set", "train.batch_size=4",
                 "--set", "model.arch=DiT-T/4", "--set", "train.device=cpu", "--set", "train.num_sample_images=2",
                 "--no-progress"]) == 0
    npz = tmp_path / "s.npz"
    assert main(["sample", "--run", str(run), "--steps", "1", "--n", "3", "--out", str(tmp_path / "s.png"),
                 "--npz", str(npz), "--no-progress", "--device", "cpu"]) == 0
    assert np.load(npz)["images"].shape == (3, 64, 64, 3)


def test_large_latent_sets_are_gathered_from_the_memory_map(tmp_path, capsys, monkeypatch, tiny_autoencoder, fake_fmnist):
    """The same run, with the in-memory limit at 0 bytes, trains bit-identically from the memory map."""
    import ilct.training.readers as readers
    from ilct.runs.checkpoint import latest_checkpoint, read_tensors

    lat = tmp_path / "lat"
    encode_fake(lat, tiny_autoencoder, fake_fmnist, "--shard-size", "50")
    argv = lambda out: ["train", "--config", "fmnist-ilct", "--autoencoder", str(tiny_autoencoder), "--out", str(out),  # noqa: E731
                        "--set", f"data.latents={lat}", "--set", "train.total_steps=3", "--set", "train.batch_size=8",
                        "--set", "model.arch=DiT-T/4", "--set", "train.device=cpu", "--set", "train.num_sample_images=2",
                        "--no-progress"]
    assert main(argv(tmp_path / "mem")) == 0
    monkeypatch.setattr(readers, "IN_MEMORY_BYTES", 0)
    assert main(argv(tmp_path / "mmap")) == 0
    a = read_tensors(latest_checkpoint(tmp_path / "mem") / "model.safetensors")
    b = read_tensors(latest_checkpoint(tmp_path / "mmap") / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_emoji_captions_travel_with_the_latents(tmp_path):
    pytest.importorskip("fontTools")
    font = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
    if not font.is_file():
        pytest.skip("fonts-noto-color-emoji is not installed")
    from ilct.autoencoders.kl import KLAutoencoder, KLAutoencoderConfig
    from ilct.data import load_dataset
    from ilct.data.images import Subset
    from ilct.latents import encode_to_dir

    ds = Subset(load_dataset("emoji", str(font), resolution=32), 6)
    assert all(isinstance(c, str) and c for c in ds.captions)
    ae = KLAutoencoder(KLAutoencoderConfig(image_channels=3))
    lat = encode_to_dir(ae, ds, tmp_path / "lat", flip=True, progress=False)
    assert lat.captions == ds.captions * 2
    from ilct.data.emoji import caption

    assert caption((0x1F600,)) == "grinning face"
    assert caption((0x1F44D, 0x1F3FD)) == "thumbs up sign, medium skin tone"


def test_encode_posterior_samples_are_seeded_and_recorded(tmp_path, capsys, tiny_autoencoder, fake_fmnist):
    def encode(name, *extra):
        out = tmp_path / name
        rc, stdout, _ = run_cli(capsys, ["encode", "--data", f"fashion_mnist:{fake_fmnist}", "--autoencoder",
                                         f"builtin:{tiny_autoencoder}", "--out", str(out), "--limit", "40",
                                         "--device", "cpu", "--no-progress", *extra])
        assert rc == 0
        return LatentDir(out), stdout

    mean, out_mean = encode("mean")
    a, out_a = encode("a", "--posterior", "sample", "--seed", "1", "--batch-size", "16")
    again, _ = encode("again", "--posterior", "sample", "--seed", "1", "--batch-size", "16")
    b, _ = encode("b", "--posterior", "sample", "--seed", "1", "--batch-size", "7", "--shard-size", "25")
    c, _ = encode("c", "--posterior", "sample", "--seed", "2")
    assert "posterior means" in out_mean and "one posterior sample per image, seed 1" in out_a
    assert (mean.meta["posterior"], mean.meta["posterior_seed"]) == ("mean", None)
    assert (a.meta["posterior"], a.meta["posterior_seed"]) == ("sample", 1)
    assert torch.equal(a.all(), again.all())  # deterministic per seed
    # the same draws whatever the batch or shard size (the encoder's own rounding varies with the batch size)
    torch.testing.assert_close(a.all(), b.all(), atol=1e-4, rtol=1e-4)
    assert not torch.equal(a.all(), c.all()) and not torch.equal(a.all(), mean.all())
    # a draw is mean + std * eps with eps ~ N(0, I): its standardized difference looks standard normal
    from ilct.autoencoders import load_autoencoder
    from ilct.data import load_dataset

    ae = load_autoencoder("builtin", str(tiny_autoencoder))
    with torch.no_grad():
        m, s = ae.posterior_moments(load_dataset("fashion_mnist", str(fake_fmnist)).batch(0, 40))
    torch.testing.assert_close(mean.all(), m, atol=1e-5, rtol=1e-5)
    eps = (a.all() - m) / s
    assert abs(float(eps.mean())) < 0.05 and abs(float(eps.std()) - 1) < 0.05
    # resuming with another posterior setting is refused: these are other latents
    rc, _, err = run_cli(capsys, ["encode", "--data", f"fashion_mnist:{fake_fmnist}", "--autoencoder",
                                  f"builtin:{tiny_autoencoder}", "--out", str(tmp_path / "a"), "--limit", "40",
                                  "--posterior", "sample", "--seed", "3", "--no-progress"])
    assert rc == 2 and "already holds other latents" in err


def test_encode_posterior_sample_refused_for_taesd(tmp_path, capsys):
    from ilct.autoencoders.taesd import make_decoder, make_encoder

    torch.save(make_encoder(4).state_dict(), tmp_path / "tiny_encoder.pth")
    torch.save(make_decoder(4).state_dict(), tmp_path / "tiny_decoder.pth")
    rc, _, err = run_cli(capsys, ["encode", "--data", "fashion_mnist:/nonexistent", "--autoencoder", f"taesd:{tmp_path}",
                                  "--out", str(tmp_path / "o"), "--posterior", "sample", "--no-progress"])
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "has a deterministic encoder" in err and "--posterior mean" in err
    assert not (tmp_path / "o").exists()


def _level_gradient_setup(n: int, overrides=()):
    from ilct.config import load_config
    from ilct.models import build_model

    cfg = load_config("fmnist-ilct", ["model.arch=DiT-T/4", "model.in_channels=4", "model.input_size=8", *overrides])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    for p in model.parameters():  # away from the zero-initialized output layers, so every level has a gradient
        p.data.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    return cfg, model, torch.randn(n, 4, 8, 8, generator=g), torch.randn(n, 4, 8, 8, generator=g)


def test_level_gradients_follow_the_metric_and_the_diffusion_mask():
    """One sample per level: the Cauchy and pseudo-Huber gradients of a level differ by exactly their
    derivatives in r, (1 / (2c^2 + r)) / (1 / (2 sqrt(r + c^2))); the diffusion term is there from
    floor(0.75 N) on, and nowhere with the switch off; the shares are fractions."""
    from dataclasses import replace

    from ilct.metrics.outliers import gradient_shares, level_gradients

    cfg, model, x, z = _level_gradient_setup(1)
    N, c = 11, 0.01
    cauchy = level_gradients(model, cfg, x, z, N, c, "cauchy")
    huber = level_gradients(model, cfg, x, z, N, c, "pseudo_huber")
    assert len(cauchy) == N - 1 and abs(sum(r["p"] for r in cauchy) - 1) < 1e-9
    assert all(a["sigma"] > b["sigma"] for a, b in zip(cauchy, cauchy[1:]))
    for a, b in zip(cauchy, huber):
        r = a["sqrt_r_median"] ** 2
        want = 2 * np.sqrt(r + c * c) / (2 * c * c + r)
        assert a["grad_consistency"] > 0 and a["grad_consistency"] / b["grad_consistency"] == pytest.approx(want, rel=1e-3)
        assert (a["grad_diffusion"] > 0) == (a["i"] >= 8) and a["grad_diffusion"] == pytest.approx(b["grad_diffusion"])
    off = level_gradients(model, replace(cfg, method=replace(cfg.method, diffusion_loss=False)), x, z, N, c, "cauchy")
    assert all(r["grad_diffusion"] == 0 for r in off)
    s = gradient_shares(cauchy)
    assert 0 < s["finest_share_of_consistency"] < 1 and s["finest_probability"] == pytest.approx(
        sum(r["p"] for r in cauchy if r["i"] >= 8))  # floor(0.75 N) = 8: levels 8 and 9 of 0..9
