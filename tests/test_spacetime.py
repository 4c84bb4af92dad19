"""Clips (B, C, T, H, W): the space-time DiT (patches, 3D positions, full and factorized attention),
the parameterizations and losses on 5-D tensors, the config's clip fields and build_data on clip
latents (issue #19, item 4; the clip autoencoders of item 3 are tests/test_clip_autoencoders.py)."""

import numpy as np
import pytest
import torch

from ilct.config import Config, latent_dim, latent_shape, load_config
from ilct.objectives.consistency.coupling import ot_permutation
from ilct.objectives.consistency.losses import consistency_loss, diffusion_loss
from ilct.objectives.consistency.loss import consistency_training_loss
from ilct.objectives.consistency.precond import ConsistencyModel
from ilct.objectives.edm import EDMDenoiser, edm_loss
from ilct.errors import IlctError
from ilct.objectives.meanflow.maths import MeanFlowModel, meanflow_loss, meanflow_target
from ilct.nets import build_backbone, takes_clips
from ilct.nets.dit import build_dit, sincos_pos_embed_2d, sincos_pos_embed_3d


def opened(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every weight drawn from a seeded generator (adaLN-Zero would keep every branch closed), eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return net.eval()


# --------------------------------------------------------------------------- positions


def test_3d_positions_are_the_2d_ones_in_frame_0_and_differ_across_frames():
    D, g, T = 64, 4, 3
    pos3, pos2 = sincos_pos_embed_3d(D, T, g), sincos_pos_embed_2d(D, g)
    assert pos3.shape == (T * g * g, D)
    assert np.array_equal(pos3[: g * g], pos2)  # bit for bit, so a one-frame clip is an image
    t1 = pos3[g * g: 2 * g * g] - pos2  # frame 1: one vector added to every position, s(1) - s(0)
    assert np.allclose(t1, t1[0]) and np.abs(t1[0]).max() > 0.1
    omega = 1.0 / 10000 ** (np.arange(D // 2) / (D / 2))  # the usual 1D sin-cos of t, less its value at 0
    assert np.allclose(pos3[2 * g * g] - pos2[0], np.concatenate([np.sin(2 * omega), np.cos(2 * omega) - 1]))


# --------------------------------------------------------------------------- the network


@pytest.mark.parametrize("T,size,patch_t,attention", [
    (1, 8, 1, "full"), (3, 8, 1, "full"), (4, 8, 2, "full"), (2, 16, 1, "factorized"), (6, 8, 3, "factorized"),
])
def test_clip_shapes_and_zero_init(T, size, patch_t, attention):
    net = build_dit("DiT-T/4", size, 4, frames=T, patch_t=patch_t, attention=attention)
    x = torch.randn(2, 4, T, size, size)
    out = net(x, torch.tensor([10.0, -100.0]))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # adaLN-Zero (temporal attention too) and a zero final layer
    assert net.pos_embed.shape == (1, T // patch_t * (size // 4) ** 2, 192)
    with torch.no_grad():
        opened(net)
        assert net(x, torch.zeros(2)).shape == x.shape
        if T > patch_t:  # a shorter clip takes the first rows of the position table
            assert net(x[:, :, :patch_t], torch.zeros(2)).shape == (2, 4, patch_t, size, size)


@torch.no_grad()
@pytest.mark.parametrize("kw", [{}, dict(num_classes=5, nsln=True), dict(two_times=True)])
def test_a_one_frame_clip_is_the_image_bit_for_bit(kw):
    image_net = opened(build_dit("DiT-T/2", 8, 4, **kw))
    clip_net = build_dit("DiT-T/2", 8, 4, frames=4, **kw).eval()
    clip_net.load_state_dict(image_net.state_dict())  # a full-attention clip DiT has the image DiT's weights
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, generator=g) * 100
    extra = {"y": torch.tensor([0, 4, 5])} if "num_classes" in kw else {}
    if kw.get("two_times"):
        extra["t2"] = torch.rand(3, generator=g)
    image = image_net(x, t, **extra)
    for net in (image_net, clip_net):
        clip = net(x.unsqueeze(2), t, **extra)
        assert clip.shape == (3, 4, 1, 8, 8)
        assert torch.equal(clip[:, :, 0], image)


def test_patch_t_folds_frames_into_the_patch_embedding_and_back():
    net = build_dit("DiT-T/2", 8, 4, frames=4, patch_t=2)
    assert net.x_embedder.in_channels == 8 and net.final_layer.linear.out_features == 2 * 2 * 4 * 2
    tokens = torch.randn(2, 2 * 16, 2 * 2 * 4 * 2)
    clip = net.unpatchify(tokens, 2)
    assert clip.shape == (2, 4, 4, 8, 8)
    # token (t, h, w) holds its (p, q, C, k) values: frame t*2 + k, row h*2 + p, column w*2 + q
    t, h, w, p, q, c, k = 1, 2, 3, 1, 0, 2, 1
    assert clip[1, c, t * 2 + k, h * 2 + p, w * 2 + q] == tokens.reshape(2, 2, 4, 4, 2, 2, 4, 2)[1, t, h, w, p, q, c, k]
    with pytest.raises(ValueError, match="not divisible by patch_t"):
        net(torch.zeros(1, 4, 3, 8, 8), torch.zeros(1))
    with pytest.raises(ValueError, match="not divisible by patch_t"):
        net(torch.zeros(1, 4, 8, 8), torch.zeros(1))  # an image is one frame
    with pytest.raises(ValueError, match="longer than"):
        net(torch.zeros(1, 4, 6, 8, 8), torch.zeros(1))
    with pytest.raises(ValueError, match="not divisible by patch_t"):
        build_dit("DiT-T/2", 8, 4, frames=3, patch_t=2)
    with pytest.raises(ValueError, match="attention must be one of"):
        build_dit("DiT-T/2", 8, 4, attention="axial")


@torch.no_grad()
@pytest.mark.parametrize("attention", ["full", "factorized"])
def test_frames_mix_under_both_attentions(attention):
    net = opened(build_dit("DiT-T/2", 8, 4, frames=3, attention=attention))
    x = torch.randn(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    y = x.clone()
    y[:, :, 0] += 1.0  # perturb frame 0 only
    a, b = net(x, torch.zeros(2)), net(y, torch.zeros(2))
    assert (a[:, :, 1] - b[:, :, 1]).abs().max() > 1e-4  # frame 1's output sees frame 0
    assert (a[:, :, 2] - b[:, :, 2]).abs().max() > 1e-4


@torch.no_grad()
def test_factorized_attention_is_spatial_blocks_per_frame_then_temporal_attention():
    full = build_dit("DiT-T/2", 8, 4, frames=2)
    fact = build_dit("DiT-T/2", 8, 4, frames=2, attention="factorized")
    extra = set(fact.state_dict()) - set(full.state_dict())
    assert extra and all(k.startswith("temporal.") for k in extra)
    assert set(full.state_dict()) <= set(fact.state_dict())
    D = 192
    # per block: q/k/v and output projections 4 D^2 + 4 D, the adaLN map 3 D^2 + 3 D, q/k LayerNorms 4 * head_dim
    assert sum(fact.state_dict()[k].numel() for k in extra) == 6 * (7 * D * D + 7 * D + 4 * 64)
    # with the temporal branches closed (their adaLN-Zero gates at zero) the frames do not mix:
    # each frame's output is the full-attention net's on that frame alone, at its 3D positions
    opened(fact)
    for m in fact.temporal:
        torch.nn.init.zeros_(m.adaLN_modulation[-1].weight)
        torch.nn.init.zeros_(m.adaLN_modulation[-1].bias)
    x = torch.randn(2, 4, 2, 8, 8)
    out = fact(x, torch.zeros(2))
    y = x.clone()
    y[:, :, 0] += 1.0
    assert torch.allclose(fact(y, torch.zeros(2))[:, :, 1], out[:, :, 1])
    full.load_state_dict({k: v for k, v in fact.state_dict().items() if k in full.state_dict()})
    assert torch.allclose(out[:, :, 0], full(x[:, :, :1], torch.zeros(2))[:, :, 0], atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("attention", ["full", "factorized"])
def test_class_labels_condition_clips(attention):
    net = opened(build_dit("DiT-T/2", 8, 4, frames=2, num_classes=10, attention=attention))
    x, t = torch.randn(2, 4, 2, 8, 8), torch.zeros(2)
    a, b = net(x, t, torch.tensor([1, 1])), net(x, t, torch.tensor([2, 2]))
    assert a.shape == x.shape and not torch.allclose(a, b)
    assert torch.equal(net(x, t, torch.tensor([10, 10])), net(x, t, torch.tensor([10, 10])))  # the null class


def test_gradients_reach_the_temporal_attention():
    net = opened(build_dit("DiT-T/2", 8, 4, frames=2, attention="factorized")).train()
    net(torch.randn(2, 4, 2, 8, 8), torch.zeros(2)).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.temporal.parameters())


# --------------------------------------------------------------------------- the registry and the config


def test_the_unet_refuses_clips():
    assert takes_clips("DiT-T/2") and not takes_clips("ADM-T")
    with pytest.raises(IlctError, match="takes images, not clips"):
        build_backbone("ADM-T", 8, 4, frames=4)
    unet = build_backbone("ADM-T", 8, 4)
    with pytest.raises(IlctError, match="takes images"):
        unet(torch.zeros(1, 4, 2, 8, 8), torch.zeros(1))
    assert build_backbone("DiT-T/2", 8, 4, frames=4, patch_t=2).patch_t == 2


def test_config_clip_fields():
    cfg = load_config("ilct", ["model.frames=8", "model.patch_t=4", "model.attention=factorized",
                               "model.in_channels=4", "model.input_size=8"])
    assert latent_shape(cfg) == (4, 8, 8, 8) and latent_dim(cfg) == 4 * 8 * 8 * 8
    assert latent_shape(load_config("ilct", ["model.in_channels=4", "model.input_size=8"])) == (4, 8, 8)
    assert Config().model.frames is None and Config().model.patch_t == 1 and Config().model.attention == "full"
    for bad, msg in [("model.frames=-1", "model.frames"), ("model.patch_t=0", "model.patch_t"),
                     ("model.attention=axial", "model.attention"), ("model.frames=6", "model.patch_t")]:
        with pytest.raises(IlctError, match=msg):
            load_config("ilct", [bad, "model.patch_t=4"] if bad != "model.patch_t=0" else [bad])
    with pytest.raises(IlctError, match="model.patch_t is not an option of model.arch ADM-T"):
        load_config("ilct", ["model.arch=ADM-T", "model.patch_t=2"])


def test_run_build_model_makes_a_clip_dit_from_the_config():
    from ilct.models import build_model

    cfg = load_config("ilct", ["model.arch=DiT-T/2", "model.frames=2", "model.attention=factorized",
                               "model.in_channels=4", "model.input_size=8"])
    model = build_model(cfg)
    assert model.net.frames == 2 and model.net.temporal is not None
    assert model(torch.randn(2, 4, 2, 8, 8), torch.tensor([1.0, 2.0])).shape == (2, 4, 2, 8, 8)
    cfg.model.arch = "ADM-T"
    cfg.model.attention = "full"
    with pytest.raises(IlctError, match="takes images, not clips"):
        build_model(cfg)


# --------------------------------------------------------------------------- the maths on 5-D tensors


@torch.no_grad()
def test_losses_of_a_one_frame_clip_are_the_images():
    g = torch.Generator().manual_seed(3)
    x, z = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    net = opened(build_dit("DiT-T/2", 8, 4, frames=1))
    f = ConsistencyModel(net)
    sigmas = torch.linspace(80.0, 0.002, 11)
    i = torch.tensor([0, 3, 8, 9])
    method = load_config("ilct").method
    image = consistency_training_loss(f, x, z, i, sigmas, 11, 0.03, method)
    clip = consistency_training_loss(f, x.unsqueeze(2), z.unsqueeze(2), i, sigmas, 11, 0.03, method)
    assert torch.equal(image.loss, clip.loss) and torch.equal(image.diffusion, clip.diffusion)
    a, b = x + 0.1 * z, x
    for metric in ("pseudo_huber", "cauchy", "cauchy_element", "l2", "geman_mcclure"):
        w = torch.rand(4, generator=g)
        assert torch.equal(consistency_loss(a, b, w, metric, 0.03),
                           consistency_loss(a.unsqueeze(2), b.unsqueeze(2), w, metric, 0.03))
    s, mask = torch.rand(4, generator=g) + 0.1, torch.tensor([True, False, True, True])
    assert torch.equal(diffusion_loss(a, b, s, mask), diffusion_loss(a.unsqueeze(2), b.unsqueeze(2), s, mask))
    u = torch.randn(4, generator=g)
    assert torch.equal(edm_loss(EDMDenoiser(net), x, z, u), edm_loss(EDMDenoiser(net), x.unsqueeze(2), z.unsqueeze(2), u))
    assert torch.equal(ot_permutation(x, z), ot_permutation(x.unsqueeze(2), z.unsqueeze(2)))


def test_meanflow_on_clips_matches_the_image_for_one_frame():
    torch.manual_seed(0)
    net = opened(build_dit("DiT-T/2", 8, 4, frames=2, two_times=True))
    model = MeanFlowModel(net)
    g = torch.Generator().manual_seed(4)
    z, v = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    r, t = torch.tensor([0.2, 0.5]), torch.tensor([0.6, 0.5])
    u_fn = lambda z_, r_, t_: model(z_, r_, t_)  # noqa: E731
    u_i, tgt_i = meanflow_target(u_fn, z, r, t, v, method="finite_difference")
    u_c, tgt_c = meanflow_target(u_fn, z.unsqueeze(2), r, t, v.unsqueeze(2), method="finite_difference")
    assert torch.equal(u_c[:, :, 0], u_i) and torch.equal(tgt_c[:, :, 0], tgt_i)
    assert torch.equal(meanflow_loss(u_i, tgt_i), meanflow_loss(u_c, tgt_c))
    # and the JVP through a two-frame clip (the forward-mode rule of the space-time reshapes)
    z2, v2 = torch.randn(2, 4, 2, 8, 8, generator=g), torch.randn(2, 4, 2, 8, 8, generator=g)
    u, tgt = meanflow_target(u_fn, z2, r, t, v2)
    assert u.shape == tgt.shape == z2.shape and torch.isfinite(tgt).all()


def test_consistency_model_on_clips_keeps_the_boundary_condition():
    net = opened(build_dit("DiT-T/2", 8, 4, frames=2, attention="factorized"))
    f = ConsistencyModel(net)
    x = torch.randn(3, 4, 2, 8, 8)
    with torch.no_grad():
        assert torch.equal(f(x, torch.tensor(0.002)), x)  # c_skip(sigma_min) = 1, c_out(sigma_min) = 0
        assert f(x, torch.tensor([80.0, 1.0, 0.1])).shape == x.shape


# --------------------------------------------------------------------------- clips from a latent directory


def write_clip_latents(root, fingerprint: str, shape=(4, 4, 8, 8), n: int = 8):
    """A finished latent directory of n clip latents (C, T, H, W), as `ilct encode` of clips would write it."""
    import json

    from ilct.latents import LatentStats
    from ilct.latents.directory import FORMAT

    root.mkdir()
    lat = np.random.default_rng(0).standard_normal((n, *shape)).astype(np.float32)
    np.save(root / "shard_00000.npy", lat)
    np.save(root / "labels_00000.npy", np.zeros(n, np.int64))
    LatentStats(torch.from_numpy(lat.mean(0)), torch.from_numpy(lat.std(0))).save(root / "stats.safetensors")
    (root / "meta.json").write_text(json.dumps({
        "format": FORMAT, "complete": True, "autoencoder": "builtin", "autoencoder_fingerprint": fingerprint,
        "dataset": "clips", "data": {}, "flip": False, "count": n, "shape": list(shape),
        "shards": [{"file": "shard_00000.npy", "labels": "labels_00000.npy", "start": 0, "stop": n}],
        "posterior": "mean", "posterior_seed": None}))
    return root


@pytest.mark.parametrize("attention", ["full", "factorized"])
def test_build_data_takes_the_frames_from_clip_latents_and_a_step_trains(tmp_path, attention):
    from ilct.training import distributed
    from ilct.autoencoders import KLAutoencoder, KLAutoencoderConfig
    from ilct.training.build import build_data
    from ilct.models import build_model

    KLAutoencoder(KLAutoencoderConfig(1, 4, (8, 16))).save(tmp_path / "ae")
    from ilct.autoencoders import for_clips, load_autoencoder

    fp = for_clips(load_autoencoder("builtin", str(tmp_path / "ae"))).fingerprint()  # clip latents: frame by frame
    lat = write_clip_latents(tmp_path / "lat", fp)
    cfg = load_config("ilct", ["autoencoder.kind=builtin", f"autoencoder.path={tmp_path / 'ae'}", f"data.latents={lat}",
                               "model.arch=DiT-T/2", "model.patch_t=2", f"model.attention={attention}",
                               "train.batch_size=4", "train.device=cpu"])
    cfg.model.in_channels = cfg.model.input_size = None  # all three from the data
    data = build_data(cfg, tmp_path / "run", False, False, False, distributed.Dist(), torch.device("cpu"))
    assert (cfg.model.in_channels, cfg.model.frames, cfg.model.input_size) == (4, 4, 8)  # from the data
    assert data.shape == (4, 4, 8, 8) and latent_dim(cfg) == 4 * 4 * 8 * 8
    model = build_model(cfg)
    assert model.net.frames == 4 and model.net.patch_t == 2
    state = data.objective.state(0, torch.device("cpu"))
    assert state[2] == pytest.approx(0.00054 * (4 * 4 * 8 * 8) ** 0.5)  # c = 0.00054 sqrt(D), D = C T H W
    batch = data.maker.make(0)
    assert batch.x.shape == batch.z.shape == (4, 4, 4, 8, 8)
    model.train()
    terms = data.objective.loss(model, batch, state)
    terms.loss.backward()
    assert torch.isfinite(terms.loss) and all(p.grad is not None for p in model.net.x_embedder.parameters())
    with pytest.raises(IlctError, match="model.frames=2 but the autoencoder gives 4x4x8x8 latents"):
        cfg2 = load_config("ilct", ["autoencoder.kind=builtin", f"autoencoder.path={tmp_path / 'ae'}",
                                    f"data.latents={lat}", "model.frames=2", "model.input_size=8"])
        build_data(cfg2, tmp_path / "run2", False, False, False, distributed.Dist(), torch.device("cpu"))


@pytest.mark.parametrize("attention", ["full", "factorized"])
def test_caption_tokens_condition_clips_and_padding_stays_masked(attention):
    """Cross-attention to caption tokens on clips: every frame attends to the caption (factorized: the
    context repeated per frame), and padded tokens have no influence."""
    from ilct.nets.dit import build_dit
    from ilct.nets.embedders import pack_text

    torch.manual_seed(0)
    net = build_dit("DiT-T/4", 8, 4, text_dim=6, text_tokens=3, frames=4, attention=attention).eval()
    for p in net.parameters():  # open every zero-initialized branch so the caption reaches the output
        if p.dim() >= 1 and not p.any():
            torch.nn.init.normal_(p, std=0.05)
    pooled, tokens = torch.randn(2, 6), torch.randn(2, 3, 6)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    x, t = torch.randn(2, 4, 4, 8, 8), torch.rand(2)
    with torch.no_grad():
        out = net(x, t, pack_text(pooled, tokens, mask))
        assert out.shape == x.shape
        y = pack_text(pooled, tokens, mask)
        y[0, 3, :6], y[1, 2:, :6] = torch.randn(6), torch.randn(2, 6)  # padded rows (mask bit 0) hold junk
        assert torch.equal(net(x, t, y), out)
        y[0, 1, :6] += 1.0  # a real token changes every frame of its clip
        changed = (net(x, t, y) - out).abs().amax(dim=(1, 3, 4))  # (B, T)
        assert (changed[0] > 0).all() and (changed[1] == 0).all()
