"""Autoencoder backends: TAESD family (real TAEF2 weights), diffusers AutoencoderKL, bad weights."""

import math

import pytest
import torch

from conftest import SHARED_WEIGHTS
from ilct.autoencoders import load_autoencoder
from ilct.autoencoders.taesd import TAESD, make_decoder, make_encoder
from ilct.errors import IlctError

EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"


def psnr(x, y):
    return 10 * math.log10(1.0 / ((x.clamp(-1, 1) - y) / 2).pow(2).mean().item())


@pytest.mark.skipif(not SHARED_WEIGHTS.is_dir(), reason="../shared/weights/taef2 is absent")
def test_taef2_reconstructs_emoji():
    pytest.importorskip("fontTools")
    from pathlib import Path

    if not Path(EMOJI_FONT).is_file():
        pytest.skip("fonts-noto-color-emoji is not installed")
    from ilct.data.emoji import load_emoji

    ae = load_autoencoder("taesd", str(SHARED_WEIGHTS))
    assert (ae.latent_channels, ae.downsample, ae.image_channels) == (32, 8, 3)
    ds, _ = load_emoji(EMOJI_FONT, 64)
    idx = torch.linspace(0, len(ds) - 1, 96).long().numpy()  # spread over the whole set
    x = ds.batch_indices(idx)
    with torch.no_grad():
        z = ae.encode(x)
        y = ae.decode(z)
    assert z.shape == (96, 32, 8, 8)
    value = psnr(y, x)
    print(f"TAEF2 PSNR on 96 emoji at 64x64: {value:.2f} dB")
    assert value > 24.0  # measured 26.9 dB on the first 128


def test_taesd_loader_with_saved_random_weights(tmp_path):
    torch.manual_seed(0)
    torch.save(make_encoder(4).state_dict(), tmp_path / "tiny_encoder.pth")
    torch.save(make_decoder(4).state_dict(), tmp_path / "tiny_decoder.pth")
    ae = TAESD.load(tmp_path)
    assert ae.latent_channels == 4
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert ae.encode(x).shape == (2, 4, 2, 2) and ae.decode(ae.encode(x)).shape == x.shape
    assert ae.fingerprint().startswith("taesd-")


def test_wrong_weights_files(tmp_path):
    (tmp_path / "a_encoder.pth").write_bytes(b"garbage")
    (tmp_path / "a_decoder.pth").write_bytes(b"garbage")
    with pytest.raises(IlctError, match="cannot read"):
        TAESD.load(tmp_path)
    torch.save({"x": torch.zeros(3)}, tmp_path / "a_encoder.pth")
    torch.save(make_decoder(4).state_dict(), tmp_path / "a_decoder.pth")
    with pytest.raises(IlctError):
        TAESD.load(tmp_path)
    with pytest.raises(IlctError, match="not found"):
        TAESD.load(tmp_path / "missing")
    with pytest.raises(IlctError, match="no built-in autoencoder"):
        load_autoencoder("builtin", str(tmp_path))


def test_diffusers_round_trip(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4, layers_per_block=1, sample_size=16,
    )
    vae.save_pretrained(tmp_path / "vae")
    ae = load_autoencoder("diffusers", str(tmp_path / "vae"))
    assert (ae.latent_channels, ae.downsample, ae.scaling_factor) == (4, 2, 0.18215)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z = ae.encode(x)
        y = ae.decode(z)
        raw = vae.encode(x).latent_dist.mean
    assert z.shape == (2, 4, 8, 8) and y.shape == x.shape
    assert torch.allclose(z, raw * 0.18215, atol=1e-5)  # the config's scaling factor is applied
    assert torch.allclose(y, vae.decode(raw).sample, atol=1e-5)
    with pytest.raises(IlctError, match="cannot load"):
        load_autoencoder("diffusers", str(tmp_path / "nothing-here"))
    # the posterior: latent_dist's mean and std, both in scaled units (for `ilct encode --posterior sample`)
    assert ae.has_posterior
    with torch.no_grad():
        mean, std = ae.posterior_moments(x)
        dist = vae.encode(x).latent_dist
    assert torch.allclose(mean, z, atol=1e-6) and torch.allclose(std, dist.std * 0.18215, atol=1e-6)


def test_which_autoencoders_have_a_posterior():
    from ilct.autoencoders.kl import KLAutoencoder

    assert KLAutoencoder.has_posterior and not TAESD.has_posterior
    with pytest.raises(NotImplementedError, match="deterministic"):
        TAESD(4).posterior_moments(torch.zeros(1, 3, 16, 16))


def test_autoencoder_trains_for_any_step_count(tmp_path, fake_fmnist):
    """20 steps used to end in a ZeroDivisionError inside OneCycleLR (its 5 % warm-up ending exactly at step 0)."""
    from ilct.cli import main

    for steps in (1, 2, 20):
        assert main(["autoencoder", "--out", str(tmp_path / f"ae{steps}"), "--data-dir", str(fake_fmnist),
                     "--steps", str(steps), "--batch-size", "8", "--no-progress", "--device", "cpu"]) == 0
