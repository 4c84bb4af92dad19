"""The DiT backbone: size registry, shapes, adaLN-Zero init, NsLN (technique 5)."""

import pytest
import torch
import torch.nn.functional as F

from conftest import fixed_net_and_inputs
from ilct.nets.dit import DIT_SIZES, NonScalingLayerNorm, build_dit


def test_registry_has_paper_sizes():
    for name in ("DiT-S/2", "DiT-B/2", "DiT-L/4", "DiT-XL/8", "DiT-T/2"):
        assert name in DIT_SIZES
    b = DIT_SIZES["DiT-B/2"]
    assert (b.depth, b.hidden_size, b.num_heads, b.patch_size) == (12, 768, 12, 2)
    xl = DIT_SIZES["DiT-XL/2"]
    assert (xl.depth, xl.hidden_size, xl.num_heads) == (28, 1152, 16)


def test_nsln_has_no_gain_and_equals_layer_norm_plus_bias():
    norm = NonScalingLayerNorm(16)
    names = dict(norm.named_parameters())
    assert list(names) == ["bias"]
    with torch.no_grad():
        norm.bias.copy_(torch.linspace(-1, 1, 16))
    h = torch.randn(5, 7, 16) * 3 + 2
    expect = F.layer_norm(h, (16,), eps=1e-6) + norm.bias
    assert torch.allclose(norm(h), expect, atol=1e-6)
    norm(h).sum().backward()  # trains (the frozen-weight variant fails on torch 2.11)
    assert norm.bias.grad is not None


def test_qk_norms_switch():
    std = build_dit("DiT-T/4", 8, 4, nsln=False)
    ns = build_dit("DiT-T/4", 8, 4, nsln=True)
    std_names = {n for n, _ in std.named_parameters() if "q_norm" in n or "k_norm" in n}
    ns_names = {n for n, _ in ns.named_parameters() if "q_norm" in n or "k_norm" in n}
    assert any(n.endswith("q_norm.weight") for n in std_names)
    assert not any(n.endswith("weight") for n in ns_names) and ns_names
    assert all(isinstance(b.attn.q_norm, NonScalingLayerNorm) for b in ns.blocks)


@pytest.mark.parametrize("arch,size,ch", [("DiT-T/1", 8, 4), ("DiT-T/2", 8, 4), ("DiT-T/4", 16, 32)])
def test_shapes_and_zero_init(arch, size, ch):
    net = build_dit(arch, size, ch)
    x = torch.randn(2, ch, size, size)
    out = net(x, torch.tensor([10.0, -100.0]))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # adaLN-Zero and a zero final layer


def test_label_embedding_and_null_class():
    net = build_dit("DiT-T/4", 8, 4, num_classes=10, class_dropout=0.5)
    assert net.y_embedder.table.num_embeddings == 11
    torch.nn.init.normal_(net.final_layer.linear.weight)
    for b in net.blocks:
        torch.nn.init.normal_(b.adaLN_modulation[-1].weight, std=0.02)
    torch.nn.init.normal_(net.final_layer.adaLN_modulation[-1].weight, std=0.02)
    net.eval()
    x, t = torch.randn(2, 4, 8, 8), torch.zeros(2)
    assert not torch.allclose(net(x, t, torch.tensor([1, 1])), net(x, t, torch.tensor([2, 2])))


def test_bad_patch_size():
    with pytest.raises(ValueError):
        build_dit("DiT-T/4", 6, 4)


@torch.no_grad()
def test_low_precision_residual_keeps_the_stream_in_bf16_under_autocast_only():
    torch.manual_seed(0)
    off = build_dit("DiT-T/2", 8, 4, nsln=True)
    for b in off.blocks:  # open the residual branches (adaLN-Zero starts them closed)
        torch.nn.init.normal_(b.adaLN_modulation[-1].weight, std=0.05)
    torch.nn.init.normal_(off.final_layer.linear.weight, std=0.05)
    on = build_dit("DiT-T/2", 8, 4, nsln=True, low_precision_residual=True)
    on.load_state_dict(off.state_dict())
    seen = []
    for net in (off, on):
        for b in net.blocks:
            b.register_forward_hook(lambda m, args, out: seen.append((args[0].dtype, out.dtype)))
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([0.5, -2.0, 3.0])
    assert torch.equal(on(x, t), off(x, t))  # without autocast: the same network, bit for bit
    assert set(seen) == {(torch.float32, torch.float32)}
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fp32_stream, bf16_stream = off(x, t), on(x, t)
    depth = len(off.blocks)
    assert seen == [(torch.float32, torch.float32)] * depth + [(torch.bfloat16, torch.bfloat16)] * depth
    assert not torch.equal(fp32_stream, bf16_stream)
    ref = off(x, t)

    def rel(a: torch.Tensor) -> float:
        return float((a.float() - ref).norm() / ref.norm())

    assert 0 < rel(fp32_stream) < rel(bf16_stream) < 0.05  # bf16 rounding of the stream: larger, still small


def opened_dit(**kwargs):
    """DiT-T/2 on 8x8x4 with every linear layer drawn at random (adaLN-Zero's zero start undone)."""
    torch.manual_seed(0)
    net = build_dit("DiT-T/2", 8, 4, **kwargs)
    for m in net.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=0.05)
            torch.nn.init.normal_(m.bias, std=0.05)
    return net.eval()


def seeded_inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 4, 8, 8, generator=g), torch.tensor([0.01, 1.0, 80.0])


@torch.no_grad()
def test_fp32_outputs_are_what_they_were_before_the_fp32_final_layer():
    """Golden values of the seeded network, recorded before the final layer learned to leave autocast
    (sha256 of the output bytes on the recording machine, before and after: 9b594ca516a24d13)."""
    net = opened_dit()
    x, sig = seeded_inputs()
    out = net(x, 250 * sig.log())
    assert out.dtype == torch.float32
    # tolerances above fp32 rounding on any CPU (an AMX Xeon differs by 1.3e-6 from the recording AMD EPYC),
    # far below what a change of the layer would move
    assert float(out.double().sum()) == pytest.approx(168.88995980471373, rel=1e-5)
    assert out.flatten()[::61][:4].tolist() == pytest.approx([0.359481215, -0.610519111, -0.666381896, 0.786135554],
                                                               abs=1e-5)
    # and bit for bit the old expression of the final layer, outside autocast
    fl = net.final_layer
    h, c = {}, net.t_embedder(250 * sig.log())
    net.blocks[-1].register_forward_hook(lambda m, args, o: h.setdefault("h", o))
    again = net(x, 250 * sig.log())
    shift, scale = fl.adaLN_modulation(c).chunk(2, dim=1)
    old = net.unpatchify(fl.linear(fl.norm_final(h["h"]) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)))
    assert torch.equal(again, out) and torch.equal(old, out)


@torch.no_grad()
def test_final_layer_runs_in_fp32_under_bf16_autocast():
    net = opened_dit()
    bf16_out = opened_dit(fp32_final_layer=False)  # the same weights, the final layer under autocast
    x, sig = seeded_inputs()
    t = 250 * sig.log()
    seen = {}
    net.blocks[-1].register_forward_hook(lambda m, args, o: seen.__setitem__("h", o))
    net.final_layer.register_forward_hook(lambda m, args, o: seen.__setitem__("c", args[1]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, t)
        rounded = bf16_out(x, t)
    assert out.dtype == torch.float32 and rounded.dtype == torch.bfloat16
    assert seen["c"].dtype == torch.bfloat16  # the conditioning comes out of an autocast linear layer
    # the fp32 final layer applied, outside autocast, to the same (bf16-computed) block outputs
    expect = net.unpatchify(net.final_layer.project(seen["h"].float(), seen["c"].float()))
    torch.testing.assert_close(out, expect, rtol=0, atol=0)
    assert torch.equal(rounded.float(), rounded.float().bfloat16().float()) and not torch.equal(out, rounded.float())
    ref = net(x, t)  # fp32 throughout
    assert (out - ref).norm() < (rounded.float() - ref).norm()  # one rounding fewer


# Recorded with the DiT before the two-times switch existed (commit 97e2376): the state-dict keys and
# shapes of a class-conditional DiT-T/2, and its outputs for fixed weights and inputs.
DEFAULT_KEYS_SHA256 = "aa97cd2b4f029927144874d97503fcd06dae62beacbe01509ed06031f892f239"
DEFAULT_OUT_HEAD = [0.2763957679271698, -0.27185487747192383, 0.11191487312316895, -0.4666512906551361]
DEFAULT_OUT_SUM, DEFAULT_OUT_ABS_SUM = 69.41523146256804, 380.51993410661817


def _fixed_net_and_inputs(**kwargs):
    return fixed_net_and_inputs(build_dit, "DiT-T/2", **kwargs)


@torch.no_grad()
def test_default_dit_is_unchanged_by_the_two_times_switch():
    import hashlib

    for kwargs in ({}, {"two_times": False}, {"mlp_act": "gelu", "qkv_bias": True, "norm_eps": 1e-6}, {"depth": 0}, {"depth": 6}):
        net, x, t, y = _fixed_net_and_inputs(**kwargs)
        keys = ";".join(f"{k}:{tuple(v.shape)}" for k, v in net.state_dict().items())
        assert hashlib.sha256(keys.encode()).hexdigest() == DEFAULT_KEYS_SHA256
        out = net(x, t, y).double()
        assert out.flatten()[:4].tolist() == pytest.approx(DEFAULT_OUT_HEAD, rel=1e-5, abs=1e-6)
        assert out.sum().item() == pytest.approx(DEFAULT_OUT_SUM, rel=1e-5)
        assert out.abs().sum().item() == pytest.approx(DEFAULT_OUT_ABS_SUM, rel=1e-6)
        with pytest.raises(ValueError):
            net(x, t, y, t2=t)


@torch.no_grad()
def test_two_times_adds_a_second_embedder_summed_into_the_conditioning():
    torch.manual_seed(0)
    one = build_dit("DiT-T/2", 8, 4, num_classes=10)
    two = build_dit("DiT-T/2", 8, 4, num_classes=10, two_times=True)
    extra = set(two.state_dict()) - set(one.state_dict())
    assert extra == {f"t2_embedder.mlp.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")}
    assert set(one.state_dict()) <= set(two.state_dict())
    net, x, t, y = _fixed_net_and_inputs()
    two.load_state_dict(net.state_dict(), strict=False)
    two.eval()
    assert torch.count_nonzero(two.t2_embedder.mlp[0].weight) > 0  # std 0.02 init, as t_embedder
    torch.nn.init.zeros_(two.t2_embedder.mlp[2].weight)
    torch.nn.init.zeros_(two.t2_embedder.mlp[2].bias)
    assert torch.equal(two(x, t, y, t2=torch.tensor([1.0, 2.0, 3.0])), net(x, t, y))  # a zero second embedding
    torch.nn.init.normal_(two.t2_embedder.mlp[2].weight, std=0.05)
    a, b = two(x, t, y, t2=torch.zeros(3)), two(x, t, y, t2=torch.full((3,), 0.5))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError):
        two(x, t, y)


def test_the_authors_dit_choices_are_options():
    """mlp_act, qkv_bias and norm_eps (the authors' later DiT: relu, no q/k/v bias); the defaults are
    today's network (test_default_dit_is_unchanged_by_the_two_times_switch pins it)."""
    std = build_dit("DiT-T/2", 8, 4, nsln=True)
    bare = build_dit("DiT-T/2", 8, 4, nsln=True, qkv_bias=False)
    assert set(std.state_dict()) - set(bare.state_dict()) == {f"blocks.{i}.attn.qkv.bias" for i in range(6)}
    assert set(bare.state_dict()) <= set(std.state_dict())
    eps = build_dit("DiT-T/2", 8, 4, norm_eps=1e-5)
    norms = [m for m in eps.modules() if isinstance(m, (torch.nn.LayerNorm, NonScalingLayerNorm))]
    assert len(norms) == 6 * 4 + 1 and all(m.eps == 1e-5 for m in norms)  # block, q/k and final norms
    assert all(m.eps == 1e-6 for m in std.modules() if isinstance(m, (torch.nn.LayerNorm, NonScalingLayerNorm)))
    relu, gelu = opened_dit(mlp_act="relu"), opened_dit()
    assert all(isinstance(b.mlp.act, torch.nn.ReLU) for b in relu.blocks)
    x, sig = seeded_inputs()
    with torch.no_grad():
        assert not torch.allclose(relu(x, 250 * sig.log()), gelu(x, 250 * sig.log()))
    with pytest.raises(ValueError, match="mlp_act"):
        build_dit("DiT-T/2", 8, 4, mlp_act="swish")


def test_the_config_passes_the_dit_options_to_the_network():
    from ilct.config import load_config
    from ilct.models import build_model

    net = build_model(load_config("fmnist-ilct", ["model.arch=DiT-T/2", "model.mlp_act=relu", "model.qkv_bias=false",
                                                  "model.norm_eps=1e-5", "model.depth=2"])).net
    assert len(net.blocks) == 2
    assert all(isinstance(b.mlp.act, torch.nn.ReLU) and b.attn.qkv.bias is None for b in net.blocks)
    assert net.blocks[0].norm1.eps == 1e-5 and net.blocks[0].attn.q_norm.eps == 1e-5
    default = build_model(load_config("fmnist-ilct", ["model.arch=DiT-T/2"])).net
    assert isinstance(default.blocks[0].mlp.act, torch.nn.GELU) and default.blocks[0].mlp.act.approximate == "tanh"
    assert default.blocks[0].attn.qkv.bias is not None and default.blocks[0].norm1.eps == 1e-6


def test_depth_sets_the_number_of_blocks_and_nothing_else():
    """model.depth (a depth scan of one size): the blocks, and the temporal attentions of a factorized clip DiT,
    follow it; 0 is the size's own depth (the test above pins that it is today's network)."""
    half, own = build_dit("DiT-T/2", 8, 4, depth=3), build_dit("DiT-T/2", 8, 4)
    assert len(half.blocks) == 3 and len(own.blocks) == 6 == len(build_dit("DiT-T/2", 8, 4, depth=0).blocks)
    assert set(half.state_dict()) == {k for k in own.state_dict() if not k.startswith(("blocks.3.", "blocks.4.", "blocks.5."))}
    block = sum(p.numel() for p in own.blocks[0].parameters())
    assert sum(p.numel() for p in own.parameters()) - sum(p.numel() for p in half.parameters()) == 3 * block
    clip = build_dit("DiT-T/2", 8, 4, frames=4, attention="factorized", depth=2)
    assert len(clip.blocks) == len(clip.temporal) == 2
    x = torch.randn(2, 4, 4, 8, 8)
    assert clip(x, torch.ones(2)).shape == x.shape
    with pytest.raises(ValueError, match="depth"):
        build_dit("DiT-T/2", 8, 4, depth=-1)
