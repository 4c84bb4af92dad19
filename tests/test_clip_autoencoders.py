"""Autoencoders for clips (issue #19, item 3): any image autoencoder frame by frame, and diffusers'
video VAEs (tiny random models saved here, loaded by folder through ilct), behind one protocol."""

import shutil

import pytest
import torch

from ilct.autoencoders import FrameByFrame, KLAutoencoder, KLAutoencoderConfig, for_clips, load_autoencoder
from ilct.autoencoders.taesd import TAESD
from ilct.errors import IlctError


@torch.no_grad()
@pytest.mark.parametrize("make", [lambda: KLAutoencoder(KLAutoencoderConfig(3, 4, (8, 16))), lambda: TAESD(4)])
def test_frame_by_frame_is_the_image_autoencoder_on_each_frame(make):
    torch.manual_seed(0)
    image = make().eval()
    ae = FrameByFrame(image, chunk=3)  # 2 clips x 4 frames in chunks of 3 frames
    assert for_clips(image).takes_clips and for_clips(ae) is ae and not image.takes_clips
    assert (ae.latent_channels, ae.downsample, ae.latent_frames(4)) == (image.latent_channels, image.downsample, 4)
    side = 2 * image.downsample
    x = torch.rand(2, 3, 4, side, side) * 2 - 1
    z = ae.encode(x)
    assert z.shape == (2, image.latent_channels, 4, 2, 2) == (2, *ae.clip_latent_shape(side, 4))
    for t in range(4):
        assert torch.allclose(z[:, :, t], image.encode(x[:, :, t]), atol=1e-6)
    y = ae.decode(z)
    assert y.shape == x.shape
    assert torch.allclose(y[:, :, 2], image.decode(z[:, :, 2]), atol=1e-6)
    assert torch.equal(ae.encode(x[:, :, 0]), image.encode(x[:, :, 0]))  # an image passes straight through
    assert ae.fingerprint() == "frames-" + image.fingerprint() != image.fingerprint()
    if image.has_posterior:
        mean, std = ae.posterior_moments(x)
        assert torch.allclose(mean, z, atol=1e-6) and std.shape == z.shape and (std > 0).all()
        assert torch.allclose(std[:, :, 1], image.posterior_moments(x[:, :, 1])[1], atol=1e-6)


def tiny_video_vaes():
    diffusers = pytest.importorskip("diffusers")
    return {
        # (the model, its temporal compression k)
        "wan": (lambda: diffusers.AutoencoderKLWan(
            base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[True],
            latents_mean=[0.0] * 4, latents_std=[1.0] * 4), 2),
        "ltx": (lambda: diffusers.AutoencoderKLLTXVideo(
            latent_channels=4, block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
            down_block_types=("LTXVideoDownBlock3D",) * 2, layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
            spatio_temporal_scaling=(True, False), decoder_spatio_temporal_scaling=(True, False),
            decoder_inject_noise=(False,) * 3, downsample_type=("conv", "conv"), upsample_residual=(False, False),
            upsample_factor=(1, 1), patch_size=1, patch_size_t=1, scaling_factor=0.5), 2),
        "cogvideox": (lambda: diffusers.AutoencoderKLCogVideoX(
            down_block_types=("CogVideoXDownBlock3D",) * 2, up_block_types=("CogVideoXUpBlock3D",) * 2,
            block_out_channels=(8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2,
            temporal_compression_ratio=2, sample_height=16, sample_width=16), 2),
    }


@torch.no_grad()
@pytest.mark.parametrize("name", ["wan", "ltx", "cogvideox"])
def test_diffusers_video_vae_round_trip(tmp_path, name):
    make, k = tiny_video_vaes()[name]
    torch.manual_seed(0)
    vae = make().eval()
    vae.save_pretrained(tmp_path / "vae")
    ae = load_autoencoder("diffusers", str(tmp_path / "vae"))
    assert type(ae).__name__ == "DiffusersVideoVAE" and ae.takes_clips and ae.has_posterior
    assert (ae.image_channels, ae.latent_channels, ae.downsample, ae.temporal_downsample) == (3, 4, 2, k)
    assert for_clips(ae) is ae
    T = 1 + 2 * k  # causal: the first frame alone, then k frames per latent frame
    x = torch.rand(2, 3, T, 16, 16) * 2 - 1
    z = ae.encode(x)
    assert z.shape == (2, 4, 3, 8, 8) == (2, *ae.clip_latent_shape(16, T))
    sf = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
    assert torch.allclose(z, vae.encode(x).latent_dist.mean * sf, atol=1e-5)  # the config's scaling factor
    y = ae.decode(z)
    assert y.shape == x.shape  # T' = 3 latent frames decode back to T frames
    assert torch.allclose(y, vae.decode(z / sf).sample, atol=1e-5)
    mean, std = ae.posterior_moments(x)
    assert torch.allclose(mean, z) and std.shape == z.shape
    # an image is a clip of one frame
    image = x[:, :, 0]
    assert ae.encode(image).shape == (2, 4, 8, 8) and ae.decode(ae.encode(image)).shape == image.shape
    with pytest.raises(IlctError, match="clips need 1 \\+ a multiple"):
        ae.encode(x[:, :, :2])
    # the fingerprint: stable over a reload and a moved folder, changed by the weights
    shutil.copytree(tmp_path / "vae", tmp_path / "moved")
    again = load_autoencoder("diffusers", str(tmp_path / "moved"))
    assert again.fingerprint() == ae.fingerprint() and ae.fingerprint().startswith("diffusers-video-")
    with torch.no_grad():
        next(iter(sorted(again.vae.state_dict().items())))[1].add_(1.0)
    assert again.fingerprint() != ae.fingerprint()


def test_diffusers_fingerprint_does_not_depend_on_the_order_of_use_default_values(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from diffusers.configuration_utils import FrozenDict

    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4, layers_per_block=1, sample_size=16,
    )
    vae.save_pretrained(tmp_path / "vae")
    ae = load_autoencoder("diffusers", str(tmp_path / "vae"))
    before = ae.fingerprint()
    config = dict(ae.vae.config)
    # diffusers builds this list from a set: its order changes from one process to the next
    config["_use_default_values"] = ["shift_factor", "latents_mean", "force_upcast"]
    ae.vae._internal_dict = FrozenDict(config)
    first = ae.fingerprint()
    config["_use_default_values"] = ["force_upcast", "latents_mean", "shift_factor"]
    ae.vae._internal_dict = FrozenDict(config)
    assert ae.fingerprint() == first
    config["_name_or_path"] = "/somewhere/else"
    ae.vae._internal_dict = FrozenDict(config)
    assert ae.fingerprint() == first
    assert before.startswith("diffusers-")


def test_a_folder_without_a_video_vae_is_refused(tmp_path):
    pytest.importorskip("diffusers")
    from ilct.autoencoders.diffusers_video import DiffusersVideoVAE, diffusers_class

    assert diffusers_class(str(tmp_path / "nothing")) is None
    with pytest.raises(IlctError, match="holds no diffusers video VAE"):
        DiffusersVideoVAE.load(str(tmp_path))
    (tmp_path / "config.json").write_text('{"_class_name": "AutoencoderKLWan"}')
    with pytest.raises(IlctError, match="cannot load diffusers AutoencoderKLWan"):
        DiffusersVideoVAE.load(str(tmp_path))
