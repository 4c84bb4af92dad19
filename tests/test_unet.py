"""The ADM UNet backbone (ilct.nets.unet) and the one backbone registry (ilct.nets.ARCHS)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import assert_guidance_interpolates, fixed_net_and_inputs
from ilct.runs.checkpoint import latest_checkpoint, read_tensors
from ilct.cli import main
from ilct.config import load_config
from ilct.errors import IlctError
from ilct.nets import ARCHS, backbone_options, build_backbone
from ilct.nets.dit import DIT_SIZES, build_dit
from ilct.nets.unet import UNET_SIZES, NonScalingGroupNorm, ResBlock, UNet, build_unet


def opened_unet(**kwargs) -> UNet:
    """ADM-T on 8x8x4 (eval mode) with every zero-initialized conv drawn at random, so that the
    output, and through it the condition, is not zero."""
    torch.manual_seed(0)
    net = build_unet("ADM-T", 8, 4, **kwargs)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d) and not m.weight.any():
            torch.nn.init.normal_(m.weight, std=0.05)
    return net.eval()


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# --------------------------------------------------------------------------- sizes and shapes


def test_registry_holds_the_papers_configuration():
    lct = UNET_SIZES["ADM-LCT"]  # quandao10/LCT scripts/train_lct.sh, CelebA-HQ 256 latents
    assert (lct.model_channels, lct.channel_mult, lct.num_blocks, lct.attn_ds) == (128, (1, 2, 3, 4), 4, (2, 4))
    assert (lct.channels_per_head, lct.emb_mult) == (64, 4)
    assert {"ADM-T", "ADM-S", "ADM-B", "ADM-LCT"} <= set(UNET_SIZES)


def test_parameter_counts_are_pinned():
    # ADM-LCT equals the authors' DhariwalUNet (EDM's, with its GroupNorm output norm) for 32x32x4:
    # 151,325,956 parameters, counted on their code with the same settings.
    with torch.device("meta"):
        assert n_params(build_unet("ADM-LCT", 32, 4)) == 151_325_956
        assert n_params(build_unet("ADM-B", 32, 4)) == 44_507_652
        assert n_params(build_unet("ADM-S", 32, 4)) == 4_589_956
    assert n_params(build_unet("ADM-T", 8, 4)) == 828_068
    assert n_params(build_unet("ADM-T", 8, 4, num_classes=10)) == 828_068 + 11 * 128  # a label table with a null row
    assert n_params(build_unet("ADM-T", 8, 4, nsln=True)) == 828_068 - 1_472  # the 25 GroupNorm gains


@pytest.mark.parametrize("arch,size,ch", [("ADM-T", 8, 4), ("ADM-T", 16, 32), ("ADM-T", 4, 3), ("ADM-S", 8, 4)])
def test_output_shape_equals_the_input_shape_and_starts_at_zero(arch, size, ch):
    net = build_unet(arch, size, ch)
    x = torch.randn(2, ch, size, size)
    out = net(x, torch.tensor([10.0, -100.0]))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # zero-initialized output conv: F = 0, so f = c_skip x at the start


def test_latents_that_do_not_halve_are_refused():
    with pytest.raises(ValueError, match="halve"):
        build_unet("ADM-LCT", 12, 4)  # four levels need a side divisible by 8
    with pytest.raises(ValueError, match="one kind"):
        build_unet("ADM-T", 8, 4, num_classes=3, text_dim=8)


@torch.no_grad()
def test_blocks_and_attention_follow_the_size():
    net = build_unet("ADM-T", 8, 4)  # levels 8x8 (32 ch) and 4x4 (64 ch), attention at 4x4
    seen = []
    for block in [*net.enc, *net.dec]:
        block.register_forward_hook(lambda m, args, out: seen.append((tuple(out.shape[1:]), m.attn is not None)))
    net(torch.randn(1, 4, 8, 8), torch.zeros(1))
    assert seen == [((32, 8, 8), False),  # encoder: 1 block at 8x8
                    ((32, 4, 4), False), ((64, 4, 4), True),  # down, 1 block at 4x4 with attention
                    ((64, 4, 4), True), ((64, 4, 4), False),  # the middle
                    ((64, 4, 4), True), ((64, 4, 4), True),  # decoder at 4x4: 2 blocks, each with a skip
                    ((64, 8, 8), False), ((32, 8, 8), False), ((32, 8, 8), False)]  # up, 2 blocks at 8x8
    assert net.dec_takes_skip == (False, False, True, True, False, True, True)


# --------------------------------------------------------------------------- golden values


def _fixed_net_and_inputs(**kwargs):
    return fixed_net_and_inputs(build_unet, "ADM-T", **kwargs)


GOLDEN_KEYS_SHA256 = "cf3036d1d6e97474f70006b9f6414a579143b6806c3152239e734f374deae14f"
GOLDEN_OUT_HEAD = [-0.05769616365432739, -0.08345184475183487, -0.06374473124742508, -0.08308520913124084]
GOLDEN_OUT_SUM, GOLDEN_OUT_ABS_SUM = -14.760848448611796, 40.06847350951284


@torch.no_grad()
def test_golden_outputs_of_a_seeded_unet():
    """State-dict keys and outputs of ADM-T with fixed weights and inputs (recorded when written; the
    same network as the authors' DhariwalUNet up to fp32 rounding, checked once against their code)."""
    net, x, t, y = _fixed_net_and_inputs()
    keys = ";".join(f"{k}:{tuple(v.shape)}" for k, v in net.state_dict().items())
    assert hashlib.sha256(keys.encode()).hexdigest() == GOLDEN_KEYS_SHA256
    out = net(x, t, y).double()
    assert out.flatten()[:4].tolist() == pytest.approx(GOLDEN_OUT_HEAD, rel=1e-5, abs=1e-6)
    assert out.sum().item() == pytest.approx(GOLDEN_OUT_SUM, rel=1e-5)
    assert out.abs().sum().item() == pytest.approx(GOLDEN_OUT_ABS_SUM, rel=1e-6)


# --------------------------------------------------------------------------- conditioning


def test_class_conditioning_and_guidance_with_the_null_label():
    net = opened_unet(num_classes=10)
    assert net.y_embedder.table.num_embeddings == 11  # index 10 is the null class
    x, t = torch.randn(2, 4, 8, 8), torch.zeros(2)
    with torch.no_grad():
        assert not torch.allclose(net(x, t, torch.tensor([1, 1])), net(x, t, torch.tensor([2, 2])))
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    assert_guidance_interpolates(net, y, torch.full_like(y, 10), 10, 3.0)


def test_text_conditioning_and_guidance_with_the_null_caption():
    net = opened_unet(text_dim=16)
    e = torch.randn(4, 16)
    assert_guidance_interpolates(net, e, torch.zeros_like(e), 0, 2.5)


def test_two_times_add_a_second_embedding():
    net = opened_unet(two_times=True)
    x, t = torch.randn(2, 4, 8, 8), torch.zeros(2)
    with torch.no_grad():
        assert not torch.allclose(net(x, t, t2=torch.zeros(2)), net(x, t, t2=torch.full((2,), 50.0)))
    with pytest.raises(ValueError, match="t2"):
        net(x, t)
    with pytest.raises(ValueError, match="two_times"):
        opened_unet()(x, t, t2=t)


# --------------------------------------------------------------------------- NsLN, gradients, precision


def test_nsln_removes_every_norm_gain_and_keeps_the_biases():
    std, ns = build_unet("ADM-T", 8, 4), build_unet("ADM-T", 8, 4, nsln=True)
    std_norms = {n for n, m in std.named_modules() if isinstance(m, torch.nn.GroupNorm)}
    ns_norms = {n for n, m in ns.named_modules() if isinstance(m, NonScalingGroupNorm)}
    assert std_norms == ns_norms and len(ns_norms) == 1 + 2 * 10 + 4  # output, 2 per block, 1 per attention
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in ns.modules())
    ns_params = dict(ns.named_parameters())
    assert not any(name.rsplit(".", 1)[0] in ns_norms and not name.endswith(".bias") for name in ns_params)
    assert {f"{n}.bias" for n in ns_norms} <= set(ns_params)
    assert set(ns_params) == set(dict(std.named_parameters())) - {f"{n}.weight" for n in std_norms}
    norm = ns.out.norm
    with torch.no_grad():
        norm.bias.copy_(torch.linspace(-1, 1, 32))
    h = torch.randn(2, 32, 4, 4) * 3 + 1
    torch.testing.assert_close(norm(h), F.group_norm(h, 8, eps=1e-5) + norm.bias[:, None, None])


def test_gradients_reach_every_parameter():
    net = opened_unet(num_classes=3, dropout=0.1).train()
    x = torch.randn(4, 4, 8, 8)
    (net(x, torch.tensor([1.0, -5.0, 30.0, 200.0]), torch.tensor([0, 1, 2, 3])) ** 2).mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0 or name == "y_embedder.table.weight", name
    fresh = build_unet("ADM-T", 8, 4)  # at init only the zero output conv gets a gradient, as in EDM
    fresh(x, torch.zeros(4)).sum().backward()
    assert fresh.out.conv.weight.grad.abs().sum() > 0


@torch.no_grad()
def test_output_layer_runs_in_fp32_under_bf16_autocast():
    net = opened_unet()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([0.0, 100.0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, t)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, net(x, t), atol=0.05, rtol=0.05)


def test_regional_compile_finds_the_residual_blocks():
    from ilct.training.accel import compile_blocks

    net = build_unet("ADM-T", 8, 4)
    compile_blocks(net)  # lazy: nothing is compiled until a block runs
    blocks = [m for m in net.modules() if isinstance(m, ResBlock)]
    assert len(blocks) == 10 and all(b._compiled_call_impl is not None for b in blocks)


# --------------------------------------------------------------------------- the one registry and the config


def test_one_registry_for_both_backbones():
    assert set(ARCHS) == set(DIT_SIZES) | set(UNET_SIZES)
    torch.manual_seed(0)
    a = build_backbone("DiT-T/2", 8, 4, num_classes=10).state_dict()
    torch.manual_seed(0)
    b = build_dit("DiT-T/2", 8, 4, num_classes=10).state_dict()  # the old entry point still works
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert isinstance(build_backbone("ADM-T", 8, 4), UNet)
    assert {"mlp_act", "qkv_bias", "norm_eps", "low_precision_residual", "depth"} <= backbone_options("DiT-T/2")
    assert not {"mlp_act", "qkv_bias", "norm_eps", "low_precision_residual", "depth"} & backbone_options("ADM-T")
    with pytest.raises(KeyError, match="ADM-LCT"):  # the message lists the names
        build_backbone("ADM-Q", 8, 4)


def test_config_accepts_unet_names_and_refuses_what_does_not_fit():
    from ilct.models import build_model

    cfg = load_config("fmnist-ilct", ["model.arch=ADM-T"])
    model = build_model(cfg)
    assert isinstance(model.net, UNet)
    assert all(isinstance(m, NonScalingGroupNorm) for m in model.net.modules() if "Norm" in type(m).__name__)  # nsln on
    for override, needle in [("model.arch=ADM-Q", "model.arch must be one of"), ("model.mlp_act=relu", "model.mlp_act"),
                             ("model.qkv_bias=false", "model.qkv_bias"), ("model.norm_eps=1e-5", "model.norm_eps"),
                             ("model.depth=3", "model.depth")]:
        with pytest.raises(IlctError, match=needle) as err:
            load_config("fmnist-ilct", ["model.arch=ADM-T" if "arch" not in override else "train.seed=0", override])
        assert "\n" not in str(err.value)
    with pytest.raises(IlctError, match="train.bf16_residual"):
        load_config("fmnist-ilct", ["model.arch=ADM-T", "train.precision=bf16", "train.bf16_residual=true"])
    with pytest.raises(IlctError, match="does not fit"):
        build_model(load_config("fmnist-ilct", ["model.arch=ADM-LCT", "model.input_size=12"]))


def test_train_and_sample_a_unet_run_through_the_cli(tmp_path, tiny_autoencoder, fake_fmnist, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({
        "base": "fmnist-ilct", "model": {"dropout": 0.1},
        "train": {"total_steps": 2, "batch_size": 8, "ckpt_every": 2, "sample_every": 0, "log_every": 1,
                  "num_sample_images": 2, "device": "cpu"}}))
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--autoencoder", str(tiny_autoencoder), "--data-dir", str(fake_fmnist),
                 "--out", str(run), "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "model.arch=ADM-T",
                 "--no-progress"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["arch"] == "ADM-T"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(r["loss"] == r["loss"] for r in log)
    ckpt = latest_checkpoint(run)
    assert ckpt.name == "step_000000002"
    weights = read_tensors(ckpt / "model.safetensors")
    assert any(k.startswith("net.enc.") for k in weights) and any(k.startswith("net.dec.") for k in weights)
    png = tmp_path / "s.png"
    assert main(["sample", "--run", str(run), "--steps", "2", "--n", "3", "--out", str(png),
                 "--npz", str(tmp_path / "s.npz"), "--no-progress"]) == 0
    assert png.is_file()
    import numpy as np

    images = np.load(tmp_path / "s.npz")["images"]
    assert images.shape == (3, 32, 32, 1)
